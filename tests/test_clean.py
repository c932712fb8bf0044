"""`make clean` removes the folders the pipeline made and never a byte of the user's files."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import sys
from pathlib import Path

from pipeline.clean.stage import CleanResult, clean
from pipeline.config import load_config
from pipeline.files import GENERATED_MARKER, generated_dir
from tests.support import needs_make, run_make


def _write(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else os.urandom(2048))
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every folder, file (its sha256) and link (its target) below root, links not followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "link -> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def user_inputs(data: Path, models: Path, reports: Path) -> None:
    """Every kind of input the README tells users to place by hand, and some they might."""
    for root in (data, models, reports):
        _write(root / "README.md", b"# tracked\n")
    _write(data / "flower_photos" / "daisy" / "x.jpg")
    _write(data / "flower_photos" / "roses" / "y.jpg")
    _write(data / "flower_photos.tgz")
    _write(data / "archive.zip")
    _write(data / "intel-image-classification.zip")
    _write(data / "intel-image-classification" / "seg_train" / "seg_train" / "sea" / "x.jpg")
    _write(data / "intel-image-classification" / "seg_pred" / "seg_pred" / "1.jpg")
    _write(data / "archive" / "seg_test" / "seg_test" / "forest" / "x.jpg")
    _write(data / "my notes ü.txt", b"where the photos came from\n")
    _write(data / "downloads" / "flower_photos.tgz")  # no marker: kept
    _write(models / "handmade" / "model.keras")
    (reports / "empty folder").mkdir(parents=True)


def pipeline_outputs(data: Path, models: Path, reports: Path, outside: Path) -> list[Path]:
    """Folders made with generated_dir, as the stages make them; returns the marked ones."""
    flowers = generated_dir(data / "flowers")
    _write(flowers / "train.csv")
    _write(flowers / "extracted" / "flower_photos" / "daisy" / "x.jpg")
    _write(flowers / "cache-342" / "daisy" / "x.jpg")
    partial = generated_dir(data / ".intel.partial-3f2a")  # an interrupted extraction
    _write(partial / "seg_train" / "sea" / "x.jpg")
    run = generated_dir(models / "flowers-mobilenet-20250101-120000")
    _write(run / "model.keras", os.urandom(3 * 1024 * 1024))
    read_only = _write(run / "logs" / "events.out")
    read_only.chmod(0o444)
    (run / "logs").chmod(0o555)
    os.symlink(data / "flower_photos", run / "photos-link")  # rmtree must not go through it
    report = generated_dir(reports / "flowers")
    _write(report / "class_distribution.png")
    memory = generated_dir(reports / "memory")
    _write(memory / "inception_v3-299-b32.md")
    experiments = generated_dir(reports / "experiments")
    _write(experiments / "heads" / "runs" / "r1" / "index.html")
    # A marked folder elsewhere, linked into data/: the link stays, the target is untouched.
    target = generated_dir(outside / "big disk")
    _write(target / "keep.bin")
    os.symlink(target, data / "linked")
    return [flowers, partial, run, report, memory, experiments]


@needs_make
def test_make_clean_removes_marked_folders_and_keeps_every_user_byte(tmp_path):
    data, models, reports = tmp_path / "data", tmp_path / "models", tmp_path / "reports"
    outside = tmp_path / "outside"
    user_inputs(data, models, reports)
    before = snapshot(tmp_path)
    marked = pipeline_outputs(data, models, reports, outside)
    outside_before = snapshot(outside)
    args = [f"paths.data={data}", f"paths.models={models}", f"paths.reports={reports}"]

    result = run_make("clean", "ARGS=" + " ".join(shlex.quote(a) for a in args))

    assert result.returncode == 0, result.stderr
    for folder in marked:
        assert not os.path.lexists(folder), folder
        assert f"removed: {folder}/ (" in result.stdout
    assert f"removed: {marked[2]}/ (3.0 MiB)" in result.stdout
    assert "removed 6 folder(s)" in result.stdout
    assert f"{data}/flower_photos/" in result.stdout
    assert "(not made by the pipeline)" in result.stdout
    assert f"{data / 'linked'} (a link, not followed)" in result.stdout
    after = snapshot(tmp_path)
    assert after.pop("data/linked") == "link -> " + str(outside / "big disk")
    assert {k: v for k, v in after.items() if not k.startswith("outside")} == before
    assert snapshot(outside) == outside_before


@needs_make
def test_make_clean_needs_no_virtualenv(tmp_path):
    """Before `make setup`: the standard library alone (-S: no site-packages) runs it."""
    data = tmp_path / "data"
    marked = generated_dir(data / "flowers")
    user = _write(data / "flower_photos.tgz")
    no_venv = tmp_path / "no-venv"
    args = f"ARGS=paths.data={data} paths.models={tmp_path}/m paths.reports={tmp_path}/r"

    result = run_make("clean", args, venv=no_venv, python=f"{sys.executable} -S")

    assert result.returncode == 0, result.stderr
    assert not marked.exists() and user.exists()
    assert not no_venv.exists()  # clean did not try to create or install the virtualenv


def test_clean_returns_what_it_removed_and_kept(tmp_path, capsys):
    data = tmp_path / "data"
    run = generated_dir(data / "run")
    locked = run / "locked"
    _write(locked / "a.bin")
    locked.chmod(stat.S_IRUSR)  # not even listable: clean unlocks it first
    fake = _write(data / "fake" / "x.jpg").parent
    os.symlink(tmp_path / "nowhere", fake / GENERATED_MARKER)  # a linked marker does not count
    marker_dir = data / "odd"
    (marker_dir / GENERATED_MARKER).mkdir(parents=True)  # nor does a folder named like it
    cfg = load_config(
        None,
        [f"paths.data={data}", f"paths.models={tmp_path / 'absent'}", f"paths.reports={data}"],
    )

    result = clean(cfg)

    assert result == CleanResult(removed=[run], kept=[fake, marker_dir])
    assert not run.exists() and fake.is_dir() and marker_dir.is_dir()
    assert clean(cfg) == CleanResult(removed=[], kept=[fake, marker_dir])
    out = capsys.readouterr().out
    assert "nothing to remove" in out and f"kept: {fake}/, {marker_dir}/" in out
