"""Writers for serving engines: the served ONNX (batch open, uint8 pixels in), Triton model repositories
parsed with tritonclient's model-config protobuf, DeepStream configs against NVIDIA's documented keys."""

from __future__ import annotations

import configparser

import numpy as np
import pytest
from conftest import REPO

from edgeseg.errors import EdgesegError

BUNDLED = REPO / "models" / "segnet_dsc.onnx"
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'edgeseg[triton]'")


def test_division_by_255_is_numpys_scaling_for_every_pixel_value():
    """The uint8 front divides by 255 in float32; to_tensor multiplies by 1/255 in NumPy: equal for all 256."""
    from edgeseg.runtime.images import to_tensor
    from edgeseg.runtime.meta import ModelMeta

    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    want = to_tensor(values, ModelMeta(input_size=(16, 16)))
    assert np.array_equal(values.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255), want)


def test_served_onnx_takes_pixels_in_batches_bit_exact():
    from edgeseg.deploy.served_onnx import PIXELS_INPUT, served_onnx
    from edgeseg.runtime.backends.onnxruntime import create_session
    from edgeseg.runtime.backends.predictor import Predictor
    from edgeseg.runtime.images import list_images, read_image, resized

    data, meta = served_onnx(BUNDLED, pixels=True)
    frames = [read_image(p) for p in list_images(REPO / "calibration")[:5]]
    session = create_session(data, threads=2)
    got = session.run(None, {PIXELS_INPUT: resized(frames, meta)})[0]
    local = Predictor.load(BUNDLED, backend="onnxruntime", precision="fp32", lower_unpool=False)
    want = np.concatenate([local.scores(local.preprocess(f)) for f in frames])
    assert got.shape == (5, 3, 160, 160) and np.array_equal(got, want)


def _parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("platform", ["onnxruntime", "python", "tensorrt"])
def test_triton_repo_parses_with_tritons_own_protobuf(platform, tmp_path, cli):
    r = cli("triton", "repo", BUNDLED, tmp_path, "--platform", platform, "--max-batch", "4", "--instances", "2")
    assert r.code == 0, r.err
    cfg = _parse(tmp_path / "edgeseg" / "config.pbtxt")
    assert cfg.name == "edgeseg" and cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].count == 2
    inp, out = cfg.input[0], cfg.output[0]
    # dims leave out the batch dimension, which max_batch_size adds
    if platform == "tensorrt":
        assert (cfg.platform, inp.data_type, list(inp.dims)) == ("tensorrt_plan", model_config_pb2.TYPE_FP32,
                                                                 [3, 160, 160])
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        onnx_file = tmp_path / "edgeseg" / "model.onnx"
        assert "edgeseg build" in r.out and "model.plan" in r.out
    else:
        assert (inp.name, inp.data_type, list(inp.dims)) == ("image", model_config_pb2.TYPE_UINT8, [160, 160, 3])
        assert inp.format == model_config_pb2.ModelInput.FORMAT_NHWC
        onnx_file = tmp_path / "edgeseg" / "1" / "model.onnx"
        assert (cfg.platform or cfg.backend) == {"onnxruntime": "onnxruntime_onnx", "python": "python"}[platform]
    assert (out.name, list(out.dims)) == ("logits", [3, 160, 160])
    from edgeseg.runtime.backends.triton import meta_from_parameters

    params = {k: {"string_value": v.string_value} for k, v in cfg.parameters.items()}
    assert meta_from_parameters(params).input_size == (160, 160)
    import onnx

    batch = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch" and not batch.HasField("dim_value")
    if platform == "python":
        assert "TritonPythonModel" in (tmp_path / "edgeseg" / "1" / "model.py").read_text()


def test_triton_repo_refuses_bad_input(tmp_path, cli):
    assert cli("triton", "repo", BUNDLED, tmp_path).code == 0
    again = cli("triton", "repo", BUNDLED, tmp_path)
    assert again.code == 1 and "--force" in again.err and "Traceback" not in again.err
    assert cli("triton", "repo", BUNDLED, tmp_path, "--force").code == 0
    bad = cli("triton", "repo", BUNDLED, tmp_path, "--name", "../up")
    assert bad.code == 1 and "--name" in bad.err
    cpu_trt = cli("triton", "repo", BUNDLED, tmp_path, "--name", "t", "--platform", "tensorrt", "--kind", "cpu")
    assert cpu_trt.code == 1 and "GPU" in cpu_trt.err
    assert not (tmp_path / "t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edgeseg"]  # no staging folder left behind


def test_a_fixed_batch_graph_is_refused(tmp_path):
    """A graph whose batch cannot open (a Reshape to 1 x ...) is caught by the batch-3 check."""
    import onnx
    from onnx import TensorProto, helper

    from edgeseg.deploy.served_onnx import served_onnx

    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"edgeseg_meta": '{"input_size": [8, 8]}'})
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EdgesegError, match="--dynamic-batch"):
        served_onnx(path, pixels=True)


def test_triton_urls():
    from edgeseg.runtime.backends.triton import TritonURL

    u = TritonURL.parse("triton://10.0.0.5/seg")
    assert (u.protocol, u.host, u.port, u.name) == ("grpc", "10.0.0.5", 8001, "seg")
    assert TritonURL.parse("triton+http://[::1]:9000/edgeseg").port == 9000
    for bad in ("triton://host:99999/x", "triton://host", "triton://host:80/a/b", "triton://user:pw@h/x"):
        with pytest.raises(EdgesegError, match="triton://HOST:PORT/NAME"):
            TritonURL.parse(bad)


def test_a_server_that_is_not_there_is_one_line(cli, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = cli("run", f"triton://127.0.0.1:{port}/edgeseg", "--source", REPO / "calibration", "--reconnect", "0.5")
    assert r.code == 1 and f"127.0.0.1:{port}" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


# The keys NVIDIA's parsers read, from DeepStream's public sources: gst-nvinfer's
# gstnvinfer_property_parser.h (CONFIG_GROUP_INFER_*) and apps-common's deepstream_config_file_parser.c /
# deepstream-app's deepstream_app_config_parser.c (the groups' keys). segvisual's keys are its
# NvDsSegVisualConfig fields under the common names (enable, gpu-id, batch-size, width, height).
NVINFER_KEYS = {
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "network-type",
    "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision", "model-color-format",
    "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio", "symmetric-padding", "scaling-filter",
    "scaling-compute-hw", "network-input-order", "input-tensor-from-meta", "custom-lib-path", "onnx-file",
    "num-detected-classes", "segmentation-threshold", "segmentation-output-order",
}
APP_KEYS = {
    "application": {"enable-perf-measurement", "perf-measurement-interval-sec", "gie-kitti-output-dir",
                    "global-gpu-id"},
    "tiled-display": {"enable", "rows", "columns", "width", "height", "gpu-id", "nvbuf-memory-type"},
    "source": {"enable", "type", "uri", "num-sources", "gpu-id", "latency", "camera-width", "camera-height",
               "camera-fps-n", "camera-fps-d", "camera-csi-sensor-id", "camera-v4l2-dev-node",
               "drop-frame-interval", "camera-id", "nvbuf-memory-type"},
    "streammux": {"gpu-id", "live-source", "batch-size", "batched-push-timeout", "width", "height",
                  "enable-padding", "nvbuf-memory-type"},
    "primary-gie": {"enable", "gpu-id", "batch-size", "gie-unique-id", "config-file", "model-engine-file",
                    "labelfile-path", "interval", "nvbuf-memory-type"},
    "segvisual": {"enable", "gpu-id", "batch-size", "width", "height", "nvbuf-memory-type"},
    "osd": {"enable", "gpu-id", "process-mode", "border-width", "text-size", "font", "show-clock"},
    "sink": {"enable", "type", "sync", "qos", "width", "height", "container", "codec", "bitrate", "output-file",
             "source-id", "gpu-id", "iframeinterval", "rtsp-port", "udp-port"},
    "tests": {"file-loop", "pipeline-recreate-sec"},
}


def _ini(path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in GKeyFile
    parser.read(path)
    return parser


def test_deepstream_configs_use_nvidias_keys_and_the_models_values(tmp_path, cli):
    r = cli("deepstream", BUNDLED, tmp_path, "--streams", "6")
    assert r.code == 0, r.err
    infer = _ini(tmp_path / "config_infer_edgeseg.txt")
    assert infer.sections() == ["property"]
    prop = infer["property"]
    assert set(prop) <= NVINFER_KEYS, set(prop) - NVINFER_KEYS
    assert prop["network-type"] == "2" and prop["output-blob-names"] == "logits"
    assert prop["infer-dims"] == "3;160;160" and prop["num-detected-classes"] == "3"
    assert float(prop["net-scale-factor"]) == pytest.approx(1 / 255) and "offsets" not in prop
    assert prop["model-color-format"] == "0" and prop["network-mode"] == "2" and prop["batch-size"] == "6"
    assert prop["maintain-aspect-ratio"] == "0" and prop["scaling-filter"] == "3"  # area: GPU super-sampling
    assert prop["model-engine-file"] == "model.onnx_b6_gpu0_fp16.engine"
    assert (tmp_path / prop["labelfile-path"]).read_text().split() == ["pet", "background", "border"]
    import onnx

    served = onnx.load(str(tmp_path / prop["onnx-file"]))
    assert served.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    app = _ini(tmp_path / "deepstream_app_config.txt")
    for section in app.sections():
        group = section.rstrip("0123456789")
        assert group in APP_KEYS, section
        assert set(app[section]) <= APP_KEYS[group], (section, set(app[section]) - APP_KEYS[group])
    assert app["source0"]["num-sources"] == "6" and app["streammux"]["batch-size"] == "6"
    assert app["primary-gie"]["config-file"] == "config_infer_edgeseg.txt"
    assert int(app["tiled-display"]["rows"]) * int(app["tiled-display"]["columns"]) >= 6


def test_deepstream_int8_takes_a_tensorrt_qdq_file(tmp_path, cli):
    from edgeseg.compile.quantize import QuantizeOptions, quantize

    cpu = tmp_path / "cpu.onnx"
    quantize(BUNDLED, cpu, QuantizeOptions(target="cpu"), calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    r = cli("deepstream", cpu, tmp_path / "ds")
    assert r.code == 1 and "--target tensorrt" in r.err
    trt = tmp_path / "trt.onnx"
    quantize(BUNDLED, trt, QuantizeOptions(target="tensorrt"), calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    assert cli("deepstream", trt, tmp_path / "ds").code == 0
    assert _ini(tmp_path / "ds" / "config_infer_edgeseg.txt")["property"]["network-mode"] == "1"
    again = cli("deepstream", trt, tmp_path / "ds")
    assert again.code == 1 and "--force" in again.err
