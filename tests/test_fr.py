"""Face-recognition backends: the PyTorch executor equals onnxruntime on the original graphs, the nets separate
genuine from impostor pairs on real photos, the FFHQ -> ArcFace warp is right, missing files are reported."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch

from _numerics import assert_close32
from faceanonymixer import align, registry
from faceanonymixer.errors import MissingWeightsError
from faceanonymixer.fr import available, cosine, get_recogniser
from faceanonymixer.fr.base import FFHQToArcFace
from faceanonymixer.images import read_image
from faceanonymixer.models.onnx_graph import OnnxGraphModule, dequantize_int8_blocks

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

SAMPLES = registry.data_dir() / "samples"
PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"]
TOL = 1e-4


def _session(path_or_bytes):
    so = ort.SessionOptions()
    so.log_severity_level = 3          # the int8 SFace graph warns once per initializer-shadowing input
    so.intra_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _ort_run(sess, x: np.ndarray) -> np.ndarray:
    """Run a fixed-batch-1 graph sample by sample; stale graph inputs (SFace int8) get zero dummy feeds."""
    inp = sess.get_inputs()
    dummies = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in inp[1:]}
    return np.concatenate([sess.run(None, {inp[0].name: x[k:k + 1], **dummies})[0] for k in range(len(x))])


@pytest.fixture(scope="module")
def photos():
    """{file: (rgb uint8, Face)} for the sample photos (one face each)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not installed at {SAMPLES} (make install)")
    out = {}
    for f in PHOTOS:
        img = read_image(SAMPLES / f)
        out[f] = (img, align.largest_face(img, source=f))
    return out


@pytest.fixture(scope="module")
def crops(photos):
    """ArcFace 112 crops: uint8 [N,112,112,3] RGB and float [N,3,112,112] in [0,1] (order = PHOTOS)."""
    u8 = np.stack([align.align_arcface(img, face.landmarks5) for img, face in photos.values()])
    return u8, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0


def _separation(emb: torch.Tensor) -> tuple[float, float]:
    """(min genuine cosine among the Obama photos, max impostor cosine Obama vs Biden)."""
    sims = emb @ emb.T
    b = PHOTOS.index("biden.jpg")
    ob = [i for i in range(len(PHOTOS)) if i != b]
    gen = min(sims[i, j].item() for i in ob for j in ob if i < j)
    imp = max(sims[b, i].item() for i in ob)
    return gen, imp


# ------------------------------------------------------------------------------------------------------------
# executor on a synthetic graph: ops the FR graphs do not use, asymmetric pads, blocked int8 weights

def _tiny_graph():
    rng = np.random.default_rng(0)
    wq = rng.integers(-128, 128, size=(4, 12), dtype=np.int8)          # blocked along axis 1, block 4
    scale = rng.uniform(0.005, 0.02, size=(4, 3)).astype(np.float32)
    zp = rng.integers(-5, 5, size=(4, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(zp, "wz"),
        numpy_helper.from_array(np.array([4, 3, 2, 2], np.int64), "wshape"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "m"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "g"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], axis=1, block_size=4),
        helper.make_node("Reshape", ["wdq", "wshape"], ["w"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 1, 0], strides=[2, 1]),
        helper.make_node("Abs", ["c"], ["a"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Sub", ["a", "r"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "flat"], ["f"]),                # fixed batch 1 -> patched
        helper.make_node("MatMul", ["f", "m"], ["mm"]),
        helper.make_node("Gemm", ["mm", "g"], ["out"], alpha=0.5),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "tiny", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_executor_matches_onnxruntime_on_synthetic_graph():
    model = _tiny_graph()
    net = OnnxGraphModule.from_onnx(model)
    sess = _session(model.SerializeToString())
    x = np.random.default_rng(1).normal(size=(3, 3, 9, 8)).astype(np.float32)
    ref = _ort_run(sess, x)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    assert y.shape == (3, 5)
    assert np.abs(y - ref).max() < 1e-5
    dq = dequantize_int8_blocks(model)
    assert [n.op_type for n in dq.graph.node if n.op_type in ("DequantizeLinear",)] == []
    assert np.abs(_ort_run(_session(dq.SerializeToString()), x) - ref).max() < 1e-6


def test_executor_rejects_unsupported_ops():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(NotImplementedError, match="Softmax"):
        OnnxGraphModule.from_onnx(helper.make_model(g))


# ------------------------------------------------------------------------------------------------------------
# SFace

def test_sface_equals_int8_onnxruntime(crops):
    u8, x = crops
    rec = get_recogniser("sface")
    assert (rec.name, rec.dim, rec.differentiable, rec.white_box) == ("sface", 128, True, True)
    sess = _session(rec.path)                                    # the ORIGINAL int8 graph, stale inputs fed
    rnd = np.random.default_rng(0).uniform(0, 1, size=(2, 3, 112, 112)).astype(np.float32)
    faces = torch.cat([x, torch.from_numpy(rnd)])                # 6 real aligned faces + 2 random images
    bgr255 = faces.flip(1).numpy() * 255.0                       # SFace's own convention, computed independently
    ref = _ort_run(sess, np.ascontiguousarray(bgr255, dtype=np.float32))
    with torch.no_grad():
        raw = rec._embed(faces).numpy()                          # batch of 8 in one pass
        emb = rec.embed(faces)
    diff = np.abs(raw - ref).max()
    assert diff < TOL, diff
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(emb.numpy() - ref_n).max() < TOL
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(faces)), atol=1e-5)


def test_sface_gradient_and_batching(crops):
    _, x = crops
    rec = get_recogniser("sface")
    faces = x[:3].clone().requires_grad_(True)
    emb = rec.embed(faces)
    loss = (1 - cosine(emb, emb.detach().roll(1, 0))).sum()
    loss.backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all() and faces.grad.abs().sum() > 0
    with torch.no_grad():
        single = torch.cat([rec.embed(x[k:k + 1]) for k in range(3)])
    assert (single - emb.detach()).abs().max() < 1e-5


def test_sface_genuine_above_impostor(crops):
    _, x = crops
    with torch.no_grad():
        gen, imp = _separation(get_recogniser("sface").embed(x))
    assert gen > imp + 0.2, (gen, imp)


# ------------------------------------------------------------------------------------------------------------
# faceplugin

def test_faceplugin_equals_onnxruntime_and_separates(crops):
    u8, x = crops
    rec = get_recogniser("faceplugin-fr")
    assert (rec.dim, rec.differentiable, rec.white_box) == (512, True, False)
    # the JS SDK's preprocessing (RGB, (x - 127) / 128 on uint8), done in numpy, fed to onnxruntime
    ref = _ort_run(_session(rec.path), ((u8.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        raw = rec._embed(x).numpy()
        gen, imp = _separation(rec.embed(x))
    diff = np.abs(raw - ref).max()
    assert diff < TOL, diff
    assert gen > imp + 0.2, (gen, imp)


# ------------------------------------------------------------------------------------------------------------
# dlib

def test_dlib_genuine_above_impostor(photos, crops):
    pytest.importorskip("dlib")
    _, x = crops
    rec = get_recogniser("dlib-resnet")
    assert (rec.dim, rec.differentiable, rec.white_box) == (128, False, False)
    emb = rec.embed(x.clone().requires_grad_(True))
    assert not emb.requires_grad
    gen, imp = _separation(emb)
    assert gen > imp, (gen, imp)
    raw = rec.raw_descriptors(x)                                  # dlib's own metric: Euclidean < 0.6 = same
    b = PHOTOS.index("biden.jpg")
    d = np.linalg.norm(raw[:, None] - raw[None], axis=2)
    assert all(d[i, j] < 0.6 for i in range(len(PHOTOS)) for j in range(len(PHOTOS)) if b not in (i, j))
    assert all(d[b, i] > 0.6 for i in range(len(PHOTOS)) if i != b)
    # whole-photo path (detector box + sp5 + dlib chip) agrees with the crop path
    img, face = photos["obama.jpg"]
    full = rec.embed_image(img, face.xyxy)
    assert full.shape == (1, 128)
    assert cosine(full, emb[:1]).item() > 0.98


# ------------------------------------------------------------------------------------------------------------
# FFHQ -> ArcFace warp

def test_ffhq_warp_matches_cv2_and_embeddings(photos, crops):
    img, face = photos["obama.jpg"]
    _, x = crops
    rec = get_recogniser("sface")
    ff = align.align_ffhq(img, face.landmarks5, 256)
    warped = FFHQToArcFace(256)(torch.from_numpy(ff).permute(2, 0, 1)[None].float() / 255.0)
    ref = cv2.warpAffine(ff, align.ffhq_to_arcface_matrix(256), (112, 112), flags=cv2.INTER_LINEAR)
    assert np.abs(warped[0].permute(1, 2, 0).numpy() - ref / 255.0).max() < 3 / 255
    for size in (64, 1024):                                       # no prefilter / antialiased prefilter
        ffx = torch.from_numpy(align.align_ffhq(img, face.landmarks5, size)).permute(2, 0, 1)[None].float()
        ffx = (ffx / 127.5 - 1.0).requires_grad_(True)
        e = rec.embed_ffhq(ffx)
        assert cosine(e, rec.embed(x[:1]).detach()).item() > 0.9
        e.sum().backward()
        assert torch.isfinite(ffx.grad).all() and ffx.grad.abs().sum() > 0


def test_arcface_backend_on_irse50_fixture(fixtures_dir):
    """The IR-SE50 backend ([0,1] -> [-1,1], lazy models.irse) reproduces the golden Backbone embeddings."""
    path = fixtures_dir / "irse50.pt"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    ref = torch.load(path, weights_only=True, map_location="cpu")
    rec = get_recogniser("arcface-ir-se50", path=path)
    assert (rec.dim, rec.differentiable, rec.white_box) == (512, True, True)
    faces = ((ref["input_112"] + 1) / 2).requires_grad_(True)
    emb = rec.embed(faces)
    assert_close32(emb, ref["emb_112"], k=512 * 7 * 7, depth=50)   # IR-SE50's bound (test_e4e_irse.py IRSE_OUT)
    emb.sum().backward()
    assert torch.isfinite(faces.grad).all()


# ------------------------------------------------------------------------------------------------------------
# registry, errors, cache

def test_missing_files_raise_with_expected_name(monkeypatch, tmp_path):
    with pytest.raises(MissingWeightsError, match="nope.onnx"):
        get_recogniser("sface", path=tmp_path / "nope.onnx")
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    monkeypatch.setattr(registry, "data_dir", lambda: tmp_path / "share")   # isolate from an installed copy
    with pytest.raises(MissingWeightsError, match="model_ir_se50.pth"):
        get_recogniser("arcface-ir-se50")
    assert "arcface-ir-se50" not in available()
    with pytest.raises(MissingWeightsError, match="fr_feature.onnx"):
        get_recogniser("faceplugin-fr")


def test_registry_names_and_cache():
    assert {"sface", "faceplugin-fr"} <= set(available())
    assert get_recogniser("sface") is get_recogniser("sface", device="cpu")
    with pytest.raises(Exception, match="unknown face recogniser"):
        get_recogniser("facenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sface_cuda_matches_cpu(crops):
    _, x = crops
    cpu = get_recogniser("sface")
    gpu = get_recogniser("sface", device="cuda")
    with torch.no_grad():
        a = cpu.embed(x)
        b = gpu.embed(x.cuda())
    assert b.device.type == "cuda"
    assert (a - b.cpu()).abs().max() < 1e-3


def test_the_dims_table_matches_every_installed_recogniser(crops):
    from faceanonymixer.fr import DIFFERENTIABLE, DIMS, NAMES
    from faceanonymixer.fr.arcface import ArcFaceIRSE50
    from faceanonymixer.fr.dlib_resnet import DlibResNet
    from faceanonymixer.fr.faceplugin import FacePluginFR
    from faceanonymixer.fr.sface import SFace
    classes = {"sface": SFace, "dlib-resnet": DlibResNet, "faceplugin-fr": FacePluginFR,
               "arcface-ir-se50": ArcFaceIRSE50}
    assert set(DIMS) == set(NAMES) == set(classes)
    assert {n: c.dim for n, c in classes.items()} == DIMS          # the class attribute is the source
    assert {n for n, c in classes.items() if c.differentiable} == set(DIFFERENTIABLE)
    assert "sface" in available()                                  # the loss network, installed with the package
    for name in available():                                       # and the loaded networks really embed that size
        rec = get_recogniser(name)
        assert rec.dim == DIMS[name], name
        assert tuple(rec.embed(crops[1][:1]).shape) == (1, DIMS[name]), name
