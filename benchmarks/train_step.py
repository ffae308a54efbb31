"""Time one `edgeseg train` step (forward, loss, backward, Adam) per compute precision and memory layout.

    python benchmarks/train_step.py [--batch 8] [--rounds 6] [--threads N]

SegNet-DSC at 128x128 on random inputs, the same autocast/channels-last calls as edgeseg.training.train; the
configurations take turns step by step (interleaved, so a noisy neighbour hits all of them), the first
two rounds are warm-up, and the median of the rest is printed with its ratio to plain FP32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from edgeseg.compile.nets import build_model
from edgeseg.runtime.backends.precision import cpu_flags, native_precisions

CONFIGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 128, 128)
    y = torch.randint(0, 3, (args.batch, 128, 128))
    loss_fn = nn.CrossEntropyLoss()
    runs = []
    for precision, channels_last in CONFIGS:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model("segnet-dsc").to(memory_format=fmt)
        runs.append((precision, channels_last, model, torch.optim.Adam(model.parameters(), 1e-3),
                     x.contiguous(memory_format=fmt), []))
    for _ in range(args.rounds):
        for precision, _, model, opt, xin, times in runs:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                scores = model(xin)
            loss = loss_fn(scores.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, CPU native low precisions: "
          f"{', '.join(native_precisions(cpu_flags())) or 'none'}")
    base = statistics.median(runs[0][5][2:])
    for precision, channels_last, *_, times in runs:
        t = statistics.median(times[2:])
        print(f"{precision} {'channels-last' if channels_last else 'contiguous':13s} {1000 * t:7.0f} ms/step  "
              f"{1000 * t / args.batch:6.1f} ms/image  x{base / t:.2f}")


if __name__ == "__main__":
    main()
