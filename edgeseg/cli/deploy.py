"""Past one device: ``triton repo`` / ``triton serve`` (Triton Inference Server) and ``deepstream``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.common import console, kv_table, print_json, print_table

triton = typer.Typer(help="Serve a model from Triton Inference Server: a model repository, or a server here.",
                     no_args_is_help=True)


@triton.command("repo")
def repo(
    model: Annotated[Path, typer.Argument(help="Checkpoint, ONNX (FP32 or INT8 Q/DQ), or for tensorrt an engine.")],
    outdir: Annotated[Path, typer.Argument(help="The model repository folder (tritonserver --model-repository).")],
    name: Annotated[str, typer.Option(help="Model name: the folder under OUTDIR and the name clients ask for.")
                    ] = "edgeseg",
    max_batch: Annotated[int, typer.Option(help="max_batch_size: requests the server batches together.")] = 8,
    platform: Annotated[str, typer.Option(help=(
        "onnxruntime (uint8 pixels in), tensorrt (model.plan, built on the serving GPU from the ONNX written "
        "beside it) or python (edgeseg's Predictor in Triton's Python backend; edgeseg installed in the server)."))
    ] = "onnxruntime",
    instances: Annotated[int, typer.Option(help="Model instances (instance_group count).")] = 1,
    kind: Annotated[str | None, typer.Option(help="cpu or gpu (default: gpu for tensorrt, cpu otherwise).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing OUTDIR/NAME.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write OUTDIR/NAME/config.pbtxt and the model file, ready for NGC's tritonserver containers."""
    from dataclasses import asdict

    from edgeseg.deploy.triton_repo import RepoOptions, write_repo

    r = write_repo(model, outdir, RepoOptions(name=name, max_batch=max_batch, platform=platform,
                                              instances=instances, kind=kind), force=force)
    if as_json:
        print_json(asdict(r))
        return
    print_table(kv_table(f"Triton model repository: {r.folder}", [("files", ", ".join(r.files)),
                                                                  ("config", r.config)]))
    if r.next_step:
        console.print(f"next, {r.next_step}")
    console.print(f"serve: tritonserver --model-repository={Path(outdir).resolve()}; clients: edgeseg run "
                  f"triton://HOST:8001/{name} --source ...")


@triton.command("serve")
def serve(
    model: Annotated[Path, typer.Argument(help="ONNX model (or a checkpoint) to serve.")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    max_batch: Annotated[int, typer.Option(help="max_batch_size for dynamic batching.")] = 8,
    instances: Annotated[int, typer.Option(help="Model instances.")] = 1,
    name: Annotated[str, typer.Option(help="Model name clients ask for.")] = "edgeseg",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "0.0.0.0",
    backend: Annotated[str, typer.Option(help="The Predictor's backend in the server: auto, onnxruntime, openvino.")
                       ] = "auto",
    threads: Annotated[int | None, typer.Option(help="Inference threads of the served model (default: physical "
                                                     "cores).")] = None,
    log: Annotated[Path | None, typer.Option(help="Write tritonserver's log here (default: a temporary file).")
                   ] = None,
) -> None:
    """Serve MODEL through a real Triton server on this machine (the tritonserver of nvidia-pytriton, Python
    backend) until Ctrl-C or SIGTERM."""
    from edgeseg.deploy.triton_repo import RepoOptions
    from edgeseg.deploy.triton_server import Ports, TritonServer

    opts = RepoOptions(name=name, max_batch=max_batch, platform="python", instances=instances, backend=backend,
                       threads=threads)
    opts.check()
    server = TritonServer(model, Ports(http_port, grpc_port, metrics_port), opts, host=host, log=log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    with console.status("starting tritonserver..."):
        server.start()
    try:
        console.print(f"serving {model} as {name!r}: gRPC {host}:{grpc_port}, HTTP {host}:{http_port}, metrics "
                      f"{host}:{metrics_port}; clients: edgeseg run triton://127.0.0.1:{grpc_port}/{name} --source "
                      "...  (Ctrl-C stops it)")
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                from edgeseg.errors import EdgesegError

                raise EdgesegError(f"tritonserver exited with status {server.process.returncode}: "
                                   f"{server.log_tail()}")
    finally:
        server.stop()
    console.print("tritonserver stopped")


def deepstream(
    model: Annotated[Path, typer.Argument(help="Exported ONNX (FP32, or INT8 Q/DQ from quantize --target tensorrt).")],
    outdir: Annotated[Path, typer.Argument(help="Folder for the model, labels and the two configs.")],
    streams: Annotated[int, typer.Option(help="Streams batched together (batch-size everywhere).")] = 4,
    uri: Annotated[list[str] | None, typer.Option(help=(
        "Stream URI (file://, rtsp://): one for all streams or one per stream (default: DeepStream's sample "
        "video)."))] = None,
    precision: Annotated[str, typer.Option(help="fp16, fp32 or int8 (auto: int8 for a Q/DQ file, else fp16).")
                         ] = "auto",
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """DeepStream nvinfer and deepstream-app configs for MODEL on N streams (Jetson: JetPack's DeepStream)."""
    from edgeseg.deploy.deepstream import DeepStreamOptions, write_deepstream

    files = write_deepstream(model, outdir, DeepStreamOptions(streams=streams, uris=uri or [], precision=precision),
                             force=force)
    for f in files:
        console.print(f"wrote {f}")
    console.print(f"run on the device: deepstream-app -c {files[-1]}")
