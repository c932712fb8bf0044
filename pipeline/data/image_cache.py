"""The decoded image cache (``data.cache_size``, `make data DATA_CACHE=342`): oriented JPEG
copies of every usable image with a smaller shorter side, under
data/<dataset id>/cache-<size>/, built once (by content hash) so that large photos do not make
every epoch slow.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from pipeline.data.manifest import ManifestRow
from pipeline.files import atomic_path
from pipeline.images import DECODE_JPEG, load_rgb


def cache_path(dataset_dir: Path, size: int, sha256: str) -> Path:
    return dataset_dir / f"cache-{size}" / sha256[:2] / f"{sha256}.jpg"


def _cache_one(args: tuple[str, str, int]) -> None:
    from PIL import Image

    src, dest, size = args
    dest_path = Path(dest)
    if dest_path.exists():
        return
    img = Image.fromarray(load_rgb(src))
    scale = size / min(img.size)
    if scale < 1.0:
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(new, Image.BICUBIC, reducing_gap=3.0)
    with atomic_path(dest_path) as tmp:
        img.save(tmp, "JPEG", quality=95)


def build_image_cache(
    rows: list[ManifestRow], dataset_dir: Path, size: int, workers: int = 0
) -> Path:
    """Decoded, oriented, down-sized JPEG copies (shorter side = size), built once by hash."""
    from tqdm import tqdm

    jobs = [
        (r.path, str(cache_path(dataset_dir, size, r.sha256)), size)
        for r in rows
        if not cache_path(dataset_dir, size, r.sha256).exists()
    ]
    if jobs:
        workers = workers or os.cpu_count() or 1
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            bar = tqdm(total=len(jobs), desc=f"Caching at {size}px", unit="img", leave=False)
            for _ in pool.map(_cache_one, jobs, chunksize=16):
                bar.update()
            bar.close()
    return dataset_dir / f"cache-{size}"


def cached_rows(rows: list[ManifestRow], dataset_dir: Path, size: int) -> list[ManifestRow]:
    """The same rows pointing at the decoded cache; fails if `make data` did not build it."""
    out = []
    for r in rows:
        path = cache_path(dataset_dir, size, r.sha256)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from the image cache: run `make data DATA_CACHE={size}` "
                "(data.cache_size) first, or set data.cache_size=0"
            )
        out.append(
            ManifestRow(
                str(path), r.label, r.label_index, r.sha256, r.width, r.height, 1, DECODE_JPEG
            )
        )
    return out
