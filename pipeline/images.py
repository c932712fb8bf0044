"""Reading one image file: what it is, whether it is usable, and how to decode it to RGB.

``check_image`` decodes every file once (in worker processes, see ``check_images``) and
records how the input pipeline must decode it: TensorFlow's own decoders for the common
JPEG/PNG/WebP cases (fast, in the graph), or ``load_rgb`` below (PIL) for the rest:
transparency composited on white, 16-bit, GIF, BMP. Both paths apply the EXIF orientation,
so the model sees what a person sees. Nothing here ever writes to a user's file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp"})
# PIL format names we accept (MPO: multi-picture JPEG written by many cameras).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
OS_DEBRIS = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "icon\r"})
DEBRIS_DIRS = frozenset({"__macosx", ".git", ".svn", "@eadir", ".ipynb_checkpoints"})
EXIF_ORIENTATION_TAG = 0x0112

# How the input pipeline decodes a file (the `decoder` column of the manifests).
DECODE_JPEG = "jpeg"  # tf.io.decode_and_crop_jpeg: only the crop is decoded
DECODE_TF = "tf"  # tf.io.decode_image: PNG/WebP that need no conversion
DECODE_PIL = "pil"  # load_rgb: anything TensorFlow would decode differently

# Bump whenever check_image's outcome for a given file can change (new reason, format,
# decoder rule...): `make data` then drops its remembered checks (pipeline/data/check_cache.py).
CHECK_VERSION = 2


@dataclass
class ImageCheck:
    """The outcome of checking one file: a row of check_report.csv."""

    path: str
    status: str = "ok"  # ok | skipped
    reason: str = ""
    sha256: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0  # as displayed, after the EXIF orientation
    height: int = 0
    orientation: int = 1  # EXIF orientation tag, 1..8
    decoder: str = ""
    phash: str = ""  # 64-bit perceptual hash (hex) of the picture: near-copies differ little

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def row(self) -> list[object]:
        # Not asdict(): its deep copy made writing 20,000 rows take seconds.
        return [getattr(self, f.name) for f in fields(self)]


# The outputs (manifests, reports, predict's CSV) are UTF-8 text and cannot hold such a name.
NOT_UTF8 = "file name not UTF-8 (rename the file to use it)"


def text_path(path: str | os.PathLike) -> str:
    """A path as UTF-8 text for a CSV or JSON output. A file name written by a system with
    another encoding holds bytes that are not UTF-8 (Python keeps them as surrogates, which
    UTF-8 cannot encode); they appear as \\xNN escapes. Any other path is unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_path(path: str | os.PathLike) -> bool:
    return text_path(path) == os.fspath(path)


def check_named(path: str | Path, check: Callable[..., ImageCheck], *limits: int) -> ImageCheck:
    """``check(path, *limits)`` for a file the UTF-8 outputs can name; for any other, a
    skip (NOT_UTF8) without opening it: a row that cannot name its file is of no use."""
    if not is_utf8_path(path):
        return ImageCheck(str(path), "skipped", NOT_UTF8)
    return check(path, *limits)


def is_ignored(path: Path) -> bool:
    """Hidden files and OS debris are not the user's images; they are not even reported."""
    return path.name.startswith(".") or path.name.lower() in OS_DEBRIS


def iter_files(root: Path) -> Iterator[Path]:
    """Every non-ignored file below root, sorted, without entering hidden or debris folders."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d.lower() not in DEBRIS_DIRS
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_ignored(path):
                yield path


def reason_key(reason: str) -> str:
    """A skip reason without its details, to count by: 'too small (20x30, ...)' -> 'too small'."""
    return reason.split(" (")[0].split(":")[0]


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_transparency(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )


def _choose_decoder(img) -> str:
    """TensorFlow's decoders agree with load_rgb only for these cases (checked in tests)."""
    fmt = img.format
    if fmt in ("JPEG", "MPO") and img.mode in ("RGB", "L", "CMYK"):
        return DECODE_JPEG
    if fmt in ("PNG", "WEBP") and img.mode in ("RGB", "L") and not _has_transparency(img):
        return DECODE_TF
    return DECODE_PIL


def _start_check(
    path: Path,
) -> tuple[ImageCheck, Callable[[str], ImageCheck], ImageCheck | None]:
    """An empty check of ``path``, the function that marks it skipped with a reason, and the
    skip already due before opening it (an extension that is no image's, not a regular file)."""
    result = ImageCheck(path=str(path))

    def skip(reason: str) -> ImageCheck:
        result.status, result.reason = "skipped", reason
        return result

    if not has_image_extension(path):
        return result, skip, skip(f"unsupported extension {path.suffix or '(none)'}")
    special = not_regular_reason(path)
    return result, skip, skip(special) if special else None


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file to open (None when it is). Opening a FIFO blocks
    forever and a device may never end, so every stage asks this before it opens a file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"dangling symbolic link (to {os.readlink(path)})"
        return f"unreadable: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind})"


def check_image(
    path: str | Path, min_side: int = DataConfig.min_side, max_pixels: int = DataConfig.max_pixels
) -> ImageCheck:
    """Decode a file fully once and say whether it is usable, and why not."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    result, skip, refused = _start_check(path)
    if refused is not None:
        return refused
    try:
        size = path.stat().st_size
        if size == 0:
            return skip("empty file")
        result.sha256 = file_sha256(path)
    except OSError as exc:
        return skip(f"unreadable: {exc.strerror or exc}")

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit before decoding, below
    try:
        with Image.open(path) as img:
            result.format, result.mode = img.format or "", img.mode
            width, height = img.size
            if result.format not in ACCEPTED_FORMATS:
                return skip(f"unsupported image format {result.format}")
            if width * height > max_pixels:
                return skip(
                    f"too large ({width}x{height} > {max_pixels} pixels): "
                    "possible decompression bomb"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()  # full decode: raises on truncated or corrupt data
            orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            result.orientation = orientation if 1 <= orientation <= 8 else 1
            if result.orientation >= 5:  # 5..8 swap width and height
                width, height = height, width
            result.width, result.height = width, height
            result.decoder = _choose_decoder(img)
            result.phash = perceptual_hash(img)
    except UnidentifiedImageError:
        return skip("not an image (content is not a readable image format)")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return skip(f"truncated or corrupt: {exc}")
    if min(width, height) < min_side:
        return skip(f"too small ({width}x{height}, shorter side < {min_side})")
    return result


def perceptual_hash(img) -> str:
    """imagehash's 64-bit pHash of a decoded PIL image, as 16 hex digits.

    The signs of the low frequencies of a 32x32 grey thumbnail's cosine transform: resizing
    and re-encoding move few of its bits, while distinct photos of simple scenes (a horizon,
    a flower in the middle) stay further apart than under a difference hash. The thumbnail
    is a box average (pHash's own Lanczos resize from full size would cost more than the
    check's decode); the stored pixels are hashed, before the EXIF orientation.
    """
    import imagehash
    from PIL import Image

    base = img if img.mode in ("L", "RGB") else img.convert("RGB")
    return str(imagehash.phash(base.convert("L").resize((32, 32), Image.Resampling.BOX)))


# The bytes a complete JPEG ends with (its EOI marker). A file cut short (the usual damage:
# an interrupted copy) lacks them, and TensorFlow's crop decode can miss a cut below the
# crop, so such files get check_image's full decode instead.
_JPEG_END = b"\xff\xd9"


def inspect_image(
    path: str | Path, min_side: int = DataConfig.min_side, max_pixels: int = DataConfig.max_pixels
) -> ImageCheck:
    """check_image without the full decode, for files decoded right after (make predict).

    For a JPEG (what cameras write) it reads the header only (format, size, EXIF
    orientation, decoder) and the file's last bytes; anything else, and a JPEG that does
    not end as a complete one, goes through check_image (a PNG's EXIF may follow its
    pixels, so PIL decodes it to read it anyway). Damage inside a complete-looking JPEG
    surfaces in the decode that follows, whose caller reports it. Same fields and reasons
    as check_image, without the sha256 and the phash.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    result, skip, refused = _start_check(path)
    if refused is not None:
        return refused
    Image.MAX_IMAGE_PIXELS = None  # our own limit below
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return skip("empty file")
            fh.seek(max(0, size - len(_JPEG_END)))
            tail = fh.read()
            fh.seek(0)
            with Image.open(fh) as img:
                result.format, result.mode = img.format or "", img.mode
                decoder = _choose_decoder(img)
                if decoder != DECODE_JPEG or tail != _JPEG_END:
                    return check_image(path, min_side, max_pixels)
                width, height = img.size
                if width * height > max_pixels:
                    return check_image(path, min_side, max_pixels)  # its reason, unchanged
                orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError) or not exc.strerror:
            return check_image(path, min_side, max_pixels)  # the reason check_image gives
        return skip(f"unreadable: {exc.strerror}")
    except (SyntaxError, ValueError, Image.DecompressionBombError):
        return check_image(path, min_side, max_pixels)
    result.orientation = orientation if 1 <= orientation <= 8 else 1
    if result.orientation >= 5:  # 5..8 swap width and height
        width, height = height, width
    result.width, result.height, result.decoder = width, height, decoder
    if min(width, height) < min_side:
        return skip(f"too small ({width}x{height}, shorter side < {min_side})")
    return result


def _check_one(args: tuple[str, int, int]) -> ImageCheck:
    return check_image(*args)


def check_images(
    paths: Iterable[str | Path],
    min_side: int = DataConfig.min_side,
    max_pixels: int = DataConfig.max_pixels,
    workers: int = 0,
    progress: bool = True,
    desc: str = "Checking images",
) -> list[ImageCheck]:
    """check_image over many files in parallel processes, in input order, with a progress bar
    (on stderr, and only when stderr is a terminal: in a log its carriage-return updates
    would run into the lines printed after it)."""
    import sys

    from tqdm import tqdm

    jobs = [(str(p), min_side, max_pixels) for p in paths]
    workers = workers or os.cpu_count() or 1
    show = progress and sys.stderr.isatty()
    # leave=True: the finished bar keeps its line and ends it, so what follows starts afresh.
    bar = dict(
        total=len(jobs), desc=desc, unit="img", file=sys.stderr, disable=not show, leave=True
    )
    if workers == 1 or len(jobs) < 64:
        return [check_image(*job) for job in tqdm(jobs, **bar)]
    # spawn, not fork: the parent may already have started TensorFlow's threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        return list(tqdm(pool.map(_check_one, jobs, chunksize=chunk), **bar))


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode any accepted file to an oriented HxWx3 uint8 RGB array, the way a viewer shows it.

    Transparency is composited on white; 16-bit samples keep their top 8 bits (as
    TensorFlow's PNG decoder does); GIFs give their first frame; CMYK is converted.
    """
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img, dtype=np.uint32)
            shift = 8 if img.mode.startswith("I;16") or array.max(initial=0) < 65536 else 24
            gray = (array >> shift).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        if _has_transparency(img):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
