"""Export: TensorRT-compatible unpooling that is bit-exact with MaxUnpool, verification, metadata, check."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeseg.compile.check import check
from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.compile.export import ExportOptions, _Graph, _unpool, export
from edgeseg.compile.nets import DeployUnpool, exact_unpool
from edgeseg.files import sha256_file
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.meta import ModelMeta


def tie_heavy(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Activations full of exact ties: few levels, flat blocks, a whole flat channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, shape, generator=g).float()
    n, c, h, w = shape
    x[:, : c // 3] = torch.randint(0, 2, (n, c // 3, h // 4, w // 4), generator=g).float().repeat_interleave(
        4, -1).repeat_interleave(4, -2)
    x[:, -1] = 1.0
    return x


def maxunpool_reference(pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    _, idx = torch.nn.functional.max_pool2d(pre, 2, return_indices=True)
    return torch.nn.functional.max_unpool2d(x, idx, 2, output_size=pre.shape[-2:])


@pytest.mark.parametrize("seed", range(4))
def test_exact_unpool_equals_maxunpool_on_ties(seed):
    pre = tie_heavy((2, 9, 16, 24), seed)
    x = torch.rand(2, 9, 8, 12, generator=torch.Generator().manual_seed(seed)) + 0.1
    assert torch.equal(exact_unpool(pre, x), maxunpool_reference(pre, x))


def unpool_model(n: int, c: int, h: int, w: int) -> onnx.ModelProto:
    """The export's unpool subgraph alone: inputs ``pre`` (N, C, H, W) and ``x`` (N, C, H/2, W/2)."""
    g = _Graph()
    _unpool(g, "pre", "x", "out")
    graph = helper.make_graph(
        g.nodes, "unpool",
        [helper.make_tensor_value_info("pre", TensorProto.FLOAT, [n, c, h, w]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h // 2, w // 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [n, c, h, w])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("seed", range(4))
def test_onnx_unpool_subgraph_is_bit_exact_in_onnxruntime(seed):
    n, c, h, w = 2, 9, 16, 24
    sess = create_session(unpool_model(n, c, h, w).SerializeToString(), threads=1)
    pre = tie_heavy((n, c, h, w), seed)
    x = torch.rand(n, c, h // 2, w // 2, generator=torch.Generator().manual_seed(seed)) + 0.1
    out = sess.run(None, {"pre": pre.numpy(), "x": x.numpy()})[0]
    assert np.array_equal(out, maxunpool_reference(pre, x).numpy())


@pytest.mark.parametrize("arch", ["segnet-dsc", "segnet"])
def test_deploy_form_is_bit_exact_with_the_notebook_model(arch, notebook_models):
    model = notebook_models[arch]
    x = torch.cat([(torch.randint(0, 3, (2, 3, 32, 48)) / 2), torch.full((1, 3, 32, 48), 0.5)])
    with torch.no_grad():
        assert torch.equal(DeployUnpool(model)(x), model(x))


@pytest.mark.parametrize("arch", ["segnet-dsc", "segnet"])
def test_export_has_no_unpool_and_passes_tensorrt_check(arch, exported, notebook_ckpt):
    path, report = exported[arch]
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert "MaxUnpool" not in ops
    assert all(len([o for o in n.output if o]) == 1 for n in m.graph.node if n.op_type == "MaxPool")
    assert check(path, "tensorrt") == []
    assert check(path, "onnxruntime") == []
    assert report.verification.agreement == 1.0
    assert report.nodes_after <= report.nodes_before
    props = {p.key: p.value for p in m.metadata_props}
    assert props["source_sha256"] == sha256_file(notebook_ckpt[arch])
    assert props["arch"] == arch
    assert json.loads(props["class_names"]) == ["pet", "background", "border"]
    assert props["input_shape"] == "1x3x64x64"
    assert json.loads(props["edgeseg_meta"])["interpolation"] == "nearest"


def test_export_verifies_on_real_photos_and_argmax_head(cli, notebook_ckpt, tmp_path, pets3):
    out = tmp_path / "argmax.onnx"
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", out, "--with-argmax", "uint8", "--verify-images",
            pets3 / "images", "--verify-limit", "6", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    v = report["verification"]
    assert v["real_images"] == 6 and v["synthetic_flips"] == 0
    assert v["real_flips"] * 1e5 <= v["real_pixels"]
    sess = create_session(out, threads=1)
    assert [o.name for o in sess.get_outputs()] == ["classes"]
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    ids = sess.run(None, {"input": x})[0]
    assert ids.dtype == np.uint8 and ids.shape == (1, 128, 128)
    with torch.no_grad():
        ref = load_checkpoint(notebook_ckpt["segnet-dsc"]).model(torch.from_numpy(x)).argmax(1).numpy()
    assert np.array_equal(ids, ref)


def test_dynamic_batch_runs_any_batch(notebook_ckpt, tmp_path):
    out = tmp_path / "dyn.onnx"
    export(load_checkpoint(notebook_ckpt["segnet-dsc"]), out, ExportOptions(size=(32, 32), batch=None))
    sess = create_session(out, threads=1)
    assert sess.get_inputs()[0].shape[0] == "batch"
    assert sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 3, 32, 32)
    assert check(out, "tensorrt") == []


def test_flip_average_is_the_mean_of_each_frame_and_its_own_mirror(cli, exported, notebook_ckpt, tmp_path):
    out = tmp_path / "flip.onnx"
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", out, "--size", "64x64", "--dynamic-batch", "--flip-average",
            "--json")
    assert r.code == 0, r.err
    v = json.loads(r.out)["verification"]
    assert v["synthetic_flips"] == 0 and v["max_abs_error"] < 1e-3  # PyTorch's reference averages too
    plain, flip = create_session(exported["segnet-dsc"][0], threads=1), create_session(out, threads=1)
    x = np.random.default_rng(3).random((3, 3, 64, 64), dtype=np.float32)  # a batch: each frame meets its own mirror
    got = flip.run(None, {"input": x})[0]
    assert got.shape == (3, 3, 64, 64)
    for i in range(3):
        a = plain.run(None, {"input": x[i:i + 1]})[0]
        b = plain.run(None, {"input": np.ascontiguousarray(x[i:i + 1, ..., ::-1])})[0][..., ::-1]
        np.testing.assert_allclose(got[i:i + 1], (a + b) / 2, rtol=0, atol=1e-5)
        assert np.abs(got[i:i + 1] - a).max() > 1e-3  # the mirror changed something
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["edgeseg_meta"])
    assert meta["flip_average"] is True
    with pytest.raises(ValueError, match="flip_average"):  # metadata is read from untrusted files
        ModelMeta.from_dict({**meta, "flip_average": "yes"})
    assert check(out, "tensorrt") == []
    info = cli("info", out)
    assert info.code == 0 and "mirror image" in info.out


def _naive_model(dynamic_hw: bool = False) -> onnx.ModelProto:
    """What a direct export of the notebook model looks like: MaxPool indices feeding MaxUnpool."""
    h = "height" if dynamic_hw else 8
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], name="dc1.mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["p", "idx"], ["y"], name="uc1.mup", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(nodes, "naive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, h, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, h, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_check_flags_a_naive_export(cli, tmp_path):
    path = tmp_path / "naive.onnx"
    onnx.save(_naive_model(dynamic_hw=True), str(path))
    messages = [str(p) for p in check(path, "tensorrt")]
    assert any(m.startswith("uc1.mup (MaxUnpool)") for m in messages)
    assert any(m.startswith("dc1.mp (MaxPool)") and "Indices" in m for m in messages)
    assert any("dimension 2 is dynamic" in m for m in messages)
    r = cli("check", path, "--target", "tensorrt")
    assert r.code == 1
    assert "1 MaxUnpool node(s) (uc1.mup): " in r.out
    r = cli("check", path, "--target", "tensorrt", "--all")
    assert r.code == 1 and "uc1.mup (MaxUnpool)" in r.out


def test_check_groups_a_problem_shared_by_many_nodes_and_names_the_fix(cli, tmp_path):
    from conftest import REPO

    from edgeseg.compile.quantize import QuantizeOptions, quantize

    cpu = tmp_path / "cpu.onnx"
    quantize(REPO / "models" / "segnet_dsc.onnx", cpu, QuantizeOptions(target="cpu"),
             calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    r = cli("check", cpu, "--target", "tensorrt")
    assert r.code == 1 and len(r.out.strip().splitlines()) == 8  # eight kinds of problem, not 172 lines
    assert "41 QuantizeLinear node(s) (bn_input_QuantizeLinear, " in r.out and "and 38 more" in r.out
    # the pools and unpools that run on uint8 are named too: TensorRT would refuse them as well
    assert "8 Equal node(s) (uc4.mup/is_max, " in r.out and "8 MaxPool node(s)" in r.out
    assert r.out.count("computes on 8-bit integers") == 5  # MaxPool, Equal, Mul, Reshape, Transpose
    assert "quantize the FP32 model with --target tensorrt" in r.err and "172 problem(s)" in r.err
    assert len(cli("check", cpu, "--target", "tensorrt", "--all").out.strip().splitlines()) == 172


def _qdq_model(zero_point: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q1"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq1"),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zero_point, "zp")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(("zp", "opset", "expect"), [
    (np.array(0, np.int8), 17, None),
    (np.array(3, np.int8), 17, "non-zero zero point"),
    (np.array(128, np.uint8), 17, "UINT8 quantization"),
    (np.array(0, np.int8), 21, "opset 21 is outside"),
])
def test_check_enforces_tensorrt_quantization_and_opset_rules(zp, opset, expect, tmp_path):
    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq_model(zp, opset), str(path))
    messages = [str(p) for p in check(path, "tensorrt")]
    if expect is None:
        assert messages == []
    else:
        assert any(expect in m for m in messages), messages


def test_check_onnxruntime_target_reports_unloadable_model(tmp_path):
    m = _naive_model()
    m.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    assert check(path, "onnxruntime")


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--size", "100x128"], "not a multiple of 16"),
    (["--size", "abc"], "is not HxW"),
    (["--opset", "7"], "--opset 7 is not supported"),
    (["--opset", "99"], "--opset 99 is not supported"),
    (["--with-argmax", "float"], "choose uint8 or int32"),
])
def test_export_refuses_bad_options(args, message, cli, notebook_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", out, *args)
    assert r.code == 1
    assert message in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_output_rules(cli, notebook_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("keep me")
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", out, "--size", "32x32")
    assert r.code == 1 and "--force" in r.err
    assert out.read_text() == "keep me"
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", tmp_path / "missing" / "m.onnx")
    assert r.code == 1 and "does not exist" in r.err
    r = cli("export", tmp_path / "nope.pth", "-o", tmp_path / "n.onnx")
    assert r.code == 1 and "no such file" in r.err
    r = cli("export", notebook_ckpt["segnet-dsc"], "-o", out, "--size", "32x32", "--force", "--no-simplify")
    assert r.code == 0, r.err
    assert out.read_bytes()[:8] != b"keep me"


def test_a_broken_unpool_fails_verification_and_writes_nothing(monkeypatch, notebook_ckpt, tmp_path):
    import edgeseg.compile.export as ex

    # b and c swapped: the winner's value lands one row/column off in some windows
    monkeypatch.setattr(ex, "WINDOW_OFFSETS", ((0, 0), (1, 0), (0, 1), (1, 1)))
    out = tmp_path / "m.onnx"
    with pytest.raises(ex.EdgesegError, match="verification failed: the unpool rewrite differs") as e:
        export(load_checkpoint(notebook_ckpt["segnet-dsc"]), out, ExportOptions(size=(32, 32)))
    assert float(re.search(r"max abs difference ([\d.e+-]+)", str(e.value)).group(1)) > 0
    assert list(tmp_path.iterdir()) == []


def test_verification_bounds():
    from edgeseg.compile.export import VerifyReport

    ok = VerifyReport(inputs=70, pixels=1_146_880, max_abs_error=0.2, agreement=0.999998, real_images=64,
                      synthetic_flips=3, real_flips=2, real_pixels=1_048_576)
    assert ok.passed  # PyTorch's own near-ties: its convolutions round differently
    assert not VerifyReport(**{**ok.__dict__, "unpool_flips": 1}).passed  # the rewrite must be exact
    assert not VerifyReport(**{**ok.__dict__, "unpool_max_abs_diff": 1e-7}).passed
    assert not VerifyReport(**{**ok.__dict__, "synthetic_flips": 20}).passed  # 204 per million
    assert not VerifyReport(**{**ok.__dict__, "real_flips": 200}).passed


def test_export_verifies_whatever_thread_count_pytorch_runs_on(tmp_path):
    """On one thread PyTorch's convolutions round differently and flip 3 near-tie pixels of the
    synthetic inputs; that used to fail the export of the bundled checkpoint."""
    from conftest import REPO

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = export(load_checkpoint(REPO / "models" / "segnet_dsc.pth"), tmp_path / "m.onnx",
                     ExportOptions(batch=None, with_argmax="uint8"))
    finally:
        torch.set_num_threads(threads)
    v = rep.verification
    assert (v.unpool_flips, v.unpool_max_abs_diff) == (0, 0.0) and v.synthetic_flips < 0.0001 * v.pixels
