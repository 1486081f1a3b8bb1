"""Robust image input/output.

``read_image(path)`` turns whatever a user hands us (JPEG with EXIF rotation, greyscale, palette, CMYK, alpha,
16-bit PNG/TIFF, huge photos) into one thing: an ``HxWx3 uint8 RGB`` array. Anything that cannot become a usable
picture raises :class:`faceanonymixer.errors.ImageError` naming the file and saying what to do.
``write_png_atomic`` never leaves a half-written file behind; ``list_images`` expands folders.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError
from .fileio import atomic_write, shown

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm",
                    ".jp2", ".avif")
MIN_SIDE = 16                 # smaller than this cannot hold a recognisable face
MAX_PIXELS = 40_000_000       # above this the photo is decoded reduced and downscaled to MAX_SIDE
MAX_SIDE = 4096               # longest side after downscaling a huge photo
BOMB_PIXELS = 178_000_000     # above this we refuse to decode at all (decompression-bomb guard; = Pillow's hard limit)
FULL_DECODE_PIXELS = MAX_PIXELS  # formats that cannot be decoded reduced (all but JPEG) are refused above this:
                                 # decoding them whole would take up to 8 bytes a pixel (16-bit RGBA)
# The decoders we open, and nothing else (Pillow would otherwise hand e.g. an EPS named .jpg to Ghostscript).
# JPEG's decoder also opens phone cameras' multi-picture JPEGs (format "MPO"). Only those this Pillow has.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "JPEG2000", "AVIF")
                if f in Image.OPEN)

_WHITE = (255, 255, 255)


def _err(path, what: str, todo: str) -> ImageError:
    return ImageError(f"{path}: {what}. {todo}")


def _to_rgb(im: Image.Image, path) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited on white (a transparent background is not black)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit greyscale: Pillow's convert() clips to 255 instead of scaling, so scale ourselves
        # (integer arithmetic: no float64 copy of a large image).
        a = np.asarray(im)
        if mode.startswith("I;16") or a.max() > 255:
            a = np.clip(a, 0, 65535).astype(np.uint32)
            a = ((a * 255 + 32767) // 65535).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[:, :, None], 3, axis=2), "RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.max() <= 1.0:          # float images are usually in [0, 1]
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[:, :, None], 3, axis=2), "RGB")
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:  # colour-managed conversion when the file says how; naive conversion otherwise
            try:
                import io  # rare path (CMYK with a profile): kept out of every other read

                from PIL import ImageCms
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except Exception as e:  # broken profile: fall back, the picture is still usable
                log.debug("%s: CMYK ICC conversion failed (%s); using naive conversion", path, e)
        return im.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) \
        or (mode in ("L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
               min_side: int = MIN_SIDE) -> np.ndarray:
    """Read any photo as an ``HxWx3 uint8 RGB`` array, upright (EXIF orientation applied).

    Photos over ``max_pixels`` are decoded at reduced size where the format allows and downscaled so their
    longest side is ``max_side`` (logged). Raises ImageError for missing, non-image, truncated, tiny
    (< ``min_side`` px) or absurdly large (> BOMB_PIXELS, a decompression bomb) files.
    """
    path = Path(path)
    where = shown(path)
    if not path.exists():
        raise _err(where, "file not found", "Check the path.")
    if path.is_dir():
        raise _err(where, "is a folder, not an image file", "Pass the image files, or use a command that takes folders.")
    if not path.is_file():   # a FIFO would block the read, a device (/dev/zero) never ends
        raise _err(where, "is not a regular file (a FIFO, socket or device)", "Pass image files only.")
    try:
        with warnings.catch_warnings():
            # Our limits below replace Pillow's warning (its hard error, at 2x its limit, is turned into ours).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise _err(where, f"is over the safety limit for image size, a possible decompression bomb ({e})",
                   f"Downscale it to at most {max_side} px on the long side first.") from None
    except PermissionError:
        raise _err(where, "permission denied", "Make the file readable.") from None
    except Image.UnidentifiedImageError:
        raise _err(where, f"not a readable image in a supported format ({', '.join(FORMATS)})",
                   "Is it really an image? Convert it to JPEG or PNG and try again.") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _err(where, f"not a readable image ({type(e).__name__}: {shown(e)})",
                   "Is it really an image? Convert it to JPEG or PNG and try again.") from None
    with im:
        w, h = im.size
        if w * h > BOMB_PIXELS or (im.format not in ("JPEG", "MPO") and w * h > FULL_DECODE_PIXELS):
            raise _err(where, f"claims to be {w}x{h} px ({w * h / 1e6:.0f} Mpx), over the "
                             f"{(BOMB_PIXELS if im.format in ('JPEG', 'MPO') else FULL_DECODE_PIXELS) / 1e6:.0f} Mpx "
                             f"safety limit for {im.format} (possible decompression bomb)",
                       f"Downscale it to at most {max_side} px on the long side first.")
        if min(w, h) < min_side:
            raise _err(where, f"image is only {w}x{h} px", f"Use a photo at least {min_side} px on each side "
                                                          "(faces need ~100 px for good results).")
        huge = w * h > max_pixels
        if huge and im.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: a 100 Mpx JPEG never gets fully decoded.
            scale = max_side / max(w, h)
            im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        try:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF / multi-page TIFF: first frame
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im, path)
        except ImageError:
            raise
        except (OSError, ValueError, SyntaxError, MemoryError) as e:
            raise _err(where, f"the image data is damaged or truncated ({type(e).__name__}: {shown(e)})",
                       "Re-export or re-download the file.") from None
        if huge:
            rw, rh = rgb.size
            s = max_side / max(rw, rh)
            if s < 1:
                rgb = rgb.resize((max(1, round(rw * s)), max(1, round(rh * s))), Image.LANCZOS, reducing_gap=3.0)
            log.warning("%s: %dx%d px (%.0f Mpx) is very large; downscaled to %dx%d for processing",
                        path, w, h, w * h / 1e6, *rgb.size)
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _err(where, f"could not be converted to RGB (got array {arr.shape})", "Convert it to JPEG or PNG.")
    return np.ascontiguousarray(arr)


def write_png_atomic(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an ``HxWx3`` (or ``HxW``/``HxWx4``) uint8 array as PNG: temp file in the same folder, then rename,
    so readers never see a half-written file. Creates the parent folder. Returns the path."""
    path = Path(path)
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise ValueError(f"write_png_atomic: expected uint8, got {a.dtype} "
                         "(convert with np.clip(x, 0, 255).astype(np.uint8))")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"write_png_atomic: expected HxW, HxWx3 or HxWx4, got shape {a.shape}")
    return atomic_write(path, lambda f: Image.fromarray(np.ascontiguousarray(a)).save(f, format="PNG"))


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(dir_or_files: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False,
                allow_empty: bool = False) -> list[Path]:
    """Image files from a folder (sorted; hidden files skipped; ``recursive`` descends), a single file, or a list
    of files and folders (order kept, folders expanded in place). Explicitly named files are kept whatever their
    extension (``read_image`` will say if they are not images). Raises ImageError for a missing path, or when
    nothing is found unless ``allow_empty``."""
    if isinstance(dir_or_files, (str, os.PathLike)):
        items = [dir_or_files]
    else:
        items = list(dir_or_files)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            # Not only regular files: a FIFO, device or broken link named like an image is kept so that
            # read_image lists it as a failed item instead of it vanishing silently.
            found = sorted(q for q in it if not q.is_dir() and _is_image_name(q)
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            out.extend(found)
        elif p.exists() or p.is_symlink():
            out.append(p)                  # read_image names what is wrong with a non-regular file
        else:
            raise ImageError(f"{shown(p)}: no such file or folder. Check the path.")
    if not out and not allow_empty:
        where = ", ".join(shown(i) for i in items) or "(nothing given)"
        raise ImageError(f"no images found in {where}. Expected files ending in {', '.join(IMAGE_EXTENSIONS[:6])}, ...")
    return out
