"""images.py (robust reading, atomic writing, listing) and align.py (YuNet detection, ArcFace/FFHQ alignment,
fixed FFHQ->ArcFace warp) on files built in tmp_path and on the installed sample photos."""
from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from faceanonymixer import align as A
from faceanonymixer.errors import ImageError, NoFaceError, SeveralFacesError
from faceanonymixer.images import list_images, read_image, write_png_atomic
from faceanonymixer.registry import data_dir


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _gradient(h=120, w=160) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def _samples() -> list[Path]:
    d = data_dir() / "samples"
    files = sorted(d.glob("*.jpg")) if d.is_dir() else []
    if not files:
        pytest.skip(f"sample photos not found in {d} (installed by `make install`)")
    return files


@pytest.fixture(scope="module")
def photos():
    """[(path, rgb, face)] for every sample photo, sorted by name (biden, obama, obama2, obama3, partial faces)."""
    out = []
    for p in _samples():
        img = read_image(p)
        out.append((p, img, A.largest_face(img, source=p)))
    return out


def _expect_image_error(path, *words):
    with pytest.raises(ImageError) as ei:
        read_image(path)
    msg = str(ei.value)
    assert Path(path).name in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# ---------------------------------------------------------------------------------------------------------
# images.py: bad files
# ---------------------------------------------------------------------------------------------------------
def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    _expect_image_error(p, "not a readable image", "convert")


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    Image.fromarray(_gradient(200, 200)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect_image_error(p, "truncated")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _expect_image_error(p)


def test_tiny_image(tmp_path):
    p = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p)
    _expect_image_error(p, "1x1")


def test_missing_file_and_folder(tmp_path):
    _expect_image_error(tmp_path / "nope.jpg", "not found")
    (tmp_path / "dir.jpg").mkdir()
    _expect_image_error(tmp_path / "dir.jpg", "folder")


def test_decompression_bomb_refused(tmp_path):
    """A PNG whose header claims 30000x30000 px is refused before any decoding."""
    p = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    data = bytearray(p.read_bytes())
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", 30000, 30000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    p.write_bytes(bytes(data))
    _expect_image_error(p, "decompression bomb", "downscale")


def test_huge_image_downscaled(tmp_path, caplog):
    p = tmp_path / "big.png"
    Image.fromarray(_gradient(300, 400)).save(p)
    with caplog.at_level(logging.WARNING, logger="faceanonymixer.images"):
        img = read_image(p, max_pixels=100_000, max_side=200)
    assert img.shape == (150, 200, 3) and img.dtype == np.uint8
    assert "downscaled" in caplog.text and "big.png" in caplog.text
    # a huge JPEG takes the draft (reduced decoding) path
    pj = tmp_path / "big.jpg"
    Image.fromarray(_gradient(800, 1000)).save(pj, quality=90)
    img = read_image(pj, max_pixels=100_000, max_side=250)
    assert max(img.shape[:2]) == 250 and img.shape[2] == 3


# ---------------------------------------------------------------------------------------------------------
# images.py: unusual but valid files become RGB uint8
# ---------------------------------------------------------------------------------------------------------
def test_grayscale(tmp_path):
    g = _gradient()[:, :, 0]
    p = tmp_path / "grey.png"
    Image.fromarray(g, "L").save(p)
    img = read_image(p)
    assert img.shape == g.shape + (3,) and img.dtype == np.uint8
    assert np.array_equal(img[:, :, 0], g) and np.array_equal(img[:, :, 1], g) and np.array_equal(img[:, :, 2], g)


def test_cmyk_jpeg(tmp_path):
    rgb = _gradient()
    p = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=98)
    assert Image.open(p).mode == "CMYK"
    img = read_image(p)
    assert img.shape == rgb.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - rgb).mean() < 6


def test_16bit_png_and_tiff(tmp_path):
    rng = np.random.default_rng(0)
    g16 = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, size=(40, 50, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    cv2.imwrite(str(tmp_path / "g16.tif"), g16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])   # cv2 writes BGR
    cv2.imwrite(str(tmp_path / "rgb16.tif"), rgb16[:, :, ::-1])
    for name in ("g16.png", "g16.tif"):
        img = read_image(tmp_path / name)
        assert img.shape == (40, 50, 3) and img.dtype == np.uint8
        # scaled (not clipped at 255): matches value/257 to one level
        assert np.abs(img[:, :, 0].astype(float) - g16 / 257.0).max() <= 1.0, name
    for name in ("rgb16.png", "rgb16.tif"):
        img = read_image(tmp_path / name)
        assert img.shape == (40, 50, 3)
        assert np.abs(img.astype(float) - rgb16 / 257.0).max() <= 1.0, name


def test_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200            # red where opaque
    rgba[:, :16, 3] = 255         # left half opaque, right half fully transparent
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(p)
    img = read_image(p)
    assert img.shape == (32, 32, 3)
    assert (img[:, :16] == [200, 0, 0]).all()
    assert (img[:, 16:] == 255).all()
    # palette image with a transparent index
    pal = Image.fromarray(rgba, "RGBA").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.info["transparency"] = pal.getpixel((20, 5))
    pp = tmp_path / "pal.png"
    pal.save(pp, transparency=pal.info["transparency"])
    img = read_image(pp)
    assert (img[:, 16:] == 255).all()


def test_exif_rotation(tmp_path):
    """Stored 60 wide x 40 high with a red block at the stored top-left; orientation 6 (rotate 90 CW to view)
    -> read as 40 wide x 60 high with the block at the top-right."""
    stored = np.full((40, 60, 3), 255, np.uint8)
    stored[:10, :10] = [255, 0, 0]
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    img = read_image(p)
    assert img.shape == (60, 40, 3)
    tr = img[:10, -10:].reshape(-1, 3).mean(0)
    tl = img[:10, :10].reshape(-1, 3).mean(0)
    assert tr[0] > 200 and tr[1] < 60, tr
    assert tl.min() > 200, tl


# ---------------------------------------------------------------------------------------------------------
# images.py: writing and listing
# ---------------------------------------------------------------------------------------------------------
def test_write_png_atomic(tmp_path):
    rgb = _gradient()
    out = write_png_atomic(tmp_path / "sub" / "x.png", rgb)
    assert out.is_file() and np.array_equal(read_image(out), rgb)
    assert [q.name for q in out.parent.iterdir()] == ["x.png"]   # no temp file left
    with pytest.raises(ValueError):
        write_png_atomic(tmp_path / "bad.png", rgb.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []


def test_list_images(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.PNG", "b.jpg", "d.jpg"]
    assert [p.name for p in list_images([tmp_path / "c.txt", tmp_path / "sub"])] == ["c.txt", "d.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images"):
        list_images(tmp_path / "empty")
    assert list_images(tmp_path / "empty", allow_empty=True) == []
    with pytest.raises(ImageError, match="missing.jpg"):
        list_images([tmp_path / "missing.jpg"])


# ---------------------------------------------------------------------------------------------------------
# align.py: detection
# ---------------------------------------------------------------------------------------------------------
def test_no_face_raises_naming_file(tmp_path):
    p = tmp_path / "gradient.png"
    Image.fromarray(_gradient(240, 320)).save(p)
    img = read_image(p)
    assert A.detect(img) == []
    with pytest.raises(NoFaceError, match="gradient.png"):
        A.largest_face(img, source=p)
    batch = A.Aligner()([p])
    assert batch.crops.shape == (0, 112, 112, 3)
    assert len(batch.errors) == 1 and batch.errors[0][0] == 0 and "gradient.png" in batch.errors[0][2]


def test_detect_sample_photos(photos):
    for path, img, _ in photos:
        faces = A.detect(img)
        assert len(faces) == 1, (path, len(faces))
        f = faces[0]
        lm = f.landmarks5
        assert lm.shape == (5, 2) and f.score > 0.8
        x, y, w, h = f.box
        # every landmark inside the box (partial faces may overhang the photo, not their own box)
        assert np.all(lm[:, 0] > x) and np.all(lm[:, 0] < x + w) and np.all(lm[:, 1] > y) and np.all(lm[:, 1] < y + h)
        # documented order: right eye (image left), left eye, nose, right mouth (image left), left mouth
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], (path, lm)
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1]), (path, lm)
        iod = np.linalg.norm(lm[1] - lm[0])
        assert 0.2 * w < iod < 0.7 * w, (path, iod, w)


def test_detection_any_size(photos):
    """Landmarks come back in the caller's coordinates whether the detector downscaled (large), padded (small)
    or did neither."""
    path, img, face = photos[1]
    big = cv2.resize(img, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    fb = A.largest_face(big, source="big")
    assert np.abs(fb.landmarks5 / 2.0 - face.landmarks5).max() < 6, (fb.landmarks5 / 2, face.landmarks5)
    crop = A.align_arcface(img, face.landmarks5)
    for s in (64, 112, 300):
        c = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA if s < 112 else cv2.INTER_CUBIC)
        f = A.largest_face(c, source=f"crop{s}")
        eyes = f.landmarks5[:2] * 112.0 / s
        assert np.linalg.norm(eyes - A.ARCFACE_TEMPLATE[:2], axis=1).max() < 9, (s, eyes)


def test_select_face_center_vs_largest():
    def face(x, y, w, h):
        return A.Face(np.array([x, y, w, h], np.float32), np.zeros((5, 2), np.float32), 0.9)
    bystander = face(-20, -30, 120, 150)     # bigger, cut by the border
    subject = face(80, 70, 90, 110)          # contains the centre of a 250x250 image
    assert A.select_face([bystander, subject], (250, 250), "largest") is bystander
    assert A.select_face([bystander, subject], (250, 250), "center") is subject
    off = face(0, 0, 50, 50)
    near = face(140, 140, 50, 50)
    assert A.select_face([off, near], (250, 250), "center") is near
    # 'single': a rival face of similar size is an error naming the item; a small background face is not
    with pytest.raises(SeveralFacesError, match=r"group\.jpg: 2 faces of similar size"):
        A.select_face([bystander, subject], (250, 250), "single", source="group.jpg")
    background = face(200, 10, 40, 40)       # 1,600 px^2 < 0.25 * 9,900 px^2 of the subject
    assert A.select_face([background, subject], (250, 250), "single", source="x.jpg") is subject


def test_two_people_photo_single_refuses_largest_picks(photos, tmp_path):
    """A real photo of two people side by side: 'single' (the pipeline default) names the file, 'largest' picks one."""
    by_name = {Path(p).stem: img for p, img, _ in photos}
    a, b = by_name["obama"], by_name["biden"]
    h = min(a.shape[0], b.shape[0])
    two = np.concatenate([a[:h], b[:h]], axis=1)
    Image.fromarray(two).save(tmp_path / "two.png")
    with pytest.raises(SeveralFacesError, match="two.png"):
        A.Aligner("ffhq", size=64, select="single").align_one(tmp_path / "two.png")
    crop, face = A.Aligner("ffhq", size=64, select="largest").align_one(tmp_path / "two.png")
    assert crop.shape == (64, 64, 3)


# ---------------------------------------------------------------------------------------------------------
# align.py: geometry
# ---------------------------------------------------------------------------------------------------------
def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, sc, t = 0.3, 1.7, np.array([12.0, -5.0])
    R = sc * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ R.T + t
    M = A.umeyama_similarity(src, dst)
    assert np.allclose(M[:, :2], R, atol=1e-9) and np.allclose(M[:, 2], t, atol=1e-9)
    assert np.allclose(A.transform_points(A.invert_affine(M), dst), src, atol=1e-9)


def test_arcface_warp_puts_eyes_on_template(photos):
    errs = []
    for path, img, face in photos:
        crop = A.align_arcface(img, face.landmarks5)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        re = A.largest_face(crop, source=f"{path.name} crop")
        e = np.linalg.norm(re.landmarks5[:2] - A.ARCFACE_TEMPLATE[:2], axis=1)
        errs.append(e)
        assert e.max() < 8.0, (path, re.landmarks5[:2])       # 8 px = 0.23 x the template's eye distance
    assert np.mean(errs) < 4.5, errs


def test_ffhq_alignment_consistent(photos):
    """FFHQ crops of different photos put the eyes at the same place (the canonical positions)."""
    size = 256
    canon = A.ffhq_landmarks(size)
    eyes = []
    for path, img, face in photos:
        out = A.align_ffhq(img, face.landmarks5, size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        re = A.largest_face(out, source=f"{path.name} ffhq")
        eyes.append(re.landmarks5[:2])
        assert np.linalg.norm(re.landmarks5[:2] - canon[:2], axis=1).max() < 14, (path, re.landmarks5[:2], canon[:2])
    eyes = np.stack(eyes)
    assert eyes.std(axis=0).max() < 6, eyes
    # eyes level and symmetric about the vertical centre line
    assert abs(canon[0, 1] - canon[1, 1]) < 0.1 and abs((canon[0, 0] + canon[1, 0]) / 2 - (size - 1) / 2) < 1.0


def _ffhq_reference(img, lm5, output_size):
    """Literal port of NVlabs ffhq-dataset recreate_aligned_images (PIL + scipy), 5-point version."""
    ndimage = pytest.importorskip("scipy.ndimage")
    transform_size = 4 * output_size
    quad, qsize = A.ffhq_quad(lm5)
    img = Image.fromarray(img)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
            int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]),
            min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
           int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0),
           max(pad[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                          1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
        blur = qsize * 0.02
        img += (ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
        quad += pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    return np.asarray(img.resize((output_size, output_size), Image.LANCZOS))


def test_ffhq_matches_reference_recipe():
    """Same picture as the original FFHQ script, including the reflect-padded, blurred border (partial face)."""
    files = {p.name: p for p in _samples()}
    for name in ("obama.jpg", "obama_partial_face.jpg"):
        if name not in files:
            pytest.skip(f"sample {name} missing")
        img = read_image(files[name])
        lm = A.largest_face(img, source=name).landmarks5
        ours = A.align_ffhq(img, lm, 128).astype(np.float64)
        ref = _ffhq_reference(img, lm, 128).astype(np.float64)
        assert np.abs(ours - ref).mean() < 2.0, name
        if name == "obama_partial_face.jpg":   # the quad leaves the photo: padded, not black
            assert ours[:, :8].mean() > 40


def test_ffhq_to_arcface_matrix_consistency(photos):
    """align_ffhq then the fixed warp == align_arcface, up to resampling, for landmarks that are a similarity image
    of the template (exact case); the torch warp equals cv2.warpAffine and is differentiable."""
    size = 256
    M_fa = A.ffhq_to_arcface_matrix(size)
    assert M_fa.shape == (2, 3)
    # the canonical FFHQ landmarks land exactly on the ArcFace template
    assert np.allclose(A.transform_points(M_fa, A.ffhq_landmarks(size)), A.ARCFACE_TEMPLATE, atol=1e-9)
    for path, img, face in photos[:3]:
        lm_sim = A.transform_points(A.invert_affine(A.arcface_matrix(face.landmarks5)), A.ARCFACE_TEMPLATE)
        arc = A.align_arcface(img, lm_sim).astype(np.float64)
        ffhq = A.align_ffhq(img, lm_sim, size)
        via = cv2.warpAffine(ffhq, M_fa, (112, 112), flags=cv2.INTER_LINEAR).astype(np.float64)
        assert np.abs(via - arc).mean() < 2.5, path     # measured ~1 (two resamplings)
        x = torch.from_numpy(ffhq).permute(2, 0, 1)[None].float()
        t = A.warp_affine_torch(x, M_fa, 112)[0].permute(1, 2, 0).numpy()
        assert np.abs(t - via).mean() < 1.0, path
        # real (non-similar) landmarks: still close
        arc_real = A.align_arcface(img, face.landmarks5).astype(np.float64)
        via_real = cv2.warpAffine(A.align_ffhq(img, face.landmarks5, size), M_fa, (112, 112)).astype(np.float64)
        assert np.abs(via_real - arc_real).mean() < 15.0, path   # measured ~9 (landmark non-similarity)


def test_warp_affine_torch_matches_cv2_and_has_gradients():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (96, 80, 3)).astype(np.float32), (0, 0), 2.0)
    ang = 0.2
    M = np.array([[1.3 * np.cos(ang), -1.3 * np.sin(ang), 5.0], [1.3 * np.sin(ang), 1.3 * np.cos(ang), -8.0]])
    ref = cv2.warpAffine(img, M, (64, 72), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].clone().requires_grad_(True)
    out = A.warp_affine_torch(x, M, (72, 64))
    assert out.shape == (1, 3, 72, 64)
    o = out[0].permute(1, 2, 0).detach().numpy()
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(o[inner] - ref[inner]).max() < 0.05
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # batch of matrices and the anti-aliased (shrinking) path run and stay in range
    xs = torch.rand(2, 3, 512, 512)
    y = A.warp_affine_torch(xs, np.stack([A.ffhq_to_arcface_matrix(512)] * 2), 112)
    assert y.shape == (2, 3, 112, 112) and float(y.max()) <= 1.0 + 1e-6


def test_aligner_batch(photos, tmp_path):
    grad = tmp_path / "flat.png"
    Image.fromarray(_gradient()).save(grad)
    paths = [photos[0][0], grad, photos[1][0]]
    res = A.Aligner()(paths)
    assert res.index == [0, 2] and res.crops.shape == (2, 112, 112, 3)
    assert len(res.errors) == 1 and res.errors[0][0] == 1 and "flat.png" in res.errors[0][2]
    t = res.to_tensor()
    assert t.shape == (2, 3, 112, 112) and t.dtype == torch.float32 and 0 <= float(t.min()) and float(t.max()) <= 1
    ff = A.Aligner(mode="ffhq", size=64)([photos[0][1]])
    assert ff.crops.shape == (1, 64, 64, 3) and not ff.errors
