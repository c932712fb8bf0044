"""The export stage: TFLite files that take raw pixels and answer as the Keras model does,
scored on the run's own test split; predict through them; one-line errors. Each file carries
its labels and input spec, and MediaPipe's ImageClassifier, a foreign runtime, loads it as
it is and answers as `make predict` does.

One real export (fp32, fp16, int8) of a copy of the shared pretrained run, about 40 s.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, with_overrides
from pipeline.data.provenance import load_run_data
from pipeline.evaluate.stage import evaluate, scored_rows
from pipeline.export.metadata import ModelCard, read_metadata, with_metadata
from pipeline.export.record import file_sha256
from pipeline.export.runtimes import MediaPipeClassifier
from pipeline.export.stage import EXPORT_JSON, accuracy_warnings, export, format_table
from pipeline.files import read_csv, read_json
from pipeline.images import load_rgb
from pipeline.predict.classifier import load_classifier
from pipeline.predict.stage import predict


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A copy of trained_run (the shared run stays as it is) exported in every TFLite form:
    (config, run folder, ExportResult)."""
    cfg, run_dir = trained_run
    models = tmp_path_factory.mktemp("export") / "models"
    copy = shutil.copytree(run_dir, models / run_dir.name)
    cfg = with_overrides(
        cfg, {"paths.models": str(models), "eval.run": run_dir.name, "export.latency_images": 5}
    )
    return cfg, copy, export(cfg)


@pytest.fixture(scope="module")
def probabilities_by_format(exported):
    """Probabilities on the run's test photos from the Keras model and each TFLite file,
    through load_classifier and the evaluation pipeline (what predict and evaluate use)."""
    _, run_dir, result = exported
    keras_clf = load_classifier(run_dir)
    rows = scored_rows(keras_clf, "test")
    probs = {"keras": keras_clf.probabilities(rows)}
    for fmt, path in result.files.items():
        probs[fmt] = load_classifier(path).probabilities(rows)
    return probs


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_export_writes_every_tflite_file_and_its_figures(exported):
    _, run_dir, result = exported
    out = run_dir / "export"
    names = {p.name for p in result.files.values()}
    assert names == {"model_fp32.tflite", "model_fp16.tflite", "model_int8.tflite"}
    assert all((out / n).is_file() for n in names)
    written = read_json(out / EXPORT_JSON)
    assert all(written["variants"][f] == result.figures["variants"][f] for f in result.files)
    v = result.figures["variants"]
    # float16 weights halve the file, int8 quarters the weights.
    assert v["tflite-int8"]["size_bytes"] < v["tflite-fp16"]["size_bytes"]
    assert v["tflite-fp16"]["size_bytes"] < 0.6 * v["tflite"]["size_bytes"]
    assert result.figures["test_images"] == len(scored_rows(load_classifier(run_dir), "test"))
    assert all(f["latency_ms_b1"] > 0 and f["throughput_b32"] > 0 for f in v.values())
    # What vouches for each file: its digest and the labels and size it was exported with.
    for fmt, path in result.files.items():
        assert v[fmt]["sha256"] == file_sha256(path)
        assert v[fmt]["labels"] == load_classifier(run_dir).labels
        assert v[fmt]["image_size"] == 128
    # The memory estimate at each file's precision: parameters at 4, 2 and 1 bytes.
    params = {fmt: v[fmt]["estimate"]["parameter_bytes"] for fmt in v}
    assert params["tflite"] == 2 * params["tflite-fp16"] == 4 * params["tflite-int8"] > 0


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_fp32_file_agrees_with_the_keras_model_on_real_photos(probabilities_by_format):
    keras_probs, fp32 = probabilities_by_format["keras"], probabilities_by_format["tflite"]
    np.testing.assert_allclose(fp32, keras_probs, atol=1e-4)
    assert (fp32.argmax(axis=1) == keras_probs.argmax(axis=1)).all()


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_int8_file_agrees_with_keras_where_keras_is_decided(probabilities_by_format, exported):
    """Full-integer int8 of MobileNet 0.25 at 128 px: measured 47 of 53 test photos (0.887)
    on this fixture run, whose kept phase-1 head is unsure (median margin 0.47); every
    disagreement was a near tie (Keras's top two within 0.26). A 90% bar is not met by a
    real pretrained run either: `make bench-export`'s MobileNet 0.25 run at 224 px on the
    400 shared flowers-mini photos (the default recipe, fine-tuned) agrees on 58 of 65 test
    photos (0.892). So the bar is 85% overall, and every photo where Keras's top two are
    0.3 or more apart."""
    keras_probs, int8 = probabilities_by_format["keras"], probabilities_by_format["tflite-int8"]
    same = int8.argmax(axis=1) == keras_probs.argmax(axis=1)
    assert same.mean() >= 0.85
    top2 = np.sort(keras_probs, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] >= 0.3
    assert decided.sum() >= len(same) / 2 and same[decided].all()
    # export.json's figure is this same agreement, on the same photos.
    recorded = exported[2].figures["variants"]["tflite-int8"]["top1_agreement"]
    assert recorded == pytest.approx(same.mean())


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_accuracy_drop_beyond_max_drop_is_a_warning_with_the_figures(exported):
    figures = exported[2].figures
    keras_accuracy = figures["keras"]["accuracy"]
    int8 = figures["variants"]["tflite-int8"]
    assert accuracy_warnings(figures, max_drop=1.0) == []
    drop = keras_accuracy - int8["accuracy"]
    lines = accuracy_warnings(figures, max_drop=drop - 1e-9)
    assert any("model_int8.tflite" in line and f"{keras_accuracy:.4f}" in line for line in lines)
    assert all("\n" not in line for line in lines)


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_predict_through_the_int8_file_writes_the_same_csv(exported, flowers_mini, tmp_path):
    cfg, run_dir, result = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    for class_dir in sorted(flowers_mini.iterdir()):
        shutil.copy(sorted(class_dir.iterdir())[0], photos)
    through = {}
    for name, extra in (
        ("run", {"eval.run": str(run_dir)}),
        ("int8", {"eval.run": "", "predict.model": str(result.files["tflite-int8"])}),
        ("run+format", {"eval.run": str(run_dir), "export.format": "tflite-int8"}),
    ):
        out = tmp_path / f"{name}.csv"
        run_cfg = with_overrides(
            cfg, {"predict.input": str(photos), "predict.output": str(out), **extra}
        )
        assert predict(run_cfg).classified == 5
        with open(out, encoding="utf-8") as fh:
            through[name] = (fh.readline(), read_csv(out))
    assert through["int8"][0] == through["run"][0]  # the header
    assert [r["path"] for r in through["int8"][1]] == [r["path"] for r in through["run"][1]]
    assert all(r["status"] == "ok" for r in through["int8"][1])
    assert through["run+format"] == through["int8"]  # RUN= FORMAT=tflite-int8: the same file


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_export_of_a_missing_run_fails_in_one_line(exported, capsys):
    cfg = exported[0]
    code = main(["export", f"paths.models={cfg.paths.models}", "eval.run=no-such-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "no-such-run" in err and "make train" in err


def test_an_unknown_export_format_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"export\.format must be one of all, tflite.*onnx"):
        load_config(None, ["export.format=onnx"])


def _tiny_tflite(size: int, classes: int) -> bytes:
    import keras
    import tensorflow as tf

    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(pooled))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
@pytest.mark.parametrize(
    ("size", "classes", "complaint"),
    [(64, 5, "takes 64x64x3 images"), (128, 3, "outputs 3 classes")],
)
def test_a_tflite_file_of_another_run_is_refused(exported, size, classes, complaint):
    _, run_dir, _ = exported
    other = run_dir / "export" / f"other-{size}-{classes}.tflite"
    other.write_bytes(_tiny_tflite(size, classes))
    with pytest.raises(ValueError, match=complaint) as info:
        load_classifier(other)
    assert "make export RUN=" in str(info.value) and "\n" not in str(info.value)


def test_a_missing_tflite_file_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make export RUN="):
        load_classifier(tmp_path / "model_int8.tflite")


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
@pytest.mark.parametrize(
    ("change", "complaint", "fix"),
    [
        ("swap two labels", "differs from the classes the run was trained on", "restore the run"),
        ("replace the file", "sha256", "make export RUN="),
    ],
)
def test_an_exported_file_whose_labels_or_bytes_changed_is_refused(
    exported, tmp_path, change, complaint, fix
):
    """Same image size, same class count: the run's recorded classes and export.json's
    record tell them apart."""
    _, run_dir, _ = exported
    copy = shutil.copytree(run_dir, tmp_path / run_dir.name)
    int8 = copy / "export" / "model_int8.tflite"
    if change == "swap two labels":
        labels = read_json(copy / "labels.json")
        labels[0], labels[1] = labels[1], labels[0]
        (copy / "labels.json").write_text(json.dumps(labels))
    else:
        int8.write_bytes((copy / "export" / "model_fp16.tflite").read_bytes())
    with pytest.raises(ValueError, match=complaint) as info:
        load_classifier(int8)
    assert fix in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_a_tflite_file_export_did_not_write_is_refused(exported):
    """A file of the run's very shape (128 px, 5 classes), not listed in export.json."""
    _, run_dir, _ = exported
    stranger = run_dir / "export" / "copied.tflite"
    stranger.write_bytes(_tiny_tflite(128, 5))
    with pytest.raises(ValueError, match=r"is not listed in .*export\.json") as info:
        load_classifier(stranger)
    assert f"make export RUN={run_dir.name}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # the export fixture, and make evaluate on its run (about 30 s)
def test_the_run_report_shows_the_export_table_whichever_ran_first(exported, tmp_path):
    """evaluate after export renders export.json's figures; an export after evaluate puts its
    new figures into the existing report."""
    cfg, run_dir, _ = exported
    cfg = with_overrides(cfg, {"paths.reports": str(tmp_path / "reports")})
    page = evaluate(cfg).report_dir / "index.html"

    def shown(fmt: str, key: str) -> str:
        return f'data-metric="export.{fmt}.{key}" data-value="'

    figures = read_json(run_dir / "export" / EXPORT_JSON)["variants"]
    html = page.read_text()
    assert "<h2>Export</h2>" in html
    assert "model_int8.tflite</code>: 5 labels, RGB 128x128 float32" in html
    assert "MediaPipe ImageClassifier" in html
    for fmt in ("tflite", "tflite-fp16", "tflite-int8"):
        for key in ("size_bytes", "accuracy", "top1_agreement", "latency_ms_b32"):
            assert shown(fmt, key) + f'{figures[fmt][key]!r}"' in html, (fmt, key)
    export(with_overrides(cfg, {"export.format": "tflite-fp16"}))
    fp16 = read_json(run_dir / "export" / EXPORT_JSON)["variants"]["tflite-fp16"]
    html = page.read_text()
    assert fp16["latency_ms_b1"] != figures["tflite-fp16"]["latency_ms_b1"]  # measured again
    assert shown("tflite-fp16", "latency_ms_b1") + f'{fp16["latency_ms_b1"]!r}"' in html
    assert html.count("<h2>Export</h2>") == 1


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_saved_model_export_joins_the_earlier_figures(exported):
    """FORMAT=saved_model after the TFLite export: its folder scores as Keras does, and
    export.json keeps the TFLite files' figures, whose files are still there."""
    cfg, run_dir, _ = exported
    result = export(with_overrides(cfg, {"export.format": "saved_model"}))
    assert set(result.files) == {"saved_model"} and (run_dir / "export/saved_model").is_dir()
    variants = read_json(run_dir / "export" / EXPORT_JSON)["variants"]
    assert set(variants) == {"tflite", "tflite-fp16", "tflite-int8", "saved_model"}
    assert variants["saved_model"]["top1_agreement"] == 1.0
    assert variants["saved_model"]["max_probability_difference"] < 1e-4
    assert not [p for p in (run_dir / "export").iterdir() if p.name.startswith(".")]


def test_a_file_with_metadata_names_its_classes_in_mediapipe_and_one_without_is_refused(
    tmp_path,
):
    """The metadata is what MediaPipe needs: the bare file is refused for want of
    normalisation, the same model with it loads, names the classes and scores as the
    interpreter does on the same pixels."""
    from pipeline.predict.tflite import TFLiteModel

    labels = ["daisy", "dandelion", "roses"]
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(_tiny_tflite(32, 3))
    with pytest.raises(Exception, match="NormalizationOptions"):
        MediaPipeClassifier(bare, 1.0)
    card = ModelCard("tiny", "a test model", "1", "tests", "Apache-2.0", labels, 32)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(with_metadata(bare.read_bytes(), card))
    embedded = read_metadata(path.read_bytes())
    assert embedded is not None and embedded.labels == labels
    assert (embedded.mean, embedded.std, embedded.image_size) == ([0.0], [1.0], (32, 32))
    assert (embedded.color_space, embedded.license) == ("RGB", "Apache-2.0")
    assert read_metadata(bare.read_bytes()) is None
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    task = MediaPipeClassifier(path, 1.0)
    try:
        scores = task.scores(pixels)
    finally:
        task.close()
    assert sorted(scores) == sorted(labels)
    expected = TFLiteModel(path)(pixels[None].astype(np.float32))[0]
    np.testing.assert_allclose([scores[n] for n in labels], expected, atol=1e-5)


@pytest.fixture(scope="module")
def mediapipe_and_predict(exported, flowers_mini):
    """Every fixture photo through MediaPipe's ImageClassifier, loading each exported file as
    it is, and through load_classifier(file), the API behind `make predict MODEL=<file>`:
    {format: (MediaPipe's top-1 names, make predict's)}."""
    cfg = exported[0]
    paths = sorted(flowers_mini.glob("*/*.jpg"))
    images = [load_rgb(p) for p in paths]
    answers = {}
    for fmt, path in exported[2].files.items():
        rows = load_classifier(path).classify(paths, top_k=1)
        task = MediaPipeClassifier(path, cfg.input.eval_crop_fraction)
        try:
            names = [max(s, key=s.__getitem__) for s in map(task.scores, images)]
        finally:
            task.close()
        answers[fmt] = (names, [r["predicted"] for r in rows])
    return answers


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_mediapipe_loads_every_exported_file_and_agrees_with_make_predict(mediapipe_and_predict):
    for fmt, (mediapipe, through_predict) in mediapipe_and_predict.items():
        same = np.array(mediapipe) == np.array(through_predict)
        print(f"{fmt}: MediaPipe agrees with make predict on {same.sum()} of {len(same)} photos")
        assert len(mediapipe) == 400
        assert np.mean(np.array(mediapipe) == np.array(through_predict)) >= 0.98, fmt


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_mediapipe_and_the_interpreter_give_the_same_scores_on_the_same_pixels(
    exported, flowers_mini
):
    """Where MediaPipe and make predict differ it is the resize: given the evaluation crop
    already at the model's size, MediaPipe's scores are the interpreter's."""
    _, run_dir, result = exported
    crops = _crops(load_classifier(run_dir), sorted(flowers_mini.glob("*/*.jpg"))[::8])
    for fmt, path in result.files.items():
        labels = load_classifier(path).labels
        expected = load_classifier(path).model(crops.astype(np.float32))
        task = MediaPipeClassifier(path, 1.0)
        try:
            got = np.array([[task.scores(c)[n] for n in labels] for c in crops])
        finally:
            task.close()
        # int8: MediaPipe's TFLite build rounds some requantisations the other way, and a
        # rounding early in the network can grow by the output: nearly every probability
        # within two output steps (1/256), none beyond four (measured: one of 250 moved by
        # three on one CPU, none on another). Float files are exact.
        if fmt == "tflite-int8":
            off = np.abs(got - expected) * 256
            assert np.mean(off <= 2 + 1e-3) >= 0.99 and off.max() <= 4 + 1e-3, (fmt, off.max())
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=fmt)
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.98, fmt


def _crops(clf, photos) -> np.ndarray:
    """The photos' evaluation crops at the model's size, as raw uint8 pixels."""
    from pipeline.images import check_images
    from pipeline.predict.classifier import rows_from_checks

    rows = rows_from_checks(check_images(photos, 1, 10**9, progress=False))
    batches = clf.eval_dataset(rows, batch_size=64, preprocessed=False)
    return np.concatenate([b.numpy() for b in batches]).round().astype(np.uint8)


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_every_exported_file_flags_unknown_photos_as_the_run_does(exported, intel_mini):
    """Issue 27: the exported models' predict path flags unknown photos too: scene photos
    against the flowers run, through each file's unknown_score output and the threshold set
    on its own scores of the run's validation photos, as make predict MODEL=<file> does."""
    _, run_dir, result = exported
    scenes = sorted(p for p in intel_mini.rglob("*.jpg") if "seg_pred" not in p.parts)
    own_test = [r.path for r in load_run_data(run_dir).rows("test")]
    photos = [str(p) for p in scenes + own_test]

    def answers(model) -> list[dict]:  # in the order of ``photos``
        by_path = {r["path"]: r for r in load_classifier(model).classify(photos)}
        return [by_path[p] for p in photos]

    reference = answers(run_dir)
    for fmt, path in result.files.items():
        rows = answers(path)
        flags = np.array([r["unknown"] == "true" for r in rows])
        assert flags[: len(scenes)].mean() >= 0.8, fmt
        assert flags[len(scenes) :].mean() <= 0.1, fmt
        same = flags == np.array([r["unknown"] == "true" for r in reference])
        assert same.mean() >= (0.95 if fmt == "tflite-int8" else 0.99), fmt
        difference = max(
            abs(r["unknown_score"] - k["unknown_score"]) for r, k in zip(rows, reference)
        )
        assert difference < {"tflite": 1e-4, "tflite-fp16": 0.02, "tflite-int8": 0.1}[fmt]
        figures = result.figures["variants"][fmt]["unknown"]
        assert figures["flag_agreement"] >= 0.9 and figures["max_score_difference"] < 0.1
        own = np.array(figures["validation_scores"]) > figures["threshold"]
        assert own.mean() == pytest.approx(0.05, abs=1 / len(own)), fmt  # the run's rate


@pytest.mark.slow  # the export fixture and one more conversion
def test_export_unknown_false_writes_files_without_the_unknown_output(
    exported, flowers_mini, tmp_path, capsys
):
    cfg, run_dir, _ = exported
    models = tmp_path / "models"
    shutil.copytree(run_dir, models / run_dir.name)
    plain = with_overrides(
        cfg,
        {"paths.models": str(models), "export.format": "tflite", "export.unknown": False},
    )
    result = export(plain)
    path = result.files["tflite"]
    assert read_metadata(path.read_bytes()).unknown_threshold is None
    assert result.figures["variants"]["tflite"]["metadata"]["output"] == "probabilities"
    assert result.figures["variants"]["tflite"]["unknown"] is None
    clf = load_classifier(path)
    rows = clf.classify(sorted(flowers_mini.glob("*/*.jpg"))[:3])
    assert [r["unknown_score"] for r in rows] == ["", "", ""]
    assert "export.unknown=false" in clf.without_unknown_reason()


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_mediapipe_flags_unknown_photos_as_the_interpreter_does(exported, flowers_mini, intel_mini):
    """MediaPipe reads the unknown_score head's threshold from the metadata: the head answers
    only for a photo above it, the interpreter's flag on the same pixels."""
    from pipeline.predict.tflite import TFLiteModel

    _, run_dir, result = exported
    clf = load_classifier(run_dir)
    photos = sorted(flowers_mini.glob("*/*.jpg"))[::8] + sorted(intel_mini.rglob("*.jpg"))[::4]
    crops = _crops(clf, photos)
    for fmt, path in result.files.items():
        threshold = load_classifier(path).unknown.threshold  # the file's own
        assert read_metadata(path.read_bytes()).unknown_threshold == pytest.approx(threshold)
        scores = TFLiteModel(path).scored(crops.astype(np.float32))[1]
        expected = scores > threshold
        task = MediaPipeClassifier(path, 1.0)
        try:
            got = np.array([task.classify(c)[1] for c in crops])
        finally:
            task.close()
        assert 0.3 <= expected.mean() <= 0.7, fmt  # both answers are on trial
        near = np.abs(scores - threshold) < 0.01  # int8 rounding may cross it
        assert np.all((got == expected) | near), fmt


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_each_file_records_its_metadata_and_the_runtimes_it_was_checked_against(exported):
    _, run_dir, result = exported
    labels = load_classifier(run_dir).labels
    for fmt, path in result.files.items():
        embedded = read_metadata(path.read_bytes())
        assert embedded.labels == labels and load_classifier(path).labels == labels
        assert "mobilenet (alpha 0.25)" in embedded.description
        assert "test accuracy 0." in embedded.description and "Apache-2.0" in embedded.license
        figures = result.figures["variants"][fmt]
        assert figures["metadata"]["labels"] == 5
        assert figures["metadata"]["input"].startswith("RGB 128x128 float32, mean 0 std 1")
        runtimes = figures["metadata"]["runtimes"]
        assert runtimes[0].startswith("tf.lite.Interpreter")
        assert runtimes[1].startswith("MediaPipe ImageClassifier 1.2")
        assert figures["metadata"]["output"].startswith("probabilities; unknown_score, thr")
        mediapipe = figures["mediapipe"]
        assert mediapipe["names_classes"] and mediapipe["top1_agreement"] >= 0.9
        assert mediapipe["unknown_agreement"] >= 0.9
        assert mediapipe["latency_ms"] > 0 and mediapipe["images"] == result.figures["test_images"]
    table = format_table(result.figures)
    assert "MP agree" in table.splitlines()[0] and "labels" in table.splitlines()[0]


@pytest.mark.slow  # the export fixture: three conversions, about 90 s in all
def test_the_docs_mediapipe_snippet_runs_on_an_exported_file(
    exported, flowers_mini, tmp_path, monkeypatch, capsys
):
    from tests.test_serving import snippet

    _, run_dir, result = exported
    shutil.copy(result.files["tflite-fp16"], tmp_path / "model_fp16.tflite")
    shutil.copy(sorted(flowers_mini.glob("*/*.jpg"))[0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(snippet("mediapipe"), {})
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 3
    assert {name for name, _ in printed} <= set(load_classifier(run_dir).labels)
    scores = [float(score) for _, score in printed]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.001
