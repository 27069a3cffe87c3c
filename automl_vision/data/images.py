"""Decoding one image safely: EXIF orientation, odd modes, bombs, very large files.

Every decoder in the project goes through :func:`decode`, so training, prediction and
the dashboard see the same pixels. Whatever a damaged file makes the decoder raise, the
caller gets :class:`ImageDecodeError` with the reason for the data report.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A decompression bomb is refused from its header, before its pixels are decoded.
# Pillow's own default warning threshold (about 9459 x 9459); lower would refuse the full-size
# photos of "64 MP" phone cameras (9248 x 6936 = 64.1 M pixels).
MAX_PIXELS = 89_478_485
# Few pixels in one very long line are a bomb too: decoding a 1 x 20,000,000 PNG header of
# 69 bytes costs about 500 MB (Pillow keeps a row per line). 65,535 is the longest side JPEG
# can store; no camera or scanner writes a longer one.
MAX_SIDE = 65_535
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(Exception):
    """The file is not an image we can use; the message is the reason for the report."""


def _check_size(size: tuple[int, int]) -> None:
    """Refuse an empty image or a bomb from the size its header declares."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise _bomb(w * h)
    if max(w, h) > MAX_SIDE:
        raise ImageDecodeError(f"decompression bomb refused ({w}x{h}: a side longer than {MAX_SIDE} pixels)")


@contextmanager
def _decoder_errors():
    """Turn whatever the decoder raises on a bad file into :class:`ImageDecodeError`.

    This is the decode boundary, so it catches ``Exception``: Pillow's format plugins raise
    ``IndexError``, ``TypeError``, ``KeyError`` or ``struct.error`` (not only ``OSError``) on
    truncated animated GIFs and multi-page TIFFs, and one half-downloaded file must not stop a
    search. ``MemoryError`` passes (the caller says "out of memory", the file may be fine) and
    so does ``KeyboardInterrupt`` (a ``BaseException``): Ctrl-C still stops the scan.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow's "Corrupt EXIF data" and the like: a file that still fails is reported anyway
            warnings.simplefilter("ignore", UserWarning)
            yield
    except (ImageDecodeError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc=exc) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (unrecognised format)") from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated image ({detail})") from exc


def _bomb(pixels: int | None = None, exc: Exception | None = None) -> ImageDecodeError:
    """One wording for a refused bomb, whichever check (ours, Pillow's warning or error) saw it.

    Pillow's warning can be swallowed by Python's once-per-location warning registry, so the
    same file may be caught by a different check on a second pass; the report must not change.
    """
    if pixels is None and exc is not None:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
    size = f"{pixels} pixels" if pixels is not None else "too many pixels"
    return ImageDecodeError(f"decompression bomb refused ({size} > {MAX_PIXELS})")


def probe(path: Path) -> tuple[str, tuple[int, int], str]:
    """Read only the header: (mode, (width, height), format). Raises ImageDecodeError."""
    info = inspect(path)
    return info.mode, info.size, info.format


# Extensions that say which format a file holds; a mismatch is reported, not refused.
_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "GIF": {".gif"},
    "BMP": {".bmp", ".dib"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "MPO": {".jpg", ".jpeg", ".mpo"},
}
# Above this many pixels an image is "very large": JPEGs are decoded at a reduced scale.
LARGE_PIXELS = 4096 * 4096
_ORIENTATION = 0x0112


@dataclass
class ImageInfo:
    """What the header of one image file says, read without decoding its pixels."""

    mode: str
    size: tuple[int, int]
    format: str
    frames: int = 1
    orientation: int = 1  # EXIF orientation tag; 1 is upright
    depth: str | None = None  # how a 16-bit, 32-bit or float image becomes 8 bits (see _deep_scaling)

    def fixes(self, path: Path | None = None) -> list[str]:
        """What :func:`decode` does to this image beyond a plain resize, for the data report."""
        out = []
        w, h = self.size
        if path is not None:
            ext = path.suffix.lower()
            if not ext:
                out.append(f"no file extension: read as {self.format}")
            elif ext not in _EXTENSIONS.get(self.format, {ext}):
                out.append(f"extension {ext} but the content is {self.format}: read as {self.format}")
        if self.orientation not in (0, 1):
            out.append(f"EXIF orientation {self.orientation} applied to the pixels")
        if self.frames > 1:
            out.append(f"animated ({self.frames} frames): first frame used")
        if self.depth:
            out.append(self.depth)
        elif self.mode == "CMYK":
            out.append("CMYK converted to RGB")
        elif self.mode in ("RGBA", "LA", "PA"):
            out.append("transparency composited on white")
        elif self.mode == "P":
            out.append("palette image converted")
        if w * h > LARGE_PIXELS:
            how = "decoded at reduced scale (JPEG draft mode)" if self.format in ("JPEG", "MPO") else "downscaled"
            out.append(f"very large ({w}x{h}): {how}")
        elif min(w, h) < 8:
            out.append(f"tiny ({w}x{h}): upscaled")
        return out


def inspect(path: Path) -> ImageInfo:
    """Read the header of ``path`` (and, for 32-bit and float images, their value range).

    Raises ImageDecodeError for non-images, damaged files and bombs.
    """
    with _decoder_errors(), Image.open(path) as img:
        _check_size(img.size)
        try:
            orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block is not worth refusing the image for
            orientation = 1
        depth = _deep_scaling(img)[2] if _is_deep(img.mode) else None
        return ImageInfo(img.mode, img.size, img.format or "?", int(getattr(img, "n_frames", 1) or 1), orientation,
                         depth)


def is_grey_mode(mode: str) -> bool:
    return mode in GREY_MODES


def _is_deep(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _deep_scaling(img: Image.Image) -> tuple[float, float, str]:
    """How a 16-bit, 32-bit integer or float image becomes 8 bits: (black, white, what the report says).

    16-bit images span 0..65535. Others are scaled by the range their values actually take:
    a float image in 0..1 is multiplied by 255 (not read as 0..255, which would make it black).
    """
    if img.mode.startswith("I;16"):
        return 0.0, 65535.0, "16-bit image scaled to 8 bits"
    arr = np.asarray(img, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    kind = "float" if img.mode == "F" else "32-bit integer"
    for top, how in ((1.0, "scaled x255 to 8 bits"), (255.0, "read as 8 bits"), (65535.0, "scaled to 8 bits as 16-bit")):
        if lo >= 0 and hi <= top:
            return 0.0, top, f"{kind} image with values in 0..{top:g} {how}"
    return lo, max(hi, lo + 1), f"{kind} image with values in {lo:g}..{hi:g} stretched to 8 bits"


def _to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    mode = img.mode
    if _is_deep(mode):
        black, white, _ = _deep_scaling(img)
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=black)
        img = Image.fromarray(np.clip((arr - black) / (white - black) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if in_chans == 1:
        return img if mode == "L" else img.convert("L")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def decode(source: Path | np.ndarray | Image.Image, image_size: int, in_chans: int) -> np.ndarray:
    """Decode ``source`` to a square ``uint8`` array ``(image_size, image_size, in_chans)``.

    JPEGs are decoded in draft mode near the target size, so a very large photo is never
    fully decoded; EXIF orientation is applied; 16-bit, palette, CMYK and alpha images
    are converted; animated images use their first frame. Raises ImageDecodeError.
    """
    with _decoder_errors():
        if isinstance(source, np.ndarray):
            return _finish(Image.fromarray(np.ascontiguousarray(source)), image_size, in_chans)
        if isinstance(source, Image.Image):
            return _finish(source, image_size, in_chans)
        with Image.open(source) as img:
            _check_size(img.size)
            if img.format == "JPEG":
                # decode at a reduced scale, still at least twice the target size
                img.draft(img.mode if img.mode in ("L", "RGB") else None, (image_size * 2, image_size * 2))
            img.load()
            return _finish(img, image_size, in_chans)


def _finish(img: Image.Image, image_size: int, in_chans: int) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    img = _to_mode(img, in_chans)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
