"""Reading photos robustly, whatever their format, mode or extension says.

Every failure becomes an :class:`ImageLoadError` whose message is one line naming the file and the reason.
"""
from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow's default limit (~89 Mpx warns, 2x that raises). We refuse at the warning level: a landmark photo
# never needs 89 megapixels, and a "bomb" with a huge declared size must not eat the machine's memory.
# Checked on the header's declared size, before any pixel is decoded.
MAX_IMAGE_PIXELS = 89_478_485

# Files that are never photos; everything else is tried and reported when it cannot be decoded.
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"}
NON_IMAGE_SUFFIXES = {".txt", ".md", ".json", ".csv", ".xmp", ".ini", ".db", ".py", ".zip", ".pt", ".npz",
                      # phone and camera folders hold videos beside the photos: never photos, often gigabytes
                      ".mp4", ".mov", ".m4v", ".avi", ".mkv", ".mts", ".m2ts", ".3gp", ".wmv", ".webm"}

# The model only ever sees the central square of a photo (resize the shorter side, then center-crop), so nothing
# beyond this aspect ratio can matter, while a 50000x1 "photo" resized to 256 px on its shorter side would need
# tens of gigabytes. Real panoramas stay well below it.
MAX_ASPECT_RATIO = 8


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
    if img.mode.startswith("I;16"):
        # 16-bit samples: scale the full 0..65535 range, so a dark 16-bit photo stays dark.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "I":
        # 32-bit integer: usually 16-bit data widened by the decoder; 8-bit range when it never exceeds 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo + 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("P", "PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    # CMYK, YCbCr, LAB, HSV, L, 1, RGBX...: Pillow converts these directly.
    return img.convert("RGB")


# Image.open reads only the header; the lock keeps the warnings filter below from racing between our threads.
_OPEN_LOCK = threading.Lock()


def _open_header(fp, label) -> Image.Image:
    """``Image.open`` on a binary file object (only the header is read) plus our own size guard, without touching
    Pillow's process-wide ``MAX_IMAGE_PIXELS``."""
    with _OPEN_LOCK, warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its limit; we refuse instead (checked just below).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(label, f"image too large to decode safely ({width}x{height} pixels declared, limit "
                                    f"{MAX_IMAGE_PIXELS}; possible decompression bomb)")
    return img


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the photo as stored (it is still a photo)."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # malformed EXIF raises many types; the pixels are fine
        return img


def open_image(source, name: str | None = None, draft_size: int | None = None) -> Image.Image:
    """Decode a photo into an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied.

    ``source`` is a path or the file's bytes (then ``name`` is used in messages). The format is sniffed from
    the content, never taken from the extension. ``draft_size`` lets JPEG decode at a reduced scale that is
    still at least that many pixels on the shorter side (much faster on big photos).
    Raises :class:`ImageLoadError` on anything that is not a usable photo.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name if name is not None else ("<bytes>" if is_bytes else source)
    if is_bytes:
        if len(source) == 0:
            raise ImageLoadError(label, "empty file (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), label, draft_size)
    try:
        # stat first: opening a named pipe would block forever, and reading /dev/zero would never end
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
            raise ImageLoadError(label, f"not a regular file ({kind})")
        if info.st_size == 0:
            raise ImageLoadError(label, "empty file (0 bytes)")
        fh = open(source, "rb")
    except OSError as exc:
        raise ImageLoadError(label, f"cannot read file ({exc.strerror or exc})") from None
    # Pillow reads only what it needs: the header of a file that is no image (a video, say), not its gigabytes.
    with fh:
        return _decode(fh, label, draft_size)


def _decode(fp, label, draft_size: int | None) -> Image.Image:
    try:
        img = _open_header(fp, label)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WEBP: the first frame is the photo
        img.load()
        rgb = _to_rgb(_exif_transpose(img))
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


def limit_aspect_ratio(img: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """``img`` itself, or for an extreme strip (longer side more than ``max_ratio`` times the shorter) its central
    part of that ratio: all a resize-then-center-crop can see of it, at a bounded cost."""
    width, height = img.size
    if width > max_ratio * height:
        keep = max(1, int(max_ratio * height))
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    if height > max_ratio * width:
        keep = max(1, int(max_ratio * width))
        top = (height - keep) // 2
        return img.crop((0, top, width, top + keep))
    return img


# Pillow refuses truncated files by default; keep it so (a truncated photo is reported, not half-used).
ImageFile.LOAD_TRUNCATED_IMAGES = False


# --------------------------------------------------------------------------------------------------------------
# A photo as the model's input, without torch: the cluster's decoding tasks run this in processes that never load
# a model; :func:`src.predictor.load_image_tensor` wraps it. The geometry is TorchScript-compatible: the exported
# module's own resize and crop (``src.predictor.resize_and_center_crop``) call it.
# --------------------------------------------------------------------------------------------------------------

def center_offset(excess: int) -> int:
    """``int(round(excess / 2))`` with Python's round-half-to-even, as torchvision's ``CenterCrop`` computes it."""
    half = excess // 2
    if excess % 2 == 1 and half % 2 == 1:
        half += 1
    return half


def resized_shape(height: int, width: int, resize_size: int) -> List[int]:
    """Shape after ``transforms.Resize(resize_size)``: shorter side to ``resize_size``, aspect ratio kept."""
    if height <= width:
        return [resize_size, (resize_size * width) // height]
    return [(resize_size * height) // width, resize_size]


def square_window(height: int, width: int, crop_size: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the square of side ``min(height, width)`` to cut from an image already resized
    to that shorter side, such that the module's own center crop of ``crop_size`` inside it lands on exactly the
    pixels its center crop of the whole image would (offsets round half to even, so they do not simply add)."""
    side = min(height, width)
    inner = center_offset(side - crop_size)
    top = center_offset(height - crop_size) - inner
    left = center_offset(width - crop_size) - inner
    return top, left, side


def load_image_array(source, resize_size: int = 256, name: str | None = None) -> np.ndarray:
    """A photo file (path or bytes) as a uint8 array ``[3, H, W]`` whose shorter side is ``resize_size``.

    Decoding is :func:`open_image` (any format, EXIF orientation, any mode to RGB, bomb guard; JPEG draft decoding
    at no less than ``resize_size``), then Pillow's antialiased bilinear resize of the shorter side to
    ``resize_size``: exactly the first step of the training/test transforms (``transforms.Resize`` on a PIL
    image), so the exported module, which does not resample an image already at that size, only crops and
    normalises - what it sees equals what ``get_transforms("test")`` gives. Pillow resizes in 8 bits, quickly and
    in little memory, whatever the photo's size. Raises ``ImageLoadError`` for bad files.
    """
    # An extreme strip is cut to its central part first (as the training transforms do): resizing a 50000x1
    # strip's shorter side to 256 px would otherwise ask for gigabytes.
    img = limit_aspect_ratio(open_image(source, name=name, draft_size=resize_size))
    if min(img.size) != resize_size:
        height, width = resized_shape(img.height, img.width, resize_size)
        img = img.resize((width, height), Image.BILINEAR)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, [H, W, 3]
    # NumPy's copy, not torch's permute().contiguous(): torch's parallel copy of a photo-sized uint8 tensor takes
    # ~8 ms with 2 threads (0.1 ms here), a third of tag's decoding time (benchmarks/bench_backends.py)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_for_batch_array(source, resize_size: int, crop_size: int, name: str | None = None) -> np.ndarray:
    """A photo (path or bytes) as the uint8 ``[3, R, R]`` array a batch stacks (R = ``resize_size``): the square
    of :func:`load_image_array` in which the exported module's own center crop of ``crop_size`` lands on exactly
    the pixels it would crop from the photo alone (``src.predictor.prepare_for_batch`` cuts the same square)."""
    image = load_image_array(source, resize_size, name=name)
    top, left, side = square_window(image.shape[-2], image.shape[-1], crop_size)
    return np.ascontiguousarray(image[:, top:top + side, left:left + side])


def error_line(path, exc: BaseException) -> str:
    """One line naming the file and what is wrong with it."""
    if isinstance(exc, ImageLoadError):
        return str(exc)
    return str(ImageLoadError(path, f"{type(exc).__name__}: {exc}"))
