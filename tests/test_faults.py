"""Every known bad-input case, reproduced, so that none of them comes back.

The project rule: bad input gets one line on stderr, ``error: <what happened, to which
file or option>, <the fix>``, exit code 2 and no traceback, before long work starts where
it can be. Each test feeds one kind of bad input the way a user does (``pipeline.cli.main``,
what ``make`` runs) and checks that rule, or, for the cases that are not errors, the
output a user needs. The cases that need a trained run share one tiny run
(MobileNet 0.25 with random weights at 32 px, one phase-1 epoch on 32 generated photos),
trained once for the module. Section D reproduces the data cases: a run trained or scored
on the wrong data (manifests found by folder name, data options ignored, test images that
were training images, replaced archives, deleted photos).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import struct
import sys
import termios
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_split, read_classes
from pipeline.data.provenance import RUN_DATA_DIR, ProvenanceError, read_record
from pipeline.data.sources import SourceError
from pipeline.data.split import split_of
from pipeline.data.stage import ensure_manifests, prepare_data
from pipeline.evaluate.stage import evaluate
from pipeline.files import read_csv
from pipeline.summary import TrainSummary
from pipeline.training import train
from tests.imagegen import make_image


@dataclass
class TinyRun:
    root: Path
    overrides: list[str]
    run_dir: Path
    summary: TrainSummary
    stdout: str  # what `make train` printed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyRun:
    from pipeline.data.stage import prepare_data
    from pipeline.training import train

    root = tmp_path_factory.mktemp("faults")
    for c, label in enumerate(("cats", "dogs")):
        for i in range(16):
            make_image(root / "photos" / label / f"{i}", "rgb_jpeg", 48, 40, seed=100 * c + i)
    overrides = [
        f"data.dataset=folder:{root / 'photos'}",
        f"paths.data={root / 'data'}",
        f"paths.models={root / 'models'}",
        f"paths.reports={root / 'reports'}",
        "data.val_fraction=0.3",
        "data.test_fraction=0.3",
        "model.backbone=mobilenet",
        "model.alpha=0.25",
        "model.weights=none",
        "input.image_size=32",
        "input.batch_size=8",
        "train.head_epochs=1",
        "train.fine_tune_epochs=0",
    ]
    cfg = load_config(None, [*overrides, "train.run_name=tiny"])
    prepare_data(cfg, progress=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train(cfg)
    return TinyRun(root, overrides, Path(result.run_dir), result.summary, printed.getvalue())


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run a stage as `make` does; (exit code, stdout, stderr) of this call only."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code: int, err: str) -> str:
    """The one `error: ...` line the project rule allows; fails on anything else."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def photos(folder: Path, count: int = 3) -> Path:
    for i in range(count):
        make_image(folder / f"photo{i}", "rgb_jpeg", 48, 40, seed=500 + i)
    return folder


def copy_run(tiny: TinyRun, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.run_dir, tmp_path / "run"))


def predict_args(tiny: TinyRun, run_dir: Path, folder: Path, output: Path, *extra: str):
    return (
        "predict",
        f"predict.input={folder}",
        f"predict.output={output}",
        f"eval.run={run_dir}",
        f"paths.models={tiny.root / 'models'}",
        *extra,
    )


def terminal() -> tuple[int, io.TextIOWrapper]:
    """A real pseudo-terminal, 80 columns wide: (reading end, writable text file)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return master, os.fdopen(slave, "w")


def read_tty(master: int) -> str:
    """What was written to a pseudo-terminal whose other end is closed."""
    chunks = []
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunks.append(os.read(master, 65536))
        except OSError:  # Linux: EIO once the closed end is drained
            break
    return b"".join(chunks).decode(errors="replace")


# ----------------------------------------------------------------------------- A. configuration


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.yaml", "train:\n  head_lr: 1e-3\n  seed: [1\n", "line 4"),
        ("bad.yml", "train:\n\thead_lr: 1e-3\n", "line 2"),
        ("bad.toml", "[train]\nhead_lr = \n", "line 2"),
        ("bad.json", '{"train": {"head_lr": 1e-3,}}', "line 1"),
    ],
)
def test_a_malformed_config_file_names_the_file_the_line_and_the_fix(
    capsys, tmp_path, name, text, where
):
    path = tmp_path / name
    path.write_text(text)
    line = error_line(*cli(capsys, "config", "--config", str(path))[::2])
    assert f"Config file {path} is not valid" in line
    assert where in line and line.endswith("fix the syntax")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("input.shuffle_buffer=0", "input.shuffle_buffer must be 1 or more. Received: 0"),
        ("input.shuffle_buffer=-4", "input.shuffle_buffer must be 1 or more"),
        ("input.mixup=-1", "input.mixup must be 0 (off) or a positive MixUp alpha"),
        ("input.cutmix=-0.5", "input.cutmix must be in [0, 1]"),
        ("input.rotation=-0.1", "input.rotation must be in [0, 1]"),
        ("input.zoom=-0.2", "input.zoom must be in [0, 1]"),
        ("input.contrast=-0.2", "input.contrast must be in [0, 1]"),
        ("input.brightness=-0.2", "input.brightness must be in [0, 1]"),
        ("predict.top_k=0", "predict.top_k must be 1 or more. Received: 0"),
        ("eval.top_k=0", "eval.top_k must be 1 or more"),
        ("eval.gallery_size=-1", "eval.gallery_size must be 0 or more"),
        ("data.min_side=0", "data.min_side must be 1 or more"),
        ("data.max_pixels=0", "data.max_pixels must be 1 or more"),
        ("data.workers=-1", "data.workers must be 0 or more"),
        ("data.cache_size=-1", "data.cache_size must be 0 or more"),
        ("data.small_class_warning=-1", "data.small_class_warning must be 0 or more"),
        ("model.alpha=0", "model.alpha must be a positive width multiplier"),
        ("model.dropout=1", "model.dropout must be in [0, 1)"),
        # values only train would reach: `make config` refuses them before it
        ("train.ema=1", "train.ema must be in [0, 1)"),
        ("train.head_lr=0", "train.head_lr must be a positive learning rate"),
        ("train.patience=0", "train.patience must be at least 1 epoch"),
        ("train.lr_factor=1.5", "train.lr_factor must be between 0 and 1"),
        ("train.label_smoothing=1", "train.label_smoothing must be in [0, 1)"),
        ("train.fine_tune_epochs=-1", "train.fine_tune_epochs must be 0 or more"),
        ("train.run_name=../x", "train.run_name must be a folder name"),
        ("train.strategy=multi_worker", "needs train.run_name"),
    ],
)
def test_an_out_of_range_option_is_rejected_alike_by_every_stage(capsys, override, message):
    """`make config` validates exactly what `make train` does, before any work."""
    lines = {stage: error_line(*cli(capsys, stage, override)[::2]) for stage in STAGES}
    assert len(set(lines.values())) == 1, lines
    assert message in lines["config"]


STAGES = ("config", "train", "predict", "evaluate", "data")


@pytest.mark.parametrize("option", ["rotation", "zoom", "contrast", "brightness", "cutmix"])
def test_augmentation_factors_accepted_are_those_keras_accepts(option):
    """Each factor goes to one Keras layer; config refuses what that layer would refuse."""
    import keras

    from pipeline.config import ConfigError

    layer = {
        "rotation": keras.layers.RandomRotation,
        "zoom": keras.layers.RandomZoom,
        "contrast": keras.layers.RandomContrast,
        "brightness": keras.layers.RandomBrightness,
        "cutmix": keras.layers.CutMix,
    }[option]
    for value in (0.3, 1.0, 1.01, 2.0):
        try:
            layer(value)
            keras_accepts = True
        except ValueError:
            keras_accepts = False
        try:
            load_config(None, [f"input.{option}={value}"])
            config_accepts = True
        except ConfigError:
            config_accepts = False
        assert config_accepts == keras_accepts, (option, value)


def test_one_input_size_rule_for_every_stage(capsys):
    """The input-size rule lives in backbones.check_input_size; validate calls it."""
    from pipeline.backbones import check_input_size, get_backbone

    with pytest.raises(ValueError) as raised:
        check_input_size(get_backbone("inception_v3"), 60)
    line = error_line(*cli(capsys, "config", "input.image_size=60")[::2])
    assert line == f"error: {raised.value}"


# ----------------------------------------------------------------------------- B. runs


@pytest.mark.parametrize("other", ["mobilenet alpha 0.5", "small_cnn"])
def test_weights_for_another_backbone_or_alpha_name_the_mismatch(capsys, tiny, tmp_path, other):
    import keras

    from pipeline.model import build_base, classifier_spec

    if other == "small_cnn":
        base = build_base(
            classifier_spec(load_config(None, ["model.backbone=small_cnn", "input.image_size=32"]))
        )
    else:
        base = keras.applications.MobileNet(
            alpha=0.5, weights=None, include_top=False, input_shape=(32, 32, 3)
        )
    weights = tmp_path / "other.weights.h5"
    base.save_weights(weights)
    code, _, err = cli(
        capsys,
        "train",
        *tiny.overrides,
        f"model.weights={weights}",
        f"train.run_name=wrong-weights-{other.split()[0]}",
    )
    line = error_line(code, err)
    assert f"model.weights={weights} does not fit mobilenet (alpha 0.25): " in line
    assert "expects shape" in line
    assert line.endswith(
        "Use the weights made for this backbone and alpha (without the top), "
        "or model.weights=imagenet|none"
    )


def test_a_truncated_model_is_named_with_the_fix(capsys, tiny, tmp_path):
    run_dir = copy_run(tiny, tmp_path)
    model = run_dir / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    args = predict_args(tiny, run_dir, photos(tmp_path / "in"), tmp_path / "out.csv")
    line = error_line(*cli(capsys, *args)[::2])
    assert line == (
        f"error: {model} is not a readable Keras model (truncated or corrupt: not a "
        "complete .keras zip archive); retrain the run or restore the file"
    )


def test_labels_that_do_not_match_the_model_are_refused(capsys, tiny, tmp_path):
    run_dir = copy_run(tiny, tmp_path)
    (run_dir / "labels.json").write_text(json.dumps(["cats", "dogs", "owls"]))
    args = predict_args(tiny, run_dir, photos(tmp_path / "in"), tmp_path / "out.csv")
    line = error_line(*cli(capsys, *args)[::2])
    labels, model = run_dir / "labels.json", run_dir / "model.keras"
    assert f"{labels} lists 3 classes but {model} outputs 2" in line
    assert "Restore the run's own labels.json" in line
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("where", ["a folder", "below a file"])
def test_an_unwritable_out_fails_before_the_model_loads(capsys, tiny, tmp_path, where):
    """Checked first: the run's model here is damaged, and the error is still about OUT."""
    run_dir = copy_run(tiny, tmp_path)
    (run_dir / "model.keras").write_bytes(b"damaged")
    if where == "a folder":
        output = tmp_path / "results"
        output.mkdir()
        expected = f"OUT={output} is a folder; give a file name for the CSV"
    else:
        (tmp_path / "notes.txt").write_text("a file")
        output = tmp_path / "notes.txt" / "out.csv"
        expected = f"OUT={output}: {tmp_path / 'notes.txt'} is a file, so no folder can be made"
    args = predict_args(tiny, run_dir, photos(tmp_path / "in"), output)
    line = error_line(*cli(capsys, *args)[::2])
    assert expected in line


@pytest.mark.parametrize("content", ["notes only", "hidden and OS debris only", "nothing"])
def test_a_folder_without_images_is_an_error(capsys, tiny, tmp_path, content):
    folder = tmp_path / "in"
    folder.mkdir()
    if content == "notes only":
        make_image(folder / "notes", "notes_txt")
    elif content == "hidden and OS debris only":
        make_image(folder / ".hidden", "rgb_jpeg")
        make_image(folder / "__MACOSX" / "photo", "rgb_jpeg")
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    args = predict_args(tiny, tiny.run_dir, folder, tmp_path / "out.csv")
    line = error_line(*cli(capsys, *args)[::2])
    assert f"IN={folder}: no images found" in line
    assert line.endswith("give the folder that holds the photos")


def test_a_folder_of_unreadable_images_is_an_error_with_the_reasons_written(capsys, tiny, tmp_path):
    folder = tmp_path / "in"
    for kind in ("truncated_jpeg", "text_as_jpg", "empty", "notes_txt"):
        make_image(folder / kind, kind)
    output = tmp_path / "out.csv"
    line = error_line(*cli(capsys, *predict_args(tiny, tiny.run_dir, folder, output))[::2])
    assert line.startswith(f"error: IN={folder}: none of the 4 file(s) is a readable image (")
    assert "1 truncated or corrupt" in line and "1 empty file" in line
    assert f"each file's reason is in {output}" in line
    assert line.endswith("or replace the damaged files")
    with open(output, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["skipped"] * 4 and all(r["reason"] for r in rows)


def test_running_the_model_shows_progress(capsys, tiny, tmp_path, monkeypatch):
    """A log gets one line (no carriage returns); a terminal gets a bar that ends its line."""
    from pipeline.images import check_images
    from pipeline.predict.classifier import load_classifier, rows_from_checks

    folder = photos(tmp_path / "in", count=4)
    code, out, err = cli(capsys, *predict_args(tiny, tiny.run_dir, folder, tmp_path / "o.csv"))
    assert code == 0, err
    assert "Running the model on 4 images (1 batch of 8)" in out
    assert "\r" not in err

    clf = load_classifier(tiny.run_dir)
    rows = rows_from_checks(check_images(sorted(folder.iterdir()), progress=False))
    master, tty = terminal()
    with tty, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", tty)
        clf.probabilities(rows)
        tty.flush()
    shown = read_tty(master)
    assert "Running the model" in shown and "4/4" in shown
    assert shown.endswith("\n")


# ----------------------------------------------------------------------------- C. elsewhere


def test_small_classes_are_one_warning_line():
    from pipeline.data.split import check_split_counts

    counts = {
        "cats": {"train": 60, "val": 20, "test": 20},
        "dogs": {"train": 5, "val": 2, "test": 2},
        "owls": {"train": 20, "val": 5, "test": 5},
    }
    assert check_split_counts(counts, small_class=100) == [
        "2 of 3 classes have fewer than 100 images ('dogs' 9, 'owls' 30): expect noisy "
        "metrics for them; add images, or set data.small_class_warning to silence this"
    ]


def test_the_image_check_bar_stays_out_of_logs_and_ends_its_line(capsys, tmp_path, monkeypatch):
    from pipeline.images import check_images

    paths = [make_image(tmp_path / f"{i}", "rgb_jpeg", seed=i) for i in range(3)]
    capsys.readouterr()
    check_images(paths, workers=1)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here

    master, tty = terminal()
    with tty, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", tty)
        check_images(paths, workers=1)
        tty.flush()
    shown = read_tty(master)
    assert "Checking images" in shown and "3/3" in shown
    assert shown.endswith("\n")


def test_experiment_results_get_the_estimate_of_the_phases_that_ran(tiny):
    from pipeline.experiment import peak_training_memory

    training = tiny.summary.memory.estimate.training
    assert [name.split(":")[0] for name in training] == ["phase 1", "phase 2"]
    phase_one = next(iter(training.values())).realistic_bytes
    assert peak_training_memory(tiny.summary) == phase_one  # no phase 2
    assert peak_training_memory(TrainSummary.from_dict({})) is None


def test_measured_throughput_is_printed_without_train_csv(capsys, tmp_path):
    code, out, err = cli(
        capsys,
        "memory",
        "--no-table",
        "model.backbone=small_cnn",
        "model.cnn_width=4",
        "model.cnn_blocks=1",
        "input.image_size=32",
        "memory.throughput=measure",
        f"data.dataset=folder:{tmp_path / 'none'}",
        f"paths.data={tmp_path / 'data'}",
        f"paths.reports={tmp_path / 'reports'}",
    )
    assert code == 0, err
    assert "FLOP/s (measured: 3 training steps" in out
    assert "No epoch time: no train.csv yet" in out and "memory.epoch_images" in out


def test_train_prints_the_memory_of_the_phases_that_ran_and_why_the_peak_is_higher(tiny):
    line = next(s for s in tiny.stdout.splitlines() if s.startswith("Memory: "))
    assert "phase 1: base frozen" in line and "phase 2" not in line  # EPOCHS=0
    assert "MiB of it in use before training started" in line
    assert (
        "The estimate counts the model's tensors for one batch; the process peak adds "
        "TensorFlow's runtime, the input pipeline and Python." in line
    )


# ----------------------------------------------------------------------------- D. data

TINY_RUN = [
    "model.backbone=small_cnn",
    "model.cnn_blocks=1",
    "model.cnn_width=4",
    "input.image_size=32",
    "input.batch_size=8",
    "train.head_epochs=1",
    "train.fine_tune_epochs=0",
    "data.val_fraction=0.25",
    "data.test_fraction=0.25",
]


def make_photos(root: Path, classes: tuple[str, ...], per_class: int = 12, seed: int = 0) -> Path:
    for c, label in enumerate(classes):
        for i in range(per_class):
            make_image(root / label / f"{label}{i}", "rgb_jpeg", seed=seed + 100 * c + i)
    return root


def config(tmp_path: Path, folder: Path | str, *extra: str):
    return load_config(
        None,
        [
            f"data.dataset=folder:{folder}",
            f"paths.data={tmp_path / 'data'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.reports={tmp_path / 'reports'}",
            *TINY_RUN,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def seed42_run(tmp_path_factory):
    """A tiny run trained on split seed 42: (workspace, photo folder, TrainResult)."""
    tmp = tmp_path_factory.mktemp("provenance")
    photos = make_photos(tmp / "photos", ("ants", "bees", "wasps"), per_class=16)
    result = train(config(tmp, photos, "train.run_name=seed42"))
    return tmp, photos, result


def test_two_folders_with_one_name_never_share_manifests(tmp_path):
    a = make_photos(tmp_path / "a" / "photos", ("daisy", "roses"))
    b = make_photos(tmp_path / "b" / "photos", ("tulips", "irises"), seed=7)
    prepare_data(config(tmp_path, a), progress=False)
    cfg_b = config(tmp_path, b, "train.run_name=b")
    assert cfg_b.dataset_dir() != config(tmp_path, a).dataset_dir()
    result = train(cfg_b)
    labels = json.loads((result.run_dir / "labels.json").read_text())
    assert labels == ["irises", "tulips"]


def test_changed_split_options_rebuild_the_manifests_and_say_so(seed42_run, capsys, monkeypatch):
    import pipeline.data.listing

    tmp, photos, _ = seed42_run
    cfg = config(tmp, photos, "data.split_seed=7")
    listed = []
    list_candidates = pipeline.data.listing.list_candidates
    monkeypatch.setattr(
        pipeline.data.listing, "list_candidates", lambda s: listed.append(s) or list_candidates(s)
    )
    folder = ensure_manifests(cfg)
    assert "data.split_seed was 42, now 7" in capsys.readouterr().out
    assert len(listed) == 1  # the data stage reuses the listing the check made
    rows = load_split(folder, "train")
    assert {split_of(r.sha256, 7, 0.25, 0.25) for r in rows} == {"train"}
    assert read_record(folder).options["split_seed"] == 7
    ensure_manifests(cfg)  # nothing changed now: used as they are
    assert "Running the data stage" not in capsys.readouterr().out


def test_evaluate_scores_the_runs_own_split_whatever_make_data_did_since(seed42_run, capsys):
    tmp, photos, result = seed42_run
    prepare_data(config(tmp, photos, "data.split_seed=7"), progress=False)
    capsys.readouterr()
    cfg = config(tmp, photos, "eval.run=seed42", "data.split_seed=7")
    metrics = evaluate(cfg).metrics
    out = capsys.readouterr().out
    assert "data.split_seed was 42, now 7" in out and "scoring the run's own test split" in out
    trained = {r["sha256"] for r in read_csv(result.run_dir / RUN_DATA_DIR / "train.csv")}
    scored = [r["path"] for r in read_csv(tmp / "reports" / "seed42" / "predictions.csv")]
    recorded = load_split(result.run_dir / RUN_DATA_DIR, "test")
    assert scored == [r.path for r in recorded] and metrics["images"] == len(recorded)
    assert not trained & {r.sha256 for r in recorded}


def test_test_images_that_were_trained_on_are_refused_with_the_count(seed42_run, tmp_path, capsys):
    _, _, result = seed42_run
    run = tmp_path / "models" / "leaky"
    shutil.copytree(result.run_dir, run)
    recorded = run / RUN_DATA_DIR
    train_rows = (recorded / "train.csv").read_text().splitlines()
    with open(recorded / "test.csv", "a") as fh:
        fh.write("\n".join(train_rows[1:4]) + "\n")
    where = [f"paths.models={tmp_path / 'models'}", f"paths.reports={tmp_path / 'reports'}"]
    code, _, err = cli(capsys, "evaluate", *where, "eval.run=leaky")
    assert code == 2 and err.count("\n") == 1
    assert re.match(r"error: 3 of the \d+ test images have the same content as training", err)
    assert not (tmp_path / "reports").exists()


def test_a_photo_deleted_after_make_data_is_noticed(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", ("ants", "bees"))
    cfg = config(tmp_path, photos)
    folder = ensure_manifests(cfg)
    victim = Path(load_split(folder, "train")[0].path)
    victim.unlink()
    capsys.readouterr()
    ensure_manifests(cfg)
    assert "the files changed since `make data` (1 removed)" in capsys.readouterr().out
    assert str(victim) not in {
        r.path for s in ("train", "val", "test") for r in load_split(folder, s)
    }


def test_evaluate_refuses_when_a_test_image_is_gone(seed42_run, tmp_path):
    _, _, result = seed42_run
    copy = tmp_path / "models" / "gone"
    shutil.copytree(result.run_dir, copy)
    first = load_split(copy / RUN_DATA_DIR, "test")[0]
    moved = tmp_path / "moved.jpg"
    shutil.move(first.path, moved)
    cfg = load_config(None, [f"paths.models={tmp_path / 'models'}", "eval.run=gone"])
    try:
        with pytest.raises(ProvenanceError, match=r"^1 of the \d+ test images are missing"):
            evaluate(cfg)
    finally:
        shutil.move(moved, first.path)


def _zip_of(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def test_a_replaced_archive_is_extracted_again(tmp_path, capsys):
    archive = _zip_of(make_photos(tmp_path / "v1" / "photos", ("ants", "bees")), tmp_path / "p.zip")
    cfg = config(tmp_path, archive)
    folder = ensure_manifests(cfg)
    assert read_classes(folder / "classes.json") == ["ants", "bees"]
    stale = folder / ".extracted.partial-killed"  # what a kill -9 mid-extraction leaves
    stale.mkdir()
    archive.unlink()
    _zip_of(make_photos(tmp_path / "v2" / "photos", ("ants", "bees", "wasps")), archive)
    capsys.readouterr()
    ensure_manifests(cfg)
    out = capsys.readouterr().out
    assert "changed since it was extracted" in out and "the files changed" in out
    assert read_classes(folder / "classes.json") == ["ants", "bees", "wasps"]
    assert not stale.exists()


def test_a_refused_archive_leaves_no_folder_behind(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape/a.jpg", b"x")
    cfg = config(tmp_path, archive)
    with pytest.raises(SourceError, match="refusing this archive"):
        prepare_data(cfg, progress=False)
    assert not cfg.dataset_dir().exists()


def test_a_folder_holding_the_pipelines_own_data_is_refused(tmp_path):
    make_photos(tmp_path / "photos", ("ants", "bees"))
    cfg = config(tmp_path, tmp_path)
    with pytest.raises(SourceError, match="holds the pipeline's own"):
        prepare_data(cfg, progress=False)


def test_one_class_folder_is_named_as_one_class(tmp_path):
    photos = make_photos(tmp_path / "photos", ("daisy",))
    with pytest.raises(SourceError, match=r"holds one class folder \(daisy\); .* at least 2"):
        prepare_data(config(tmp_path, photos), progress=False)


def test_a_run_that_failed_before_its_first_epoch_can_be_started_again(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", ("ants", "bees"))
    mobilenet = ["model.backbone=mobilenet", "model.alpha=0.25", "train.run_name=again"]
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not weights")
    with pytest.raises(Exception):  # noqa: B017 - any failure before the first epoch
        train(config(tmp_path, photos, *mobilenet, f"model.weights={broken}"))
    assert (tmp_path / "models" / "again" / "config.json").is_file()
    result = train(config(tmp_path, photos, *mobilenet, "model.weights=none"))
    assert "stopped before its first epoch; starting afresh" in capsys.readouterr().out
    assert result.summary.weights == "none"
    assert (
        result.summary.data.fingerprint
        == read_record(config(tmp_path, photos).dataset_dir()).fingerprint
    )
