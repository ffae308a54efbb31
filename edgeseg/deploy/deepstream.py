"""``edgeseg deepstream``: the files DeepStream's ``nvinfer`` and ``deepstream-app`` need to run an
edgeseg model on many streams in one batched pipeline (Jetson or dGPU; DeepStream comes with JetPack).

    OUTDIR/model.onnx                   the model with its batch dimension open (nvinfer builds the engine)
    OUTDIR/labels.txt                   one class name per line
    OUTDIR/config_infer_edgeseg.txt     nvinfer [property]: segmentation network, RGB, scale 1/255, ...
    OUTDIR/deepstream_app_config.txt    N sources, streammux, the model, segvisual, a tiled display

Keys and values follow NVIDIA's parsers (gstnvinfer_property_parser.h, deepstream_config_file_parser.c);
the tests check every written key against those lists. DeepStream cannot run here: what is verified is
the files' keys and their values against the model, not a pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.deploy.served_onnx import served_onnx
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write

SAMPLE_STREAM = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_1080p_h264.mp4"
# NvBufSurfTransform's filters: 0 nearest, 1 bilinear, 2 cubic (GPU), 3 super-sampling (GPU, an area average)
SCALING_FILTER = {"nearest": 0, "linear": 1, "cubic": 2, "area": 3}
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
FILES = ("model.onnx", "labels.txt", "config_infer_edgeseg.txt", "deepstream_app_config.txt")


@dataclass
class DeepStreamOptions:
    streams: int = 4
    uris: list[str] = field(default_factory=list)  # default: DeepStream's sample video on every stream
    precision: str = "auto"  # auto: int8 for a Q/DQ file, else fp16
    width: int = 1280  # streammux and tiled display
    height: int = 720
    gpu_id: int = 0


def _ini(groups: dict[str, dict[str, object]]) -> str:
    out = []
    for name, keys in groups.items():
        out.append(f"[{name}]")
        out += [f"{k}={v}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


def nvinfer_config(meta, props: dict[str, str], output: str, opts: DeepStreamOptions) -> dict[str, dict]:
    """The [property] group for a model with ``meta`` and ONNX metadata ``props``."""
    quantized = props.get("precision", "fp32")
    precision = opts.precision
    if precision == "auto":
        precision = "int8" if quantized.startswith("int8") else "fp16"
    if precision not in NETWORK_MODE:
        raise EdgesegError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    if precision == "int8" and quantized != "int8-tensorrt":
        raise EdgesegError("INT8 in DeepStream takes a Q/DQ model made for TensorRT: edgeseg quantize --target "
                           "tensorrt, then give that file")
    if precision != "int8" and quantized.startswith("int8"):
        raise EdgesegError(f"a quantized model runs in DeepStream as int8; leave out --precision {precision}")
    lo, hi = meta.value_range
    h, w = meta.input_size
    scale = (hi - lo) / 255.0
    keys: dict[str, object] = {
        "gpu-id": opts.gpu_id,
        "net-scale-factor": repr(scale),  # y = net-scale-factor * (x - offset)
        "model-color-format": 0 if meta.color == "RGB" else 1,
        "onnx-file": "model.onnx",
        # the name nvinfer gives the engine it builds, so a second start loads it instead of building again
        "model-engine-file": f"model.onnx_b{opts.streams}_gpu{opts.gpu_id}_{precision}.engine",
        "labelfile-path": "labels.txt",
        "batch-size": opts.streams,
        "network-mode": NETWORK_MODE[precision],
        "infer-dims": f"3;{h};{w}",
        "num-detected-classes": len(meta.class_names),
        "interval": 0,
        "gie-unique-id": 1,
        "network-type": 2,  # segmentation
        "output-blob-names": output,
        "segmentation-threshold": 0.0,  # every pixel gets its highest-scoring class, as edgeseg does
        "segmentation-output-order": 0,  # NCHW
        "maintain-aspect-ratio": 0,  # edgeseg stretches the frame to the input size
        "scaling-filter": SCALING_FILTER[meta.interpolation],
        "output-tensor-meta": 0,
    }
    if lo:
        offset = -lo / scale
        keys["offsets"] = ";".join([repr(offset)] * 3)
    return {"property": keys}


def app_config(opts: DeepStreamOptions, meta) -> dict[str, dict]:
    """deepstream-app: N streams batched through the model, masks tiled on one display."""
    n = opts.streams
    uris = opts.uris or [SAMPLE_STREAM]
    rows = math.isqrt(n)
    cols = math.ceil(n / rows)
    h, w = meta.input_size
    groups: dict[str, dict] = {
        "application": {"enable-perf-measurement": 1, "perf-measurement-interval-sec": 5},
        "tiled-display": {"enable": 1, "rows": rows, "columns": cols, "width": opts.width, "height": opts.height,
                          "gpu-id": opts.gpu_id},
    }
    if len(uris) == 1:  # one file played on every stream (type 3: multi-URI)
        groups["source0"] = {"enable": 1, "type": 3, "uri": uris[0], "num-sources": n, "gpu-id": opts.gpu_id}
    else:
        for i, uri in enumerate(uris):
            groups[f"source{i}"] = {"enable": 1, "type": 4 if uri.startswith("rtsp://") else 2, "uri": uri,
                                    "gpu-id": opts.gpu_id}
    groups.update({
        "streammux": {"gpu-id": opts.gpu_id, "live-source": int(any(u.startswith("rtsp://") for u in uris)),
                      "batch-size": n, "batched-push-timeout": 40000, "width": opts.width, "height": opts.height,
                      "enable-padding": 0},
        "primary-gie": {"enable": 1, "gpu-id": opts.gpu_id, "batch-size": n, "gie-unique-id": 1,
                        "config-file": "config_infer_edgeseg.txt"},
        "segvisual": {"enable": 1, "gpu-id": opts.gpu_id, "batch-size": n, "width": w, "height": h},
        "osd": {"enable": 1, "gpu-id": opts.gpu_id},
        "sink0": {"enable": 1, "type": 2, "sync": 0, "gpu-id": opts.gpu_id},  # a window (EGL)
        # the same to a file: enable=1 here (and 0 above) on a machine without a display
        "sink1": {"enable": 0, "type": 3, "sync": 0, "container": 1, "codec": 1, "bitrate": 4000000,
                  "output-file": "edgeseg_tiled.mp4", "gpu-id": opts.gpu_id},
        "tests": {"file-loop": 0},
    })
    return groups


def write_deepstream(model: Path, outdir: Path, opts: DeepStreamOptions, force: bool = False) -> list[Path]:
    """The four files for ``model`` (an edgeseg ONNX) in ``outdir``; each written whole (temp + rename)."""
    import onnx

    if opts.streams < 1:
        raise EdgesegError("--streams must be at least 1")
    if opts.uris and len(opts.uris) not in (1, opts.streams):
        raise EdgesegError(f"give one --uri (played on all {opts.streams} streams) or one per stream")
    model = Path(model)
    if model.suffix.lower() != ".onnx":
        raise EdgesegError("DeepStream builds its engine from ONNX: give the exported .onnx (edgeseg export)", model)
    if not model.exists():
        raise EdgesegError("no such file; check the path", model)
    targets = [outdir / f for f in FILES]
    for t in targets:
        if t.exists() and not force:
            raise EdgesegError("already exists; pass --force to replace it", t)
    data, meta = served_onnx(model, pixels=False)
    graph = onnx.load_from_string(data)
    props = {p.key: p.value for p in graph.metadata_props}
    output = graph.graph.output[0]
    if len(output.type.tensor_type.shape.dim) != 4:
        raise EdgesegError("ends in an ArgMax head; DeepStream's segmentation parser takes the class scores: export "
                           "without --with-argmax", model)
    infer = nvinfer_config(meta, props, output.name, opts)
    app = app_config(opts, meta)
    outdir.mkdir(parents=True, exist_ok=True)
    texts = [None, "\n".join(meta.class_names) + "\n", _ini(infer), _ini(app)]
    for target, text in zip(targets, texts, strict=True):
        if text is None:
            atomic_write(target, lambda p: p.write_bytes(data), force=force)
        else:
            atomic_write(target, lambda p, t=text: p.write_text(t), force=force)
    return targets
