"""A large folder of real-looking photos for the scale benchmarks, made from the shared ones.

    python benchmarks/photo_folder.py --count 20000 [--dest /tmp/photos-20k] [--seed 0]

Every output is a real photograph from ../shared/datasets/ (flowers-2k, flowers-mini and
intel-mini's labelled scenes), cropped a little, resized to a shorter side drawn from
160-320 px and re-encoded at JPEG quality 75-95, under a new name in its class folder:
``<dest>/<class>/<source stem>-<n>.jpg`` (n: the photo's number, 0..count-1, so no two share
a name: flowers-mini's photos carry flowers-2k names). Each copy's bytes differ (so the data
stage's duplicate check does not drop them) and decoding costs what a small real photo costs.
The folder is made once per (count, seed, naming) and reused: ``<dest>/.complete`` records
them, so that a folder made under other settings (whose names may collide, leaving fewer
files than asked for) is never taken for this one.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SOURCES = ("flowers-2k", "flowers-mini", "intel-mini/seg_train/seg_train")
STAMP = ".complete"
NAMING = 2  # 1: <stem>-<copy>.jpg (flowers-mini names collided with flowers-2k's); 2: <stem>-<n>


def source_photos(shared: Path = SHARED) -> list[tuple[str, Path]]:
    """(class, path) of every shared labelled photo, in a fixed order."""
    found = [
        (path.parent.name, path)
        for source in SOURCES
        for path in sorted((shared / source).glob("*/*.jpg"))
    ]
    if not found:
        raise FileNotFoundError(
            f"no photos under {shared}/{{{','.join(SOURCES)}}}: the scale benchmarks need "
            "../shared/datasets/ (see ../shared/README.md)"
        )
    return found


def make_photo_folder(dest: Path, count: int, seed: int = 0, shared: Path = SHARED) -> Path:
    """``dest`` holding ``count`` photos in class folders; reused when already made so."""
    wanted = {"count": count, "seed": seed, "naming": NAMING}
    stamp = dest / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    photos = source_photos(shared)
    rng = random.Random(seed)
    for i in range(count):
        label, path = photos[i % len(photos)]
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            trim = rng.uniform(0.0, 0.08)  # a few per cent off each side, drawn per copy
            dx, dy = int(w * trim / 2), int(h * trim / 2)
            image = image.crop((dx, dy, w - dx, h - dy))
            side = rng.randint(160, 320)
            scale = side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            out = dest / label / f"{path.stem}-{i}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out, "JPEG", quality=rng.randint(75, 95))
    made = sum(1 for _ in dest.glob("*/*.jpg"))
    if made != count:  # a name collision would silently shrink the folder
        raise RuntimeError(f"{dest}: {made} photos made for {count} asked")
    stamp.write_text(json.dumps(wanted))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--dest", type=Path, default=Path("/tmp/photos-20k"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        folder = make_photo_folder(args.dest, args.count, args.seed)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    print(f"{args.count} photos in {folder}")


if __name__ == "__main__":
    main()
