"""fr/attributes.py + eval/soft_biometrics.py: FacePlugin's SSR-Net gender/age nets in our ONNX executor match
onnxruntime, the stagewise merge matches the package's formula, and the agreement numbers on real photos."""
import numpy as np
import pytest
import torch

from faceanonymixer import align, registry
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.eval import soft_biometrics as sb
from faceanonymixer.fr import attributes
from faceanonymixer.images import read_image
from faceanonymixer.models.onnx_graph import OnnxGraphModule
from faceanonymixer.tensors import from_uint8

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]


def _path(name):
    try:
        return registry.locate(name)
    except FaceAnonyMixerError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", ["faceplugin-gender", "faceplugin-age"])
def test_executor_matches_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    path = _path(name)
    net = OnnxGraphModule.from_onnx(path, outputs=attributes.OUTPUTS)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ours = net(torch.from_numpy(x))                 # batch 3 (the graph declares batch 1)
    for b in range(3):
        ref = sess.run(attributes.OUTPUTS, {"input": x[b:b + 1]})
        for o, r in zip(ours, ref):
            np.testing.assert_allclose(o[b:b + 1].numpy(), r, atol=1e-5, rtol=1e-4)


def test_ssr_merge_matches_the_package_formula():
    # the package's mergeAge(x, 3, 3, 3, 1, 1) written out for one made-up output vector x (21 numbers)
    x = np.random.default_rng(1).uniform(0.05, 0.9, 21)
    a = sum((i + x[12 + i]) * x[i] for i in range(3)) / (3 * (1 + x[9]))
    b = sum((i + x[15 + i]) * x[3 + i] for i in range(3)) / (3 * (1 + x[9])) / (3 * (1 + x[10]))
    c = sum((i + x[18 + i]) * x[6 + i] for i in range(3)) / (3 * (1 + x[9])) / (3 * (1 + x[10])) / (3 * (1 + x[11]))
    want = (a + b + c) * 101
    t = torch.tensor(x, dtype=torch.float64)[None]
    outs = [t[:, 0:3], t[:, 3:6], t[:, 6:9], t[:, 9:10], t[:, 10:11], t[:, 11:12], t[:, 12:15], t[:, 15:18],
            t[:, 18:21]]
    assert float(attributes.ssr_merge(outs, 101.0)[0]) == pytest.approx(want, rel=1e-9)


def test_executor_rejects_a_missing_output_name():
    with pytest.raises(ValueError, match="not graph outputs"):
        OnnxGraphModule.from_onnx(_path("faceplugin-gender"), outputs=["nope"])
    with pytest.raises(ValueError, match="exactly one graph output"):
        OnnxGraphModule.from_onnx(_path("faceplugin-gender"))


@pytest.fixture(scope="module")
def samples():
    _path("faceplugin-gender")
    _path("faceplugin-age")
    d = registry.data_dir() / "samples"
    files = [d / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
    if not all(f.is_file() for f in files):
        pytest.skip(f"sample photos not installed in {d} (make install)")
    crops = []
    for f in files:
        img = read_image(f)
        crops.append(align.align_ffhq(img, align.largest_face(img, source=str(f)).landmarks5, 128))
    return from_uint8(np.stack(crops)), np.array([0, 0, 0, 1])


def test_estimates_on_real_photos(samples):
    x, person = samples
    est = attributes.SoftBiometrics()
    male, age = est.predict_ffhq(x)
    assert male.shape == (4,) and age.shape == (4,)
    assert (male > 0.5).all(), male          # Obama x3, Biden: all men
    assert ((age > 25) & (age < 90)).all(), age
    # resolution of the FFHQ crop barely matters (the nets see 64 x 64)
    m64, a64 = est.predict_ffhq(torch.nn.functional.interpolate(x, size=64, mode="bilinear", antialias=True))
    assert ((m64 > 0.5) == (male > 0.5)).all() and (a64 - age).abs().max() < 10


def test_leakage_numbers(samples):
    x, person = samples
    est = attributes.SoftBiometrics()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = sb.leakage(est, x, {"same": x.clone(), "noise": noise}, person)
    assert out["variants"]["same"]["gender_agreement"] == 1.0
    assert out["variants"]["same"]["age_abs_diff"] == pytest.approx(0.0, abs=1e-4)
    assert out["variants"]["same"]["n"] == 4
    assert out["original_same_person"]["n"] == 3               # the three Obama pairs
    assert out["original_other_person"]["n"] == 4
    assert out["variants"]["noise"]["age_abs_diff"] > 0.5
    assert sb.pairs_same_person(np.array([0, 1, 0, 1])).tolist() == [[0, 2], [1, 3]]
    assert sb.pairs_other_person(np.array([0, 0, 1])).tolist() == [[0, 2], [1, 2], [2, 0]]
