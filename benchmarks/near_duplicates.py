"""Near-duplicate photos in real photo sets: what each data.near_duplicate_bits finds, and
what the hash costs.

    python benchmarks/near_duplicates.py [--datasets flowers-2k,intel-mini,flowers-mini]
        [--bits 0,2,4,6,8,10,12] [--sheets DIR] [--output benchmarks/results/near_duplicates.json]

For every data set (a folder under ../shared/datasets/, listed as `make data` lists it) and
threshold: the groups of near-copies the data stage would form (connected photos whose
64-bit perceptual hashes are at most that many bits apart, identical files alone not
counted), the photos in them, the groups whose labels differ, and the groups that the
sha256-only rule (each image's split drawn from its own sha256, split seed 42) would have cut
across splits. The distance from each photo to its nearest other photo, as a histogram,
shows where near-copies end and different photos begin. ``--sheets`` draws each pair
found at each distance side by side (PNG per data set and distance band) for a person to
confirm. Cost: the perceptual hash's time against the whole check's (decode included),
one process, every photo.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.config import Config, with_overrides  # noqa: E402
from pipeline.data.listing import list_source  # noqa: E402
from pipeline.data.near_duplicates import close_pairs, near_groups, split_keys  # noqa: E402
from pipeline.data.split import split_of  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.images import check_image, perceptual_hash  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "benchmarks" / "results" / "near_duplicates.json"


def checked(folder: Path, work: Path) -> tuple[list, list, float, float]:
    """(labels, checks) of the usable photos; seconds of all checks and of the hashes."""
    from PIL import Image

    cfg = with_overrides(Config(), {"data.dataset": f"folder:{folder}", "paths.data": str(work)})
    listing = list_source(cfg, cfg.dataset_dir())
    labels, checks, check_s, hash_s = [], [], 0.0, 0.0
    for cand in listing.candidates:
        start = time.perf_counter()
        check = check_image(cand.path)
        check_s += time.perf_counter() - start
        if check.status != "ok" or cand.label is None:
            continue
        with Image.open(cand.path) as img:
            img.load()
            start = time.perf_counter()
            perceptual_hash(img)
            hash_s += time.perf_counter() - start
        labels.append(cand.label)
        checks.append(check)
    return labels, checks, check_s, hash_s


def nearest_distances(hashes: list[str]) -> np.ndarray:
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    nearest = np.full(len(values), 64)
    for start in range(0, len(values), 512):
        d = np.bitwise_count(values[start : start + 512, None] ^ values[None, :]).astype(int)
        d[np.arange(d.shape[0]), np.arange(start, start + d.shape[0])] = 64  # not itself
        nearest[start : start + 512] = d.min(axis=1)
    return nearest


def threshold_row(labels, checks, bits: int) -> dict:
    shas, hashes = [c.sha256 for c in checks], [c.phash for c in checks]
    groups = near_groups(split_keys(shas, hashes, bits), shas)
    old = [{split_of(shas[i], 42, 0.15, 0.15) for i in g} for g in groups]
    return {
        "bits": bits,
        "groups": len(groups),
        "photos": sum(map(len, groups)),
        "label_conflicts": sum(len({labels[i] for i in g}) > 1 for g in groups),
        "crossed_splits_before": sum(len(s) > 1 for s in old),
        "largest": max(map(len, groups), default=0),
    }


def draw_sheets(name: str, checks, labels, out: Path, top_bits: int) -> list[Path]:
    """One PNG per distance band: each pair side by side, labelled with its distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.images import load_rgb

    hashes = [c.phash for c in checks]
    pairs = close_pairs(hashes, top_bits)
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    dist = np.bitwise_count(values[pairs[:, 0]] ^ values[pairs[:, 1]]).astype(int)
    written = []
    for lo, hi in ((0, 4), (5, 8), (9, top_bits)):
        band = [(i, j, d) for (i, j), d in zip(pairs.tolist(), dist) if lo <= d <= hi]
        if checks and band:
            band = [p for p in band if checks[p[0]].sha256 != checks[p[1]].sha256][:24]
        if not band:
            continue
        fig, axes = plt.subplots(len(band), 2, figsize=(5, 2.4 * len(band)), squeeze=False)
        for row, (i, j, d) in zip(axes, band):
            for ax, k in zip(row, (i, j)):
                ax.imshow(load_rgb(checks[k].path))
                ax.set_title(f"{labels[k]} {Path(checks[k].path).name[:18]} d={d}", fontsize=7)
                ax.axis("off")
        path = out / f"{name}_bits_{lo}-{hi}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=60)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="flowers-2k,intel-mini,flowers-mini")
    parser.add_argument("--bits", default="0,2,4,6,8,10,12")
    parser.add_argument("--sheets", type=Path, help="draw the pairs found, per distance band")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    thresholds = [int(b) for b in args.bits.split(",")]
    results = {}
    import tempfile

    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as work:
            labels, checks, check_s, hash_s = checked(SHARED / name, Path(work))
        nearest = nearest_distances([c.phash for c in checks])
        rows = [threshold_row(labels, checks, b) for b in thresholds]
        results[name] = {
            "photos": len(checks),
            "check_seconds": check_s,
            "hash_seconds": hash_s,
            "hash_share_of_check": hash_s / check_s,
            "nearest_distance_histogram": np.bincount(nearest, minlength=65)[:17].tolist(),
            "thresholds": rows,
        }
        print(
            f"\n{name}: {len(checks)} photos; hash {hash_s:.1f} s of the check's {check_s:.1f} s "
            f"({100 * hash_s / check_s:.1f}%)"
        )
        print("nearest other photo, bits 0..16:", results[name]["nearest_distance_histogram"])
        print(f"{'bits':>4} {'groups':>6} {'photos':>6} {'labels differ':>13} {'crossed':>7}")
        for r in rows:
            print(
                f"{r['bits']:>4} {r['groups']:>6} {r['photos']:>6} {r['label_conflicts']:>13} "
                f"{r['crossed_splits_before']:>7}"
            )
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            for path in draw_sheets(name, checks, labels, args.sheets, max(thresholds)):
                print(f"  drew {path}")
    write_json(args.output, results)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
