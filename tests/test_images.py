"""open_image on every odd kind of file a folder of downloaded photos holds: each becomes an RGB uint8 image of
the right size, or an ImageLoadError whose message is one line starting with the file's path."""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import png_with_declared_size
from src.images import MAX_IMAGE_PIXELS, ImageLoadError, is_candidate_image, open_image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def two_halves(w: int, h: int, left=RED, right=BLUE) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


def assert_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


def assert_load_error(path: Path, *words: str) -> str:
    with pytest.raises(ImageLoadError) as info:
        open_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg and len(msg) < 400, msg
    assert info.value.path == str(path)
    for word in words:
        assert word in msg.lower(), msg
    return msg


def near(pixel, colour, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


# ---------------------------------------------------------------------------------------------------------------
# Photos in odd modes and formats: all decode to RGB
# ---------------------------------------------------------------------------------------------------------------

def test_exif_orientation_6_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    two_halves(60, 40).save(path, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(path).size == (60, 40)  # stored landscape
    arr = assert_rgb(open_image(path), (40, 60))  # shown portrait: width and height swapped
    # 90 degrees clockwise: the stored left half (red) ends up on top.
    assert near(arr[5, 20], RED) and near(arr[-5, 20], BLUE)


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_grayscale_becomes_three_equal_channels(tmp_path, fmt, ext):
    path = tmp_path / f"gray{ext}"
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1)), "L").save(path, fmt)
    arr = assert_rgb(open_image(path), (50, 30))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert arr[..., 0].max() > 200 and arr[..., 0].min() < 20


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "palette.png"
    img = Image.new("P", (20, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (10, 0, 20, 10))  # right half: palette index 1 (blue), marked transparent
    img.save(path, transparency=1)
    arr = assert_rgb(open_image(path), (20, 10))
    assert tuple(arr[5, 2]) == (255, 0, 0)
    assert tuple(arr[5, 15]) == (255, 255, 255)


def test_rgba_png_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    arr = np.zeros((10, 20, 4), np.uint8)
    arr[:, :10] = (200, 30, 30, 255)
    arr[:, 10:] = (0, 0, 0, 0)
    Image.fromarray(arr, "RGBA").save(path)
    out = assert_rgb(open_image(path), (20, 10))
    assert tuple(out[5, 2]) == (200, 30, 30) and tuple(out[5, 15]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    arr = assert_rgb(open_image(path), (32, 24))
    assert near(arr[12, 16], (255, 0, 0), tol=30)


def test_16_bit_png_scales_the_full_range(tmp_path):
    dark = tmp_path / "dark.png"  # a very dark 16-bit photo: no sample above 255 of 65535
    Image.fromarray(np.full((8, 8), 255, np.uint16)).save(dark)
    assert tuple(assert_rgb(open_image(dark), (8, 8))[0, 0]) == (1, 1, 1)
    path = tmp_path / "deep.png"
    data = np.zeros((10, 30), np.uint16)
    data[:, 10:20] = 257 * 100  # 100 in 8-bit terms: a dark 16-bit photo must stay dark
    data[:, 20:] = 65535
    Image.fromarray(data).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = assert_rgb(open_image(path), (30, 10))
    assert tuple(arr[5, 5]) == (0, 0, 0)
    assert tuple(arr[5, 15]) == (100, 100, 100)
    assert tuple(arr[5, 25]) == (255, 255, 255)


def test_animated_gif_gives_the_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 12), c) for c in (RED, BLUE, (20, 220, 20))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    arr = assert_rgb(open_image(path), (16, 12))
    assert near(arr[6, 8], RED)


def test_bmp(tmp_path):
    path = tmp_path / "photo.bmp"
    two_halves(24, 16).save(path, "BMP")
    arr = assert_rgb(open_image(path), (24, 16))
    assert tuple(arr[8, 2]) == RED and tuple(arr[8, 20]) == BLUE


@pytest.mark.parametrize("fmt,name", [("WEBP", "really_webp.jpg"), ("PNG", "really_png.gif"),
                                      ("JPEG", "really_jpeg.png"), ("PNG", "no_extension")])
def test_format_comes_from_content_not_extension(tmp_path, fmt, name):
    path = tmp_path / name
    two_halves(40, 20).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    arr = assert_rgb(open_image(path), (40, 20))
    assert near(arr[10, 5], RED) and near(arr[10, 35], BLUE)


def test_tiny_and_extreme_aspect_images(tmp_path):
    Image.new("RGB", (1, 1), RED).save(tmp_path / "dot.png")
    assert tuple(assert_rgb(open_image(tmp_path / "dot.png"), (1, 1))[0, 0]) == RED
    Image.new("RGB", (4000, 2), BLUE).save(tmp_path / "strip.png")
    assert_rgb(open_image(tmp_path / "strip.png"), (4000, 2))


def test_bytes_source_uses_the_given_name(tmp_path):
    buf = io.BytesIO()
    two_halves(20, 10).save(buf, "PNG")
    assert_rgb(open_image(buf.getvalue(), name="upload.png"), (20, 10))
    with pytest.raises(ImageLoadError, match=r"^upload\.jpg: "):
        open_image(b"not a photo", name="upload.jpg")


def test_draft_decodes_big_jpeg_smaller_but_not_below_the_size_asked(tmp_path):
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(path, quality=80)
    img = open_image(path, draft_size=256)
    assert img.mode == "RGB" and 256 <= min(img.size) < 1500
    assert img.width / img.height == pytest.approx(2000 / 1500, rel=0.02)


# ---------------------------------------------------------------------------------------------------------------
# Files that are not usable photos: one clear line each
# ---------------------------------------------------------------------------------------------------------------

def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert_load_error(path, "truncated")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_load_error(path, "empty")


@pytest.mark.parametrize("name,content", [
    ("notes.jpg", b"These are my holiday notes, not a photo.\nSecond line.\n"),
    ("page.jpg", b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>no</body></html>\n"),
])
def test_text_and_html_named_jpg(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert_load_error(path, "not an image")


def test_missing_file(tmp_path):
    assert_load_error(tmp_path / "gone.jpg", "cannot read")


@pytest.mark.parametrize("side", [30000, 10000])  # 900 Mpx: Pillow raises; 100 Mpx: Pillow only warns
def test_decompression_bomb_fails_fast_without_allocating(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_declared_size(side, side))
    data = path.read_bytes()
    assert struct.unpack(">II", data[16:24]) == (side, side)  # the header really declares it, CRC correct
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29]) & 0xFFFFFFFF
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning leaks out either
        msg = assert_load_error(path, "too large")  # refused from the header, before any pixel is decoded
    assert "bomb" in msg
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's process-wide limit untouched


def test_bomb_guard_holds_across_threads_and_without_pillow_limit(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_declared_size(10000, 10000))
    photo = tmp_path / "photo.png"
    two_halves(64, 48).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a user switched Pillow's own guard off

    def attempt(path):
        try:
            return open_image(path).size
        except ImageLoadError as exc:
            return exc.reason

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, [bomb, photo] * 20))
    assert all("too large" in r for r in results[0::2])
    assert all(r == (64, 48) for r in results[1::2])
    assert Image.MAX_IMAGE_PIXELS is None  # left as the user set it


def test_is_candidate_image():
    for name in ("a.jpg", "b.JPEG", "c.webp", "d.gif", "e.png", "f.bmp", "no_extension", "x.jpg.tmp"):
        assert is_candidate_image(name), name
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._a.jpg", ".hidden.png", "notes.txt", "meta.json",
                 "clip.mp4", "IMG_0001.MOV"):  # phone folders hold videos: never photos, often gigabytes
        assert not is_candidate_image(name), name
