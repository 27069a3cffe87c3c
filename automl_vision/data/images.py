"""Decoding one image safely: EXIF orientation, odd modes, bombs, very large files.

Every decoder in the project goes through :func:`decode`, so training, prediction and
the dashboard see the same pixels.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A decompression bomb is refused before its pixels are decoded.
MAX_PIXELS = 89_478_485  # PIL's own default warning threshold (about 9459 x 9459)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(Exception):
    """The file is not an image we can use; the message is the reason for the report."""


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
        if self.mode.startswith("I;16") or self.mode in ("I", "F"):
            out.append(f"{'16-bit' if self.mode.startswith('I;16') else self.mode + '-mode'} image scaled to 8 bits")
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
    """Read only the header of ``path``. Raises ImageDecodeError for non-images and bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                try:
                    orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
                except Exception:  # a broken EXIF block is not worth refusing the image for
                    orientation = 1
                info = ImageInfo(img.mode, img.size, img.format or "?", int(getattr(img, "n_frames", 1) or 1), orientation)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc=exc) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (unrecognised format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"unreadable: {exc}") from exc
    w, h = info.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise _bomb(w * h)
    return info


def is_grey_mode(mode: str) -> bool:
    return mode in GREY_MODES


def _to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, np.ndarray):
                img = Image.fromarray(np.ascontiguousarray(source))
                return _finish(img, image_size, in_chans)
            if isinstance(source, Image.Image):
                return _finish(source, image_size, in_chans)
            with Image.open(source) as img:
                if img.size[0] * img.size[1] > MAX_PIXELS:
                    raise _bomb(img.size[0] * img.size[1])
                if img.format == "JPEG":
                    # decode at a reduced scale, still at least twice the target size
                    img.draft(img.mode if img.mode in ("L", "RGB") else None, (image_size * 2, image_size * 2))
                img.load()
                return _finish(img, image_size, in_chans)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc=exc) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (unrecognised format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc


def _finish(img: Image.Image, image_size: int, in_chans: int) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    img = _to_mode(img, in_chans)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
