"""Generated image files of every kind the data stage must handle, good and bad.

The picture is asymmetric (a gradient plus a red block in the top-left corner), so a
wrong orientation or a swapped channel changes pixels a test can see.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_KINDS = (
    "rgb_jpeg",
    "gray_jpeg",
    "cmyk_jpeg",
    "upper_ext_jpeg",
    "rgb_png",
    "rgba_png",
    "palette_png",
    "palette_transparent_png",
    "png16",
    "gif",
    "bmp",
    "webp",
    "exif_rotated_jpeg",
)
BAD_KINDS = {
    "empty": "empty file",
    "text_as_jpg": "not an image",
    "truncated_jpeg": "truncated or corrupt",
    "tiny_png": "too small",
    "tiff_as_png": "unsupported image format",
    "notes_txt": "unsupported extension",
}
EXTENSIONS = {
    "upper_ext_jpeg": ".JPG",
    "rgb_png": ".png",
    "rgba_png": ".png",
    "palette_png": ".png",
    "palette_transparent_png": ".png",
    "png16": ".png",
    "gif": ".gif",
    "bmp": ".bmp",
    "webp": ".webp",
    "empty": ".jpg",
    "text_as_jpg": ".jpg",
    "truncated_jpeg": ".jpg",
    "tiny_png": ".png",
    "tiff_as_png": ".png",
    "notes_txt": ".txt",
}


def picture(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 picture with an unmistakable top-left corner. Each seed lays its own
    smooth pattern of light and dark over the gradient, so that two seeds make two different
    pictures, not near-copies that the data stage would keep in one split."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 96)], axis=-1)
    field = Image.fromarray(rng.integers(48, 208, (8, 8)).astype(np.uint8))  # smooth edges:
    pattern = np.asarray(field.resize((width, height), Image.Resampling.BILINEAR), int) - 128
    array = array + pattern[..., None]  # TensorFlow's and PIL's JPEG decoders agree on them
    array = (array + rng.integers(0, 24, array.shape)).clip(0, 255).astype(np.uint8)
    array[: height // 4, : width // 4] = (230, 20, 20)
    return array


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_image(path: Path, kind: str, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """Write one file of the given kind (GOOD_KINDS or BAD_KINDS) and return its path."""
    path = path.with_suffix(EXTENSIONS.get(kind, ".jpg"))
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(picture(width, height, seed))
    if kind in ("rgb_jpeg", "upper_ext_jpeg"):
        rgb.save(path, "JPEG", quality=95)
    elif kind == "gray_jpeg":
        rgb.convert("L").save(path, "JPEG", quality=95)
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind == "rgb_png":
        rgb.save(path, "PNG")
    elif kind == "rgba_png":
        rgba = rgb.convert("RGBA")
        alpha = np.full((height, width), 255, np.uint8)
        alpha[-height // 4 :, -width // 4 :] = 0  # bottom-right corner fully transparent
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(path, "PNG")
    elif kind == "palette_png":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")
    elif kind == "palette_transparent_png":
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        pal.save(path, "PNG", transparency=0)
    elif kind == "png16":
        gray16 = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(path, "PNG")
    elif kind == "gif":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, "GIF")
    elif kind == "bmp":
        rgb.save(path, "BMP")
    elif kind == "webp":
        rgb.save(path, "WEBP", lossless=True)
    elif kind == "exif_rotated_jpeg":
        save_with_orientation(rgb, path, 6)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text_as_jpg":
        path.write_text("this is not a photo\n")
    elif kind == "truncated_jpeg":
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=95)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "tiny_png":
        rgb.resize((8, 6)).save(path, "PNG")
    elif kind == "tiff_as_png":
        rgb.save(path, "TIFF")
    elif kind == "notes_txt":
        path.write_text("notes about the photos\n")
    else:
        raise ValueError(f"unknown kind {kind}")
    return path


def save_with_orientation(img: Image.Image, path: Path, orientation: int) -> Path:
    """Save a JPEG whose stored pixels are `img` and whose EXIF says how to turn them."""
    img.save(path, "JPEG", quality=95, exif=exif_bytes(orientation))
    return path


def decompression_bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose header claims a huge image (the data itself is a 1x1 image)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # IHDR starts at byte 8 (after the signature): length(4) type(4) width(4) height(4)...
    data[16:24] = struct.pack(">II", width, height)
    import zlib

    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path
