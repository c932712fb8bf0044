"""Issue 29, safe under faults: every failing case of the adversarial run, reproduced.

Four causes, one section each: ownership recorded rather than inferred (A), exclusive locks
on what two processes write (B), sources and inputs checked (C), every exception one line
(D); then the minor cases (E) and a full disk (F, a small tmpfs: the tests run as root, as
CI does). Each case runs the real command line (``pipeline.cli.main``, what ``make`` runs,
or ``python -m pipeline`` in a process of its own where two processes or a hang are the
point) on tiny generated photos and a small CNN.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import OS_ERRORS, exit_status, main, os_error_line
from pipeline.files import ADOPTED_MARKER, GENERATED_MARKER, generated_dir, read_csv
from tests.imagegen import make_image
from tests.support import REPO, needs_make, run_make

TINY = [
    "model.backbone=small_cnn",
    "model.cnn_blocks=1",
    "model.cnn_width=4",
    "input.image_size=32",
    "input.batch_size=8",
    "train.head_epochs=2",
    "train.fine_tune_epochs=0",
    "data.val_fraction=0.25",
    "data.test_fraction=0.25",
]


def make_photos(root: Path, classes=("ants", "bees"), per_class: int = 16, seed: int = 0) -> Path:
    for c, label in enumerate(classes):
        for i in range(per_class):
            make_image(root / label / f"{label}{i}", "rgb_jpeg", 48, 40, seed=seed + 100 * c + i)
    return root


def where(root: Path) -> list[str]:
    return [f"paths.{p}={root / p}" for p in ("data", "models", "reports")]


@dataclass
class Workspace:
    root: Path
    photos: Path
    run_dir: Path

    def args(self, *extra: str, root: Path | None = None) -> list[str]:
        return [f"data.dataset=folder:{self.photos}", *where(root or self.root), *TINY, *extra]

    def predict(self, folder: Path, out: Path, *extra: str) -> list[str]:
        return [
            "predict",
            f"predict.input={folder}",
            f"predict.output={out}",
            f"eval.run={self.run_dir}",
            f"paths.models={self.root / 'models'}",
            *extra,
        ]


def cli(capfd, *argv: str) -> tuple[int, str, str]:
    """A stage run as `make` runs it: (exit code, stdout, stderr), C++ output included."""
    capfd.readouterr()
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def error_line(code: int, err: str) -> str:
    """The one `error: ...` line the rule allows; fails on a traceback or anything else."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert code != 0 and len(lines) == 1, (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("faults29")
    photos = make_photos(root / "photos")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *Workspace(root, photos, root).args("train.run_name=tiny")]) == 0
    return Workspace(root, photos, root / "models" / "tiny")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def pipeline_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


def read_until(proc: subprocess.Popen, text: str, seconds: float = 120) -> str:
    """Lines of the process's stdout up to the first that holds ``text``."""
    deadline, seen = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    pytest.fail(f"{text!r} never printed: {''.join(seen)} {proc.stderr.read()}")


HOLD = (
    "import sys, time\n"
    "from pipeline.files import exclusive\n"
    "with exclusive(sys.argv[1], 'a test', wait=False):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@contextlib.contextmanager
def held(target: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the lock on ``target``; killed (-9) when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- A. ownership


def test_make_data_refuses_a_users_folder_named_like_the_data_set_and_clean_keeps_it(
    tmp_path, capfd
):
    mine = tmp_path / "data" / "flowers"
    photo = make_image(mine / "daisy" / "a", "rgb_jpeg", 48, 40)
    line = error_line(*cli(capfd, "data", "data.dataset=flowers", *where(tmp_path))[::2])
    assert f"{mine}/ already exists and holds files the pipeline did not make" in line
    assert "DATASET=folder:PATH" in line
    assert sorted(p.name for p in mine.iterdir()) == ["daisy"]  # nothing stamped
    assert cli(capfd, "clean", *where(tmp_path))[0] == 0
    assert photo.is_file()


@needs_make
def test_through_make_a_failed_make_data_never_lets_make_clean_take_the_photos(tmp_path):
    """A user's steps: mkdir data/flowers, copy photos in, make data, make clean."""
    photo = make_image(tmp_path / "data" / "flowers" / "daisy" / "a", "rgb_jpeg", 48, 40)
    paths = "ARGS=" + " ".join(shlex.quote(a) for a in where(tmp_path))
    data = run_make("data", "DATASET=flowers", paths)
    assert data.returncode != 0 and "Traceback" not in data.stderr
    assert f"error: {photo.parents[1]}/ already exists" in data.stderr
    assert run_make("clean", paths).returncode == 0
    assert photo.is_file() and sorted(os.listdir(photo.parents[1])) == ["daisy"]


def test_train_refuses_a_users_folder_as_its_run_folder(ws, tmp_path, capfd):
    notes = tmp_path / "models" / "mine" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    args = ws.args("train.run_name=mine", f"paths.models={tmp_path / 'models'}")
    line = error_line(*cli(capfd, "train", *args)[::2])
    assert f"{notes.parent}/ already exists and holds files the pipeline did not make" in line
    assert os.listdir(notes.parent) == ["notes.txt"] and notes.read_text() == "my notes"


def test_an_empty_folder_of_the_users_is_written_into_and_clean_keeps_it(ws, tmp_path, capfd):
    models = tmp_path / "models"
    (models / "empty").mkdir(parents=True)
    run = ws.args(f"paths.models={models}", f"paths.reports={tmp_path / 'reports'}")
    assert cli(capfd, "train", *run, "train.run_name=empty")[0] == 0
    assert (models / "empty" / ADOPTED_MARKER).is_file()
    assert not (models / "empty" / GENERATED_MARKER).exists()
    made = generated_dir(models / "made")  # as every stage makes its folders
    assert cli(capfd, "train", *run, "train.run_name=empty")[0] == 2  # finished: refused
    assert cli(capfd, "clean", *where(tmp_path))[0] == 0
    assert (models / "empty" / "model.keras").is_file() and not made.exists()


def test_a_folder_is_created_and_stamped_in_one_step(tmp_path):
    """No moment where the folder exists unstamped: it appears by rename, marker inside."""
    made = generated_dir(tmp_path / "a" / "b")
    assert sorted(os.listdir(made)) == [GENERATED_MARKER]
    assert sorted(os.listdir(made.parent)) == ["b"]  # no temporary folder left beside it


# ----------------------------------------------------------------------------- B. two at once


def test_two_predicts_to_one_out_never_share_it(ws, tmp_path, capfd):
    folder = make_photos(tmp_path / "in", per_class=3)
    out = tmp_path / "p.csv"
    with held(out) as holder:
        line = error_line(*cli(capfd, *ws.predict(folder, out))[::2])
        assert f"{out} is being written by process {holder.pid} (a test); wait for it" in line
        assert not out.exists() and not list(tmp_path.glob(".p.csv.partial*"))
    # The holder was killed with -9: its lock went with it, and a rerun is not blocked.
    code, _, err = cli(capfd, *ws.predict(folder, out))
    assert code == 0, err
    assert len(read_csv(out)) == 6


@pytest.mark.slow  # a second process that draws the data reports: 20 to 40 s on 2 busy cores
def test_a_second_make_data_waits_for_the_first_and_then_finishes(ws, tmp_path):
    photos = make_photos(tmp_path / "photos")
    args = ["data", f"data.dataset=folder:{photos}", *where(tmp_path), *TINY]
    from pipeline.config import load_config

    with held(load_config(None, args[1:]).dataset_dir()) as holder:
        second = pipeline_process(*args)
        assert f"Waiting for process {holder.pid}" in read_until(second, "Waiting for")
        time.sleep(0.5)
        assert second.poll() is None  # still waiting
    assert second.wait(timeout=120) == 0, second.stderr.read()
    assert "Manifests written to" in second.stdout.read()


@pytest.mark.slow  # two trainings, one in a process of its own: about 30 s on 2 busy cores
def test_a_second_train_with_the_same_options_is_refused_while_the_first_runs(ws, tmp_path, capfd):
    """Without RUN_NAME the second used to resume the first's folder while it trained."""
    args = ["train", *ws.args(*where(tmp_path)[1:], "train.head_epochs=30")]
    first = pipeline_process(*args)
    try:
        run_dir = Path(read_until(first, "Run folder: ").split("Run folder: ")[1].strip())
        first.send_signal(signal.SIGSTOP)  # it holds the lock, mid-run
        line = error_line(*cli(capfd, *args)[::2])
        assert f"{run_dir} is being written by process {first.pid} (make train)" in line
        assert "RUN_NAME=" in line
    finally:
        first.kill()
        first.wait()
    code, out, err = cli(capfd, *args)  # killed: the rerun resumes its folder
    assert code == 0, err
    assert f"Resuming: {run_dir}" in out and (run_dir / "model.keras").is_file()


@pytest.mark.slow  # a TFLite conversion and an evaluation in processes of their own: ~40 s
@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_a_second_evaluate_or_export_of_a_run_waits_for_the_first(ws, stage):
    """export.json keeps earlier variants' figures, and export edits evaluate's index.html:
    two writers at once would lose one's figures, so the second waits for the first."""
    target = ws.run_dir / "export" if stage == "export" else ws.root / "reports" / "tiny"
    target.mkdir(parents=True, exist_ok=True)
    with held(target) as holder:
        second = pipeline_process(stage, *ws.args("eval.run=tiny", "export.format=tflite"))
        assert f"Waiting for process {holder.pid}" in read_until(second, "Waiting for")
        time.sleep(0.5)
        assert second.poll() is None  # still waiting
    assert second.wait(timeout=300) == 0, second.stderr.read()
    written = ws.run_dir / "export" / "export.json" if stage == "export" else target / "index.html"
    assert written.is_file()


# ----------------------------------------------------------------------------- C. sources, inputs


def _archive(photos: Path, archive: Path, top: str) -> Path:
    """``photos`` packed under ``top``/ as a .zip or a .tgz, by the name's suffix."""
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in files:
                zf.write(f, f"{top}/{f.relative_to(photos).as_posix()}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for f in files:
                tf.add(f, f"{top}/{f.relative_to(photos).as_posix()}")
    return archive


@pytest.mark.parametrize("dataset", ["flowers", "intel", "folder"])
def test_a_replaced_archive_is_extracted_again_for_every_source(dataset, tmp_path, capfd):
    data = tmp_path / "data"
    data.mkdir()
    name, top, spec = {
        "flowers": ("flower_photos.tgz", "flower_photos", "flowers"),
        "intel": ("archive.zip", "seg_train/seg_train", "intel"),
        "folder": ("mine.zip", "photos", f"folder:{data / 'mine.zip'}"),
    }[dataset]
    args = ["data", f"data.dataset={spec}", *where(tmp_path), *TINY]
    _archive(make_photos(tmp_path / "v1"), data / name, top)
    assert cli(capfd, *args)[0] == 0
    (data / name).unlink()
    _archive(make_photos(tmp_path / "v2", ("ants", "bees", "wasps")), data / name, top)
    code, out, err = cli(capfd, *args)
    assert code == 0, err
    assert f"{data / name} changed since it was extracted: extracting it again" in out
    assert "wasps" in out  # the new class is in the table


def test_predict_refuses_labels_that_differ_from_the_runs_classes(ws, tmp_path, capfd):
    run = Path(shutil.copytree(ws.run_dir, tmp_path / "run"))
    labels = run / "labels.json"
    labels.write_text(json.dumps(list(reversed(json.loads(labels.read_text())))))
    args = ws.predict(make_photos(tmp_path / "in", per_class=1), tmp_path / "p.csv")
    args[3] = f"eval.run={run}"
    line = error_line(*cli(capfd, *args)[::2])
    assert f"{labels} differs from the classes the run was trained on" in line
    assert "output 0 is 'ants', not 'bees'" in line
    assert not (tmp_path / "p.csv").exists()


def test_out_naming_a_photo_inside_in_is_refused_and_the_photo_kept(ws, tmp_path, capfd):
    folder = make_photos(tmp_path / "in", per_class=1)
    photo = folder / "ants" / "ants0.jpg"
    before = photo.read_bytes()
    line = error_line(*cli(capfd, *ws.predict(folder, photo))[::2])
    assert f"OUT={photo} is an image's name inside IN={folder}" in line
    assert photo.read_bytes() == before


def test_sort_into_inside_in_is_left_out_of_the_input_on_a_rerun(ws, tmp_path, capfd):
    folder = make_photos(tmp_path / "in", per_class=2)
    out, sorted_into = tmp_path / "p.csv", folder / "sorted"
    args = [*ws.predict(folder, out), f"predict.sort_into={sorted_into}"]
    assert cli(capfd, *args)[0] == 0
    assert len(list(sorted_into.rglob("*.jpg"))) == 4
    code, stdout, err = cli(capfd, *args)
    assert code == 0, err
    assert f"SORT_INTO={sorted_into} is inside IN={folder}: its 4 file(s) are left out" in stdout
    assert len(read_csv(out)) == 4


def _hostile(folder: Path) -> Path:
    """A FIFO, a link loop and a dangling link named like photos, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink(folder / "loop2.jpg", folder / "loop1.jpg")
    os.symlink(folder / "loop1.jpg", folder / "loop2.jpg")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    return folder


HOSTILE_REASONS = {
    "fifo.jpg": "not a regular file (a FIFO)",
    "loop1.jpg": "symbolic link loop",
    "loop2.jpg": "symbolic link loop",
    "dangling.jpg": "dangling symbolic link",
}


@contextlib.contextmanager
def no_hang(seconds: int = 120) -> Iterator[None]:
    """Fail, rather than hang the suite, when something blocks (opening a FIFO does)."""

    def fail(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_predict_skips_a_fifo_and_broken_links_with_a_reason(ws, tmp_path, capfd):
    folder = _hostile(make_photos(tmp_path / "in", per_class=1))
    out = tmp_path / "p.csv"
    with no_hang():
        code, _, err = cli(capfd, *ws.predict(folder, out))
    assert code == 0, err
    reasons = {Path(r["path"]).name: r["reason"] for r in read_csv(out) if r["status"] != "ok"}
    assert set(reasons) == set(HOSTILE_REASONS)
    assert all(reasons[n].startswith(why) for n, why in HOSTILE_REASONS.items()), reasons


def test_make_data_skips_a_fifo_and_broken_links_with_a_reason(tmp_path, capfd):
    photos = make_photos(tmp_path / "photos")
    _hostile(photos / "ants")
    with no_hang():
        code, out, err = cli(capfd, "data", f"data.dataset=folder:{photos}", *where(tmp_path))
    assert code == 0, err
    assert "Skipped 4 file(s)" in out
    (folder,) = (tmp_path / "data").iterdir()
    checks = {Path(r["path"]).name: r["reason"] for r in read_csv(folder / "check_report.csv")}
    assert all(checks[n].startswith(why) for n, why in HOSTILE_REASONS.items()), checks


def test_an_out_in_a_folder_that_does_not_exist_yet_is_made_first(ws, tmp_path, capfd):
    out = tmp_path / "new" / "deeper" / "p.csv"
    folder = make_photos(tmp_path / "in", per_class=1)
    code, _, err = cli(capfd, *ws.predict(folder, out))
    assert code == 0, err
    assert len(read_csv(out)) == 2


# ----------------------------------------------------------------------------- D. one line


@pytest.mark.parametrize("spec", ["maxpool3x3s0", "conv0x0:5", "conv3x3:0", "dense:0"])
def test_the_memory_grammar_refuses_zero_sizes(spec, capfd):
    args = ["memory", "--no-table", "--input", "32x32x3", "--layers", f"flatten,{spec}"]
    if not spec.startswith("dense"):
        args[-1] = spec
    line = error_line(*cli(capfd, *args)[::2])
    assert f"--layers: {spec!r} has a " in line and "of 0;" in line


def test_an_unexpected_exception_is_one_line_and_its_trace_is_kept(capfd):
    capfd.readouterr()
    assert exit_status(lambda: 1 / 0) == 1
    line = error_line(1, capfd.readouterr().err)
    assert line.startswith("error: an internal error (ZeroDivisionError: division by zero)")
    log = Path(line.split("the full trace is in ")[1].split(": please report")[0])
    assert "Traceback" in log.read_text() and "1 / 0" in log.read_text()
    log.unlink()


@pytest.mark.parametrize("code", sorted(OS_ERRORS, key=errno.errorcode.get))
def test_every_mapped_os_error_is_one_line_naming_the_path(code):
    exc = OSError(code, os.strerror(code), "/data/some file.jpg")
    what, fix = OS_ERRORS[code]
    assert os_error_line(exc) == f"/data/some file.jpg: {what}; {fix}"


def test_a_file_name_too_long_is_one_line(ws, tmp_path, capfd):
    out = tmp_path / ("x" * 300 + ".csv")
    line = error_line(*cli(capfd, *ws.predict(make_photos(tmp_path / "in", per_class=1), out))[::2])
    assert line == f"error: {out}: file name too long; use a shorter path or file name"


def test_a_read_only_disk_is_one_line(ws, tmp_path, capfd):
    disk = mounted(tmp_path / "ro", "ro,size=1m")
    try:
        out = disk / "p.csv"
        args = ws.predict(make_photos(tmp_path / "in", per_class=1), out)
        line = error_line(*cli(capfd, *args)[::2])
        assert "read-only file system; choose a path on a writable disk" in line
        assert str(disk) in line
    finally:
        unmount(disk)


def as_a_plain_user() -> list[str]:
    """A command prefix under which file permissions apply. Root (as CI runs) passes them by
    its DAC capabilities; setpriv (util-linux) drops those from the bounding set, so the
    process keeps uid 0, and the interpreter under /root, but meets EACCES as a user does."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_a_folder_this_user_cannot_write_is_one_line(tmp_path):
    """EACCES, really raised: make data into a data folder without write permission."""
    locked = tmp_path / "data"
    locked.mkdir(mode=0o555)
    photos = make_photos(tmp_path / "in", per_class=2)
    command = [*as_a_plain_user(), sys.executable, "-m", "pipeline", "data"]
    command += [f"data.dataset=folder:{photos}", *where(tmp_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=environment())
    finally:
        locked.chmod(0o755)
    line = error_line(done.returncode, done.stderr)
    assert done.returncode == 2 and str(locked) in line
    assert "permission denied; make it readable/writable for this user" in line
    assert [p.name for p in locked.iterdir()] == []  # nothing half-made


def test_a_photo_this_user_cannot_read_is_skipped_with_its_reason(tmp_path):
    photos = make_photos(tmp_path / "in")
    hidden = sorted(photos.glob("ants/*"))[0]
    hidden.chmod(0)
    command = [*as_a_plain_user(), sys.executable, "-m", "pipeline", "data"]
    command += [f"data.dataset=folder:{photos}", *where(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "Skipped 1 file(s): 1 unreadable" in done.stdout
    report = read_csv(next((tmp_path / "data").glob("*/check_report.csv")))
    skipped = [r for r in report if r["status"] == "skipped"]
    assert [(r["path"], r["reason"]) for r in skipped] == [
        (str(hidden), "unreadable: Permission denied")
    ]


def hostile_commands(ws: Workspace, tmp: Path) -> dict[str, list[str]]:
    folder = make_photos(tmp / "in", per_class=1)
    return {
        "config file is a folder": ["config", "--config", str(tmp)],
        "negative seed": ["config", "train.seed=-1"],
        "no such data folder": ["data", "data.dataset=folder:/nonexistent", *where(tmp)],
        "unknown data set": ["data", "data.dataset=nope", *where(tmp)],
        "train with a negative seed": ["train", *ws.args("train.seed=-1", root=tmp)],
        "evaluate a missing run": ["evaluate", "eval.run=nothing", *where(tmp)],
        "export a missing run": ["export", "eval.run=nothing", *where(tmp)],
        "predict a missing folder": ws.predict(tmp / "none", tmp / "p.csv"),
        "predict into an image": ws.predict(folder, folder / "ants" / "ants0.jpg"),
        "predict below a file": ws.predict(folder, folder / "ants" / "ants0.jpg" / "p.csv"),
        "memory stride 0": ["memory", "--input", "32x32x3", "--layers", "maxpool3x3s0"],
        "memory input 0": ["memory", "--input", "0x0x3", "--layers", "relu"],
        "repeated grid value": ["experiment", "experiment.name=x", "experiment.grid=a.b=1,1"],
    }


HOSTILE = [
    "config file is a folder",
    "negative seed",
    "no such data folder",
    "unknown data set",
    "train with a negative seed",
    "evaluate a missing run",
    "export a missing run",
    "predict a missing folder",
    "predict into an image",
    "predict below a file",
    "memory stride 0",
    "memory input 0",
    "repeated grid value",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_no_hostile_input_ever_gives_a_traceback(case, ws, tmp_path, capfd):
    argv = hostile_commands(ws, tmp_path)[case]
    code, _, err = cli(capfd, *argv)
    assert "Traceback" not in err, err
    assert not (code == 0 and "error:" in err), err
    assert code != 0 and err.strip().count("\n") == 0 and err.startswith("error: "), (code, err)


# ----------------------------------------------------------------------------- E. minor cases


def test_a_class_folder_starting_with_a_dot_is_named_when_dropped(tmp_path, capfd):
    photos = make_photos(tmp_path / "photos")
    for i in range(3):
        make_image(photos / ".wasps" / f"w{i}", "rgb_jpeg", 48, 40, seed=900 + i)
    code, out, err = cli(capfd, "data", f"data.dataset=folder:{photos}", *where(tmp_path))
    assert code == 0, err
    assert f"Ignored {photos / '.wasps'}/ (3 image(s)): a folder whose name starts" in out


def test_a_repeated_grid_value_is_refused(capfd):
    args = ["experiment", "experiment.name=x", "experiment.grid=model.cnn_width=8,8"]
    line = error_line(*cli(capfd, *args)[::2])
    assert "experiment.grid: model.cnn_width lists 8 more than once" in line


def test_an_experiment_whose_every_run_failed_is_an_error(ws, tmp_path, capfd):
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not weights")
    args = ws.args(
        *where(tmp_path)[1:],
        "model.backbone=mobilenet",
        "model.alpha=0.25",
        f"model.weights={broken}",
        "experiment.name=doomed",
        "experiment.repeats=1",
    )
    line = error_line(*cli(capfd, "experiment", *args)[::2])
    assert "all 1 run(s) of the experiment failed" in line


def test_a_config_that_is_a_folder_is_named_as_a_folder(tmp_path, capfd):
    line = error_line(*cli(capfd, "config", "--config", str(tmp_path))[::2])
    assert line == f"error: Config file {tmp_path} is a folder; give a .toml/.yaml/.json file"


def test_a_negative_seed_is_refused_by_make_config(capfd):
    line = error_line(*cli(capfd, "config", "train.seed=-1")[::2])
    assert "train.seed must be between 0 and 4294967295. Received: -1" in line


def test_photos_copied_just_before_make_data_are_remembered(tmp_path, capfd):
    photos = make_photos(tmp_path / "photos")  # written just now: within the racy window
    args = ["data", f"data.dataset=folder:{photos}", *where(tmp_path)]
    assert cli(capfd, *args)[0] == 0
    code, out, err = cli(capfd, *args)
    assert code == 0, err
    assert "Checked 0 file(s), reused 32 earlier check(s)" in out


# ----------------------------------------------------------------------------- F. a full disk


def mounted(folder: Path, options: str) -> Path:
    """A tmpfs at ``folder`` (the tests run as root, as CI does)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (with CAP_SYS_ADMIN in a container)")
    return folder


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    disk = mounted(tmp_path / "disk", "size=8m")
    try:
        yield disk
    finally:
        unmount(disk)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but for ``leave`` bytes; delete the returned file to free it."""
    filler = disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def files_below(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "filler"
    }


def test_a_full_disk_in_make_data_loses_nothing_and_a_rerun_matches(tmp_path, small_disk, capfd):
    photos = make_photos(tmp_path / "photos")
    reference = tmp_path / "reference"
    assert cli(capfd, "data", f"data.dataset=folder:{photos}", *where(reference))[0] == 0
    args = ["data", f"data.dataset=folder:{photos}", *where(small_disk)]
    filler = fill(small_disk, leave=8192)
    line = error_line(*cli(capfd, *args)[::2])
    assert "no space left on the device; free some space" in line and str(small_disk) in line
    filler.unlink()
    assert cli(capfd, *args)[0] == 0
    made, expected = files_below(small_disk / "data"), files_below(reference / "data")
    for name in ("train.csv", "val.csv", "test.csv", "classes.json"):
        (ours,) = [v for k, v in made.items() if k.endswith("/" + name)]
        (theirs,) = [v for k, v in expected.items() if k.endswith("/" + name)]
        assert ours == theirs


@pytest.mark.slow  # two processes of make data, the second draws its reports: 30 s or more
def test_a_file_size_limit_in_make_data_is_one_line_and_a_rerun_matches(tmp_path):
    """RLIMIT_FSIZE (ulimit -f), which needs no root: the write fails with EFBIG, not SIGXFSZ."""
    import resource

    photos = make_photos(tmp_path / "photos")
    args = ["data", f"data.dataset=folder:{photos}", *where(tmp_path)]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))

    first = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=environment(),
        preexec_fn=limit,
        timeout=300,
    )
    line = error_line(first.returncode, first.stderr)
    assert "file too large for this file system or its limit; free some space" in line
    assert str(tmp_path / "data") in line
    (folder,) = [p for p in (tmp_path / "data").iterdir() if p.is_dir()]
    assert not (folder / "dataset.json").exists()  # the record that vouches: not written
    rerun = pipeline_process(*args)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert (folder / "dataset.json").is_file()


def test_a_full_disk_in_make_predict_leaves_no_half_csv_and_a_rerun_matches(
    ws, tmp_path, small_disk, capfd
):
    folder = make_photos(tmp_path / "in", per_class=20)
    assert cli(capfd, *ws.predict(folder, tmp_path / "reference.csv"))[0] == 0
    out = small_disk / "p.csv"
    filler = fill(small_disk, leave=2048)
    line = error_line(*cli(capfd, *ws.predict(folder, out))[::2])
    assert "no space left on the device; free some space" in line and str(small_disk) in line
    assert not out.exists()
    filler.unlink()
    assert cli(capfd, *ws.predict(folder, out))[0] == 0
    assert out.read_bytes() == (tmp_path / "reference.csv").read_bytes()


@pytest.mark.slow  # two trainings in processes of their own: 40 s or more on 2 cores
def test_a_full_disk_in_make_train_stops_cleanly_and_the_rerun_resumes(ws, tmp_path, small_disk):
    args = ["train", *ws.args(f"paths.models={small_disk}", "train.head_epochs=6")]
    filler = fill(small_disk, leave=96 * 1024)
    first = pipeline_process(*args)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 2, err  # not a crash: no signal, no traceback
    assert "Traceback" not in err and "no space left on the device" in err
    filler.unlink()
    rerun = pipeline_process(*args)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "Resuming" in out or "starting afresh" in out
    (run_dir,) = [p for p in small_disk.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "labels.json").read_text()) == ["ants", "bees"]
    # The same outputs as a run that never failed: its weights and its epochs.
    reference = pipeline_process(
        "train", *ws.args(f"paths.models={tmp_path / 'ref'}", "train.head_epochs=6")
    )
    assert reference.wait(timeout=300) == 0
    (ref_dir,) = [p for p in (tmp_path / "ref").iterdir() if p.is_dir()]
    for mine, theirs in zip(trained_weights(run_dir), trained_weights(ref_dir), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert epochs_of(run_dir) == epochs_of(ref_dir)


def trained_weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


def epochs_of(run_dir: Path) -> list[dict[str, str]]:
    """history.csv without its timings (seconds, images/s), which differ run to run."""
    rows = read_csv(run_dir / "history.csv")
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]
