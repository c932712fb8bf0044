"""`make data` at scale: a cold first run, an unchanged rerun, a rerun after 1% changed,
and a fresh run of the changed folder, side by side in one run.

    python benchmarks/data.py [--folder /tmp/photos-20k] [--count 20000] [--changed 0.01]

The photos come from benchmarks/photo_folder.py (``--count`` real photos re-encoded as
160-320 px JPEGs; made once, reused). They are copied into a temporary folder, which is
then changed, and each run is ``python -m pipeline data`` in its own process, exactly as
`make data` runs it; wall time and peak RSS (the largest of the stage's process and its
check workers, from wait4) per run:

  first      cold: no data/ folder yet, every photo checked
  unchanged  the same folder again (median of --rounds runs)
  changed    after ``--changed`` of the photos changed: 40% re-encoded (new bytes), 20%
             touched (same bytes, new mtime), 40% added; and a tenth as many removed
  fresh      the changed folder into another data/ folder (cold): its manifests, check
             report, duplicates, summary and record must equal `changed`'s byte for byte
  figures    drawing the two figures alone (what a run whose manifests changed adds to
             an unchanged rerun besides the checks: TensorFlow's import, mostly)

Prints a table with the speed-ups and writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageOps  # noqa: E402

from benchmarks.photo_folder import make_photo_folder  # noqa: E402
from pipeline.files import write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "data.json"
COMPARED = (
    "train.csv",
    "val.csv",
    "test.csv",
    "classes.json",
    "check_report.csv",
    "duplicates.csv",
    "summary.json",
    "dataset.json",
)
CHECKED = re.compile(r"Checked (\d+) file\(s\), reused (\d+)")


def timed(command: list[str]) -> tuple[str, float, float]:
    """Run a command from this checkout: its output, wall seconds, peak RSS in MiB (the largest
    of the process and its children, from wait4)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(command[:4])} failed ({code}):\n{output[-3000:]}")
    return output, round(wall, 2), round(usage.ru_maxrss / 1024, 1)  # ru_maxrss: KiB (Linux)


def run_stage(photos: Path, out: Path) -> dict:
    """One `python -m pipeline data` in its own process: wall time, peak RSS, what it did."""
    output, wall, rss = timed(
        [
            sys.executable,
            "-m",
            "pipeline",
            "data",
            f"data.dataset=folder:{photos}",
            f"paths.data={out / 'data'}",
            f"paths.reports={out / 'reports'}",
        ]
    )
    found = CHECKED.search(output)
    return {
        "wall_s": wall,
        "peak_rss_mib": rss,
        "checked": int(found.group(1)) if found else None,
        "reused": int(found.group(2)) if found else None,
        "figures_kept": "kept: nothing they show changed" in output,
    }


# The part of a run whose manifests changed that is not checking: drawing the two figures
# (importing TensorFlow, tracing the input pipeline, matplotlib), alone in a process.
FIGURES = """
import sys
from pathlib import Path
from pipeline.config import load_config
from pipeline.data.reports import draw_data_reports
from pipeline.data.manifest import load_split, read_classes
from pipeline.data.provenance import read_data_summary
folder, reports = Path(sys.argv[1]), Path(sys.argv[2])
counts = read_data_summary(folder).counts
rows, classes = load_split(folder, "train"), read_classes(folder / "classes.json")
draw_data_reports(load_config(folder / "config.json"), folder, reports, counts, rows, classes)
"""


def run_figures(out: Path) -> dict:
    (folder,) = (p.parent for p in (out / "data").glob("*/dataset.json"))
    _, wall, rss = timed([sys.executable, "-c", FIGURES, str(folder), str(out / "figures")])
    return {"wall_s": wall, "peak_rss_mib": rss}


def change_folder(photos: Path, fraction: float, seed: int = 1) -> dict[str, int]:
    """Change ``fraction`` of the photos the ways a user does; returns how many of each."""
    rng = random.Random(seed)
    files = sorted(photos.glob("*/*.jpg"))
    n = max(10, round(len(files) * fraction))
    counts = {"re-encoded": n * 4 // 10, "touched": n * 2 // 10}
    counts["added"] = n - counts["re-encoded"] - counts["touched"]
    counts["removed"] = max(1, n // 10)
    picked = rng.sample(files, counts["re-encoded"] + counts["touched"] + counts["removed"])
    reencode = picked[: counts["re-encoded"]]
    touch = picked[counts["re-encoded"] : counts["re-encoded"] + counts["touched"]]
    remove = picked[counts["re-encoded"] + counts["touched"] :]
    for path in reencode:
        with Image.open(path) as image:
            image.load()
        image.save(path, "JPEG", quality=rng.randint(60, 74))  # below photo_folder's 75-95
    for path in touch:
        os.utime(path)
    for i, path in enumerate(rng.sample(files, counts["added"])):
        with Image.open(path) as image:
            ImageOps.mirror(image).save(path.with_name(f"added-{i}.jpg"), "JPEG", quality=90)
    for path in remove:
        path.unlink()
    return counts


def differing(a: Path, b: Path) -> list[str]:
    """The compared outputs that differ between the data set folders under a/ and b/."""
    (da,) = (a / "data").glob("*/dataset.json")
    (db,) = (b / "data").glob("*/dataset.json")
    return [n for n in COMPARED if (da.parent / n).read_bytes() != (db.parent / n).read_bytes()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/photos-20k"))
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=3, help="runs of the unchanged rerun")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        make_photo_folder(args.folder, args.count)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        photos = work / "photos"
        shutil.copytree(args.folder, photos)  # copy2: the originals' mtimes, long past
        print(f"{args.count} photos copied to {photos}; {os.cpu_count()} cores", flush=True)
        runs = {"first": run_stage(photos, work / "a")}
        print(f"first: {runs['first']}", flush=True)
        unchanged = [run_stage(photos, work / "a") for _ in range(args.rounds)]
        for r in unchanged:
            print(f"unchanged: {r}", flush=True)
        runs["unchanged"] = sorted(unchanged, key=lambda r: r["wall_s"])[len(unchanged) // 2]
        changes = change_folder(photos, args.changed)
        runs["changed"] = run_stage(photos, work / "a")
        print(f"changed {changes}: {runs['changed']}", flush=True)
        runs["fresh"] = run_stage(photos, work / "b")
        print(f"fresh: {runs['fresh']}", flush=True)
        differ = differing(work / "a", work / "b")
        figures = run_figures(work / "b")
        print(f"figures alone: {figures}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    expected = changes["re-encoded"] + changes["touched"] + changes["added"]
    as_expected = runs["changed"]["checked"] == expected and runs["unchanged"]["checked"] == 0
    speedups = {
        "unchanged_vs_first": runs["first"]["wall_s"] / runs["unchanged"]["wall_s"],
        "changed_vs_fresh": runs["fresh"]["wall_s"] / runs["changed"]["wall_s"],
        "changed_vs_first": runs["first"]["wall_s"] / runs["changed"]["wall_s"],
    }
    print(f"\n{args.count} photos, {os.cpu_count()} cores; `python -m pipeline data` per run")
    print(f"{'run':10s} {'wall s':>8s} {'peak RSS MiB':>13s} {'checked':>8s} {'reused':>8s}")
    for name, r in runs.items():
        print(
            f"{name:10s} {r['wall_s']:8.2f} {r['peak_rss_mib']:13.1f} "
            f"{r['checked']:8d} {r['reused']:8d}"
        )
    print(
        f"of which drawing the figures (TensorFlow import, sample grid, class plot), alone: "
        f"{figures['wall_s']:.2f} s, peak RSS {figures['peak_rss_mib']:.1f} MiB"
    )
    for name, ratio in speedups.items():
        print(f"speed-up {name.replace('_vs_', ' vs ')}: {ratio:.1f}x")
    print(f"files checked by `changed`: {runs['changed']['checked']} ({expected} changed or added)")
    print(
        "manifests, check report, duplicates, summary, record of `changed` and `fresh`: "
        + ("identical" if not differ else f"DIFFER: {', '.join(differ)}")
    )
    write_json(
        args.output,
        {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "photos": args.count,
            "cores": os.cpu_count(),
            "changes": changes,
            "runs": runs,
            "unchanged_rounds": unchanged,
            "figures_alone": figures,
            "speedups": {k: round(v, 2) for k, v in speedups.items()},
            "expected_checked": expected,
            "checked_as_expected": as_expected,
            "identical_to_fresh": not differ,
            "differing": differ,
        },
    )
    print(f"wrote {args.output}")
    if differ or not as_expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
