"""Prediction: the CSV equals the model's own output; bad files are listed, never fatal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import with_overrides
from pipeline.files import read_csv
from pipeline.images import NOT_UTF8, check_image
from pipeline.predict.classifier import load_classifier, rows_from_checks
from pipeline.predict.stage import partial_key, predict
from tests.imagegen import make_image
from tests.support import REPO


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, flowers_mini):
    root = tmp_path_factory.mktemp("to_classify") / "new photos"
    for i, class_dir in enumerate(sorted(flowers_mini.iterdir())):
        for photo in sorted(class_dir.iterdir())[-2:]:
            target = root / ("nested/deeper" if i % 2 else "") / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
    make_image(root / "broken", "truncated_jpeg")
    make_image(root / "empty", "empty")
    (root / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def predicted(trained_run, photo_folder, tmp_path_factory):
    cfg, run_dir = trained_run
    out = tmp_path_factory.mktemp("pred")
    cfg = with_overrides(
        cfg,
        {
            "eval.run": str(run_dir),
            "predict.input": str(photo_folder),
            "predict.output": str(out / "predictions.csv"),
            "predict.sort_into": str(out / "sorted"),
        },
    )
    return cfg, predict(cfg), read_csv(out / "predictions.csv")


def test_csv_equals_the_models_own_output(predicted, trained_run):
    _, result, rows = predicted
    _, run_dir = trained_run
    assert result.classified == 10 and result.skipped == 3
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    clf = load_classifier(run_dir)
    checks = [check_image(r["path"]) for r in ok]
    images = np.concatenate([b.numpy() for b in clf.eval_dataset(rows_from_checks(checks))])
    expected = clf.model(images, training=False).numpy()
    for row, probs in zip(ok, expected):
        assert row["predicted"] == clf.labels[int(probs.argmax())]
        assert float(row["probability"]) == pytest.approx(float(probs.max()), abs=1e-5)
        top = [float(row[f"top{i}_probability"]) for i in (1, 2, 3)]
        assert top == sorted(top, reverse=True)
        assert row["top1_label"] == row["predicted"]


def test_bad_files_are_listed_with_reasons(predicted):
    _, _, rows = predicted
    bad = {r["path"].rsplit("/", 1)[-1]: r for r in rows if r["status"] != "ok"}
    assert bad["broken.jpg"]["reason"].startswith("truncated or corrupt")
    assert bad["empty.jpg"]["reason"] == "empty file"
    assert bad["notes.txt"]["reason"].startswith("unsupported extension")
    assert all(r["predicted"] == "" for r in bad.values())


def test_sort_into_copies_and_never_moves(predicted, photo_folder):
    _, result, rows = predicted
    copies = sorted(p for p in result.sorted_into.rglob("*") if p.is_file())
    assert len(copies) == 10
    for row in (r for r in rows if r["status"] == "ok"):
        source = Path(row["path"])
        assert source.is_file()  # the original is still there
        copy = result.sorted_into / row["predicted"] / source.name
        assert copy.read_bytes() == source.read_bytes()


def test_api_returns_the_same_rows(predicted, trained_run, photo_folder):
    _, _, rows = predicted
    _, run_dir = trained_run
    clf = load_classifier(run_dir.name, run_dir.parent)
    api = clf.classify(sorted(r["path"] for r in rows))
    assert [a["path"] for a in api] == [r["path"] for r in rows]
    for a, r in zip(api, rows):
        assert a["status"] == r["status"] and a.get("predicted", "") == r["predicted"]


def test_missing_empty_and_imageless_folders_are_clear_errors(trained_run, tmp_path):
    cfg, run_dir = trained_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    for folder, message in (
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "empty", "no images found"),
        (tmp_path / "docs", "no images found"),
    ):
        bad = with_overrides(cfg, {"eval.run": str(run_dir), "predict.input": str(folder)})
        with pytest.raises((FileNotFoundError, ValueError), match=message):
            predict(bad)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            f"predict.input={tmp_path / 'nope'}",
            f"paths.models={run_dir.parent}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no such folder" in result.stderr


# ----------------------------------------------------------------------------- streaming


def test_header_check_agrees_with_the_full_check(tmp_path):
    """inspect_image (header only) gives check_image's verdict on every kind of file."""
    from pipeline.images import inspect_image
    from tests.imagegen import BAD_KINDS, GOOD_KINDS

    for kind in (*GOOD_KINDS, *BAD_KINDS):
        path = make_image(tmp_path / kind, kind)
        fast, full = inspect_image(path), check_image(path)
        assert (fast.status, fast.decoder, fast.orientation) == (
            full.status,
            full.decoder,
            full.orientation,
        ), kind
        assert (fast.reason, fast.width, fast.height) == (full.reason, full.width, full.height)


def _damaged_jpeg(path: Path, photo: Path) -> Path:
    """A JPEG with a broken Huffman table: its header and end are intact, so it passes the
    header check and fails only in the decode."""
    data = photo.read_bytes()
    table = data.index(b"\xff\xc4")  # DHT marker
    path.write_bytes(data[: table + 5] + b"\xff" * 16 + data[table + 21 :])
    return path


def _predict_cfg(trained_run, folder: Path, output: Path, **extra):
    cfg, run_dir = trained_run
    options = {"eval.run": str(run_dir), "predict.input": str(folder)}
    return with_overrides(cfg, {**options, "predict.output": str(output), **extra})


def test_a_file_that_fails_in_the_decode_is_listed_with_its_reason(trained_run, tmp_path):
    from pipeline.images import inspect_image

    folder = tmp_path / "in"
    for i, photo in enumerate(sorted((REPO / "tests/fixtures/flowers-mini/roses").iterdir())[:3]):
        (folder / f"p{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / f"p{i}.jpg")
    bad = _damaged_jpeg(folder / "p1-bad.jpg", folder / "p1.jpg")
    assert inspect_image(bad).status == "ok"  # the header check lets it through
    result = predict(_predict_cfg(trained_run, folder, tmp_path / "out.csv"))
    rows = read_csv(tmp_path / "out.csv")
    assert [r["path"] for r in rows] == sorted(str(p) for p in folder.iterdir())
    assert (result.classified, result.skipped) == (3, 1)
    row = next(r for r in rows if r["path"] == str(bad))
    assert row["status"] == "skipped" and row["reason"].startswith("truncated or corrupt")
    assert row["predicted"] == ""


def test_a_name_that_is_not_utf8_is_listed_and_the_csv_stays_utf8(trained_run, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out.csv"
    folder.mkdir()
    photo = sorted((REPO / "tests/fixtures/flowers-mini/roses").iterdir())[0]
    shutil.copy(photo, os.fsencode(folder) + b"/caf\xe9.jpg")  # Latin-1: not UTF-8
    shutil.copy(photo, folder / "caf\\xe9.jpg")  # a UTF-8 name that reads the same
    shutil.copy(photo, folder / "cafz.jpg")
    predict(_predict_cfg(trained_run, folder, out))
    rows = read_csv_bytes(out.read_bytes())  # decodes as UTF-8: any reader can open it
    assert [(Path(r["path"]).name, r["status"], r["reason"]) for r in rows] == [
        ("caf\\xe9.jpg", "ok", ""),
        ("caf\\xe9.jpg", "skipped", NOT_UTF8),
        ("cafz.jpg", "ok", ""),
    ]


def test_streamed_rows_equal_the_in_memory_path(predicted, trained_run):
    """The CSV (streamed, batches padded) against Classifier.classify (all in memory)."""
    _, _, rows = predicted
    _, run_dir = trained_run
    api = load_classifier(run_dir).classify([r["path"] for r in rows])
    for a, r in zip(api, rows):
        assert (a["path"], a["status"], a["reason"]) == (r["path"], r["status"], r["reason"])
        for column in ("probability", "top2_probability", "top3_probability"):
            if r["status"] == "ok":
                assert float(r[column]) == pytest.approx(a[column], abs=1e-6)


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, flowers_mini):
    """60 fixture photos and one unreadable file: enough batches of 2 for a kill to land."""
    root = tmp_path_factory.mktemp("many")
    for photo in sorted(flowers_mini.glob("*/*.jpg"))[:60]:
        shutil.copy(photo, root / f"{photo.parent.name}-{photo.name}")
    make_image(root / "zz-empty", "empty")
    return root


@pytest.fixture(scope="module")
def uninterrupted(trained_run, many_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.csv"
    predict(_predict_cfg(trained_run, many_photos, out, **{"predict.batch_size": 2}))
    return out.read_bytes()


@pytest.mark.slow
def test_kill_9_then_rerun_classifies_only_the_rest_and_writes_the_same_csv(
    trained_run, many_photos, uninterrupted, tmp_path
):
    import os
    import signal
    import time

    _, run_dir = trained_run
    out = tmp_path / "out.csv"
    partial = tmp_path / ".out.csv.partial"
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        f"predict.input={many_photos}",
        f"predict.output={out}",
        f"eval.run={run_dir}",
        f"paths.models={run_dir.parent}",
        "predict.batch_size=2",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_text().count("\n") >= 6:  # key + 5 rows
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not out.exists() and partial.is_file()
    saved = partial.read_bytes()

    result = predict(_predict_cfg(trained_run, many_photos, out, **{"predict.batch_size": 2}))
    assert 5 <= result.reused < 61
    assert result.read == 61 - result.reused  # only what the killed run had not finished
    assert out.read_bytes() == uninterrupted
    assert not partial.exists() and not (tmp_path / ".out.csv.partial.kept").exists()

    # A partial file left by another model or other options is never reused.
    key_line, rest = saved.split(b"\n", 1)
    partial.write_bytes(key_line[:-4] + b"0000\n" + rest)
    result = predict(_predict_cfg(trained_run, many_photos, out, **{"predict.batch_size": 2}))
    assert (result.reused, result.read) == (0, 61)
    assert out.read_bytes() == uninterrupted


def test_rows_of_unchanged_files_are_kept_and_changed_ones_redone(trained_run, tmp_path):
    """A partial row is reused only while its file keeps its size and modification time,
    by whole batches (batch_size 2 here)."""
    from pipeline.predict.partial import PartialRows

    folder = tmp_path / "in"
    folder.mkdir()
    for i, photo in enumerate(sorted((REPO / "tests/fixtures/flowers-mini/tulips").iterdir())[:4]):
        shutil.copy(photo, folder / f"t{i}.jpg")
    out = tmp_path / "out.csv"
    cfg = _predict_cfg(trained_run, folder, out, **{"predict.batch_size": 2})
    predict(cfg)
    whole = out.read_bytes()
    # Rebuild the partial a killed run would leave, with a marker in place of one label.
    rows = read_csv(out)
    header = list(rows[0])
    stamps = {r["path"]: Path(r["path"]).stat() for r in rows}
    clf = load_classifier(trained_run[1])
    key = partial_key(clf, trained_run[1], header, "none", 2)
    saved = PartialRows(out, key, header)
    rows[3]["predicted"] = "kept-from-before"
    saved.append(
        [*r.values(), stamps[r["path"]].st_size, stamps[r["path"]].st_mtime_ns] for r in rows
    )
    saved.close()
    Path(rows[1]["path"]).touch()  # same bytes, new time: its batch (t0, t1) is redone
    result = predict(cfg)
    assert (result.reused, result.read) == (2, 2)
    again = read_csv(out)
    assert again[3]["predicted"] == "kept-from-before"  # reused as it was
    assert again[:3] == read_csv_bytes(whole)[:3]


def read_csv_bytes(data: bytes) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(data.decode())))


def test_a_torn_last_line_is_dropped(tmp_path):
    from pipeline.predict.partial import PartialRows

    out = tmp_path / "o.csv"
    saved = PartialRows(out, "k", ["path", "status", "reason"])
    saved.append([["a", "ok", "", 1, 2], ["b", "skipped", "unreadable: gone", -1, -1]])
    saved.close()
    with open(saved.partial, "a") as fh:
        fh.write("c,ok,,5,6")  # cut before its newline: a kill -9 mid-write
    assert [r[0] for r in saved.previous()] == ["a", "b"]
    PartialRows(out, "other", ["path", "status", "reason"]).start([Path("a")], 1)
    assert not saved.partial.exists()  # another key: discarded
