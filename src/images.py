"""Reading photos robustly, whatever their format, mode or extension says.

Every failure becomes an :class:`ImageLoadError` whose message is one line naming the file and the reason.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow's default limit (~89 Mpx warns, 2x that raises). We raise at the warning level: a landmark photo
# never needs 89 megapixels, and a "bomb" with a huge declared size must not eat the machine's memory.
MAX_IMAGE_PIXELS = 89_478_485

# Files that are never photos; everything else is tried and reported when it cannot be decoded.
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"}
NON_IMAGE_SUFFIXES = {".txt", ".md", ".json", ".csv", ".xmp", ".ini", ".db", ".py", ".zip", ".pt", ".npz"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}


class ImageLoadError(ValueError):
    """A file that cannot be used as a photo. ``str(err)`` is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"{self.path}: {self.reason}")


def is_candidate_image(path: str | os.PathLike) -> bool:
    """Whether a file in a data folder should be treated as a photo (hidden files and junk are not)."""
    name = os.path.basename(os.fspath(path))
    if name.startswith(".") or name.lower() in JUNK_NAMES:
        return False
    return Path(name).suffix.lower() not in NON_IMAGE_SUFFIXES


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError) or isinstance(exc, Image.DecompressionBombWarning):
        return f"image too large to decode safely (decompression bomb guard: {exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify (unknown format or not an image at all)"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"truncated or corrupt image data ({exc})"
    if isinstance(exc, (SyntaxError, OSError, ValueError, EOFError)):
        return f"corrupt image data ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white (as a viewer shows it)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo + 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    # CMYK, YCbCr, LAB, HSV, L, 1, RGBX...: Pillow converts these directly.
    return img.convert("RGB")


def open_image(source, name: str | None = None, draft_size: int | None = None) -> Image.Image:
    """Decode a photo into an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied.

    ``source`` is a path or the file's bytes (then ``name`` is used in messages). The format is sniffed from
    the content, never taken from the extension. ``draft_size`` lets JPEG decode at a reduced scale that is
    still at least that many pixels on the shorter side (much faster on big photos).
    Raises :class:`ImageLoadError` on anything that is not a usable photo.
    """
    label = name if name is not None else (source if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            with open(source, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise ImageLoadError(label, f"cannot read file ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise ImageLoadError(label, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                img = Image.open(io.BytesIO(data))
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated GIF/WEBP: the first frame is the photo
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
            rgb.load()
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(label, "image too large to decode (out of memory)") from None
    except Exception as exc:  # Pillow raises many types for bad files; all become one clear line
        raise ImageLoadError(label, _reason(exc)) from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageLoadError(label, f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


# Pillow refuses truncated files by default; keep it so (a truncated photo is reported, not half-used).
ImageFile.LOAD_TRUNCATED_IMAGES = False
