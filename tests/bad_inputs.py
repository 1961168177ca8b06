"""A corpus of bad and odd photo files, generated on the fly, for every test that feeds photos to the product.

Each :class:`Sample` is one file: its name (the extension may lie), how to make its bytes, and what the product
must do with it: decode it (``ok``; ``size`` is what :func:`src.images.open_image` gives, EXIF orientation
applied) or refuse it with a one-line error containing ``reason``. :func:`write_corpus` writes them all to a
folder, plus the files only a file system can hold (a broken symlink, a named pipe).

Nothing here imports the product: the generators only use Pillow, numpy and the standard library.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


def photo(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour waves plus sensor-like noise (different for every seed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5.0 + seed), np.cos(yy / 4.0 + seed / 3), np.sin((xx + yy) / 9.0)], -1) * 90 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR is patched to declare ``width`` x ``height`` (with a correct CRC): a
    decompression bomb's header in under 100 bytes."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header is patched to declare ``width`` x ``height`` (at most 65535)."""
    data = bytearray(encode(photo((16, 16), seed=3), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "no baseline SOF0 marker"
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)  # marker, length (2), precision (1), height, width
    return bytes(data)


def png_16bit_rgb(width: int = 40, height: int = 30) -> bytes:
    """A 16-bit-per-channel RGB PNG (as raw converters and scanners write), built by hand: Pillow cannot save it."""
    rng = np.random.default_rng(16)
    pixels = (rng.integers(0, 65536, (height, width, 3), dtype=np.uint64)).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape 60x40, shown rotated 90 degrees clockwise: 40x60
    return encode(photo((60, 40), seed=11), "JPEG", quality=92, exif=exif.tobytes())


def _bogus_exif_orientation_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 77  # not an orientation at all: the photo is used as stored
    return encode(photo((50, 30), seed=12), "JPEG", quality=92, exif=exif.tobytes())


def _cmyk_jpeg() -> bytes:
    return encode(photo((48, 36), seed=13).convert("CMYK"), "JPEG", quality=92)


def _gray16_png() -> bytes:
    arr = np.asarray(photo((40, 30), seed=14).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(arr), "PNG")


def _gray16_tiff() -> bytes:
    arr = np.asarray(photo((36, 28), seed=15).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(arr), "TIFF")


def _palette_transparent_png() -> bytes:
    img = photo((40, 30), seed=17).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def _palette_transparent_gif() -> bytes:
    img = photo((40, 30), seed=18).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return encode(img, "GIF", transparency=3)


def _rgba_png() -> bytes:
    rgba = photo((40, 30), seed=19).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))))
    return encode(rgba, "PNG")


def _gray_alpha_png() -> bytes:
    return encode(photo((32, 24), seed=20).convert("LA"), "PNG")


def _bilevel_png() -> bytes:
    return encode(photo((32, 24), seed=21).convert("1"), "PNG")


def _animated_gif() -> bytes:
    frames = [photo((48, 36), seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in (22, 23, 24)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _animated_webp() -> bytes:
    frames = [photo((48, 36), seed=s) for s in (25, 26)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _truncated(fmt: str, size=(160, 120)) -> Callable[[], bytes]:
    def make() -> bytes:
        data = encode(photo(size, seed=30), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return data[: len(data) // 2]
    return make


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("photo.jpg", encode(photo((16, 16)), "JPEG"))
    return buffer.getvalue()


def _png_with_garbage_pixels() -> bytes:
    """A PNG with a valid header whose compressed pixel data is garbage (correct CRCs: only zlib notices)."""
    ihdr = struct.pack(">IIBBBBB", 32, 24, 8, 2, 0, 0, 0)
    garbage = np.random.default_rng(31).integers(0, 256, 400, dtype=np.uint8).tobytes()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", garbage)
            + png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One file of the corpus. ``ok``: a usable photo of decoded ``size`` (w, h); else ``reason`` is a word the
    one-line error must contain (lower case)."""

    name: str
    make: Callable[[], bytes]
    ok: bool
    what: str
    size: tuple[int, int] | None = None
    reason: str = ""


GOOD_PHOTO = Sample("good_photo.jpg", lambda: encode(photo((64, 48), seed=1), "JPEG", quality=92), True,
                    "an ordinary JPEG photo", (64, 48))

CORPUS: tuple[Sample, ...] = (
    GOOD_PHOTO,
    # odd but usable
    Sample("cmyk.jpg", _cmyk_jpeg, True, "CMYK JPEG (print workflow)", (48, 36)),
    Sample("gray16.png", _gray16_png, True, "16-bit grayscale PNG", (40, 30)),
    Sample("rgb16.png", png_16bit_rgb, True, "16-bit per channel RGB PNG", (40, 30)),
    Sample("gray16.tif", _gray16_tiff, True, "16-bit grayscale TIFF", (36, 28)),
    Sample("palette_transparent.png", _palette_transparent_png, True, "palette PNG with a transparent colour",
           (40, 30)),
    Sample("palette_transparent.gif", _palette_transparent_gif, True, "GIF with a transparent colour", (40, 30)),
    Sample("rgba.png", _rgba_png, True, "RGBA PNG with a gradient alpha", (40, 30)),
    Sample("gray_alpha.png", _gray_alpha_png, True, "grayscale + alpha PNG", (32, 24)),
    Sample("bilevel.png", _bilevel_png, True, "1-bit black and white PNG", (32, 24)),
    Sample("animated.gif", _animated_gif, True, "animated GIF (3 frames)", (48, 36)),
    Sample("animated.webp", _animated_webp, True, "animated WEBP (2 frames)", (48, 36)),
    Sample("exif_rotated.jpg", _exif_rotated_jpeg, True, "JPEG stored landscape, EXIF orientation 6", (40, 60)),
    Sample("bogus_exif_orientation.jpg", _bogus_exif_orientation_jpeg, True, "EXIF orientation 77 (invalid)",
           (50, 30)),
    Sample("webp_named.jpg", lambda: encode(photo((50, 40), seed=4), "WEBP"), True, "WEBP named .jpg", (50, 40)),
    Sample("png_named.jpg", lambda: encode(photo((50, 40), seed=5), "PNG"), True, "PNG named .jpg", (50, 40)),
    Sample("jpeg_named.png", lambda: encode(photo((50, 40), seed=6), "JPEG"), True, "JPEG named .png", (50, 40)),
    Sample("bmp_no_extension", lambda: encode(photo((30, 20), seed=7), "BMP"), True, "BMP without extension",
           (30, 20)),
    Sample("one_pixel.png", lambda: encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), True, "1x1 px PNG",
           (1, 1)),
    Sample("one_pixel.jpg", lambda: encode(Image.new("RGB", (1, 1), (30, 30, 200)), "JPEG"), True, "1x1 px JPEG",
           (1, 1)),
    Sample("wide_strip.png", lambda: encode(photo((4000, 3), seed=8), "PNG"), True, "4000x3 strip", (4000, 3)),
    Sample("tall_strip.png", lambda: encode(photo((3, 4000), seed=9), "PNG"), True, "3x4000 strip", (3, 4000)),
    Sample("line_50000x1.png", lambda: encode(Image.new("RGB", (50000, 1), (90, 120, 200)), "PNG"), True,
           "50000x1 line (tiny file, extreme aspect ratio)", (50000, 1)),
    Sample("name with spaces, comma & é.jpg", lambda: encode(photo((40, 30), seed=10), "JPEG"), True,
           "spaces, comma and non-ASCII in the name", (40, 30)),
    # not usable: each one line naming the file and why
    Sample("zero_bytes.jpg", lambda: b"", False, "empty file", reason="empty"),
    Sample("truncated.jpg", _truncated("JPEG"), False, "JPEG cut off half-way", reason="truncated"),
    Sample("truncated.png", _truncated("PNG"), False, "PNG cut off half-way", reason="truncated"),
    Sample("header_only.jpg", lambda: encode(photo((64, 48)), "JPEG")[:300], False, "only a JPEG header",
           reason="truncated"),
    Sample("garbage_pixels.png", _png_with_garbage_pixels, False, "PNG with garbage compressed data",
           reason="corrupt"),
    Sample("text.jpg", lambda: b"These are my holiday notes, not a photo.\nSecond line.\n", False,
           "text file named .jpg", reason="not an image"),
    Sample("page.jpg", lambda: (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>"
                                b"<body><h1>Forbidden</h1></body></html>\n"), False,
           "HTML error page saved as .jpg", reason="not an image"),
    Sample("archive.jpg", _zip_bytes, False, "zip archive named .jpg", reason="not an image"),
    Sample("bomb_png.png", lambda: png_with_declared_size(30000, 30000), False,
           "PNG declaring 30000x30000 (900 Mpx; Pillow raises)", reason="too large"),
    Sample("bomb_warning_zone.png", lambda: png_with_declared_size(10000, 10000), False,
           "PNG declaring 10000x10000 (100 Mpx; Pillow only warns)", reason="too large"),
    Sample("bomb_jpeg.jpg", lambda: jpeg_with_declared_size(60000, 60000), False,
           "JPEG declaring 60000x60000", reason="too large"),
)

BY_NAME = {s.name: s for s in CORPUS}
GOOD = tuple(s for s in CORPUS if s.ok)
BAD = tuple(s for s in CORPUS if not s.ok)

# Files only a file system holds (not uploadable bytes): name -> (what, reason word)
FS_ONLY = {
    "broken_link.jpg": ("symlink to a file that does not exist", "cannot read"),
    "named_pipe.jpg": ("a FIFO (reading it would block forever)", "not a regular file"),
}


def corpus_bytes() -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for every sample: what an upload form receives."""
    return [(s.name, s.make()) for s in CORPUS]


def write_corpus(folder: str | os.PathLike, fs_only: bool = True) -> dict[str, Sample | tuple[str, str]]:
    """Write every sample into ``folder`` (created); with ``fs_only`` also a broken symlink and a named pipe.

    Returns ``{file name: Sample or (what, reason) for the file-system-only ones}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Sample | tuple[str, str]] = {}
    for sample in CORPUS:
        (folder / sample.name).write_bytes(sample.make())
        written[sample.name] = sample
    if fs_only:
        os.symlink(folder / "no_such_target.jpg", folder / "broken_link.jpg")
        written["broken_link.jpg"] = FS_ONLY["broken_link.jpg"]
        if hasattr(os, "mkfifo"):
            os.mkfifo(folder / "named_pipe.jpg")
            written["named_pipe.jpg"] = FS_ONLY["named_pipe.jpg"]
    return written


def expected_ok(entry) -> bool:
    return isinstance(entry, Sample) and entry.ok


def expected_reason(entry) -> str:
    return entry.reason if isinstance(entry, Sample) else entry[1]
