"""pipeline.training: real two-phase runs on real photos (small images, few of them).

One InceptionV3 run (random weights, 75 px) is shared by the module; the tests read what it
wrote. Phase 1 must leave the base alone, phase 2 must change only the unfrozen top and no
BatchNorm statistics, the head trained on cached features must be the head the plain way
trains, a killed run must resume, and on flowers-mini transfer learning must pay off.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.manifest import load_split, read_classes
from pipeline.files import GENERATED_MARKER
from pipeline.model import build_classifier, classifier_spec, get_base
from pipeline.summary import PhaseResult, read_summary
from pipeline.training import TrainResult, train
from pipeline.training.loop import warmup_cosine
from pipeline.training.trainset import class_weights
from tests.support import CONFIGS, REPO, TinyData, eval_dataset, make_tiny_data


def read_history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_into(cfg, weights_file: Path, num_classes: int) -> keras.Model:
    model = build_classifier(classifier_spec(cfg), num_classes)
    model.load_weights(weights_file)
    return model


def numpy(variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable)


def batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, flowers_mini) -> TinyData:
    return make_tiny_data(flowers_mini, tmp_path_factory.mktemp("tiny"))


MOBILENET = ["model.backbone=mobilenet", "model.alpha=0.25", "input.image_size=64"]
INCEPTION = [
    "input.image_size=75",
    "train.head_epochs=2",
    "train.fine_tune_epochs=2",
    "train.fine_tune_lr=1e-4",
]


@pytest.fixture(scope="module")
def inception_run(tiny) -> TrainResult:
    """Phase 1 on cached features, phase 2 on augmented images, InceptionV3 at 75 px."""
    return train(tiny.cfg(*INCEPTION, "train.run_name=inception"))


@pytest.fixture(scope="module")
def cache_pair(tiny, mobilenet_weights) -> tuple[TrainResult, TrainResult]:
    """Phase 1 on cached features and the Keras guide's way (the frozen base runs every
    epoch). Random-weight bases pool to near-zero features, so this comparison uses the
    ImageNet MobileNet fixture, whose features tell the flowers apart."""
    options = [
        "model.backbone=mobilenet",
        "model.alpha=0.25",
        "input.image_size=96",
        f"model.weights={mobilenet_weights}",
        "train.head_fit=gradient",
        "train.head_epochs=4",
        "train.head_lr=1e-2",
        "train.fine_tune_epochs=0",
    ]
    cached = train(tiny.cfg(*options, "train.run_name=cached"))
    plain = train(tiny.cfg(*options, "train.run_name=plain", "train.cache_features=false"))
    return cached, plain


# ----------------------------------------------------------------------------- outputs


@pytest.mark.slow  # the InceptionV3 fixture run: about 110 s on 2 cores
def test_outputs_exist_and_agree_with_each_other(tiny, inception_run):
    import tensorflow as tf

    from pipeline.backbones import get_backbone, preprocess

    run_dir, summary = inception_run.run_dir, inception_run.summary
    for name in (
        "model.keras",
        "saved_model",
        "labels.json",
        "config.json",
        "history.csv",
        "learning_curves.png",
        "summary.json",
        "checkpoints/phase1.weights.h5",
        "checkpoints/phase2.weights.h5",
    ):
        assert (run_dir / name).exists(), name
    assert all(Path(p).exists() for p in summary.files)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert read_summary(run_dir).to_dict() == on_disk  # read back as written
    assert list(on_disk["memory"]) == ["estimate", "measured"]
    leftovers = [p for p in run_dir.rglob(".*") if p.name != GENERATED_MARKER]
    leftovers += list(run_dir.glob("backup"))
    assert leftovers == [], "temporary files or backups left behind"
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = load_config(run_dir / "config.json")
    assert cfg.train.run_name == summary.run == "inception"
    classes = json.loads((run_dir / "labels.json").read_text())
    assert classes == read_classes(cfg.dataset_dir() / "classes.json") == summary.classes

    history = read_history(run_dir)  # the exact head's row, then phase 2's two epochs
    assert [r["epoch"] for r in history] == [1, 2, 3] and summary.epochs == 3
    for phase, epochs in ((1, 1), (2, 2)):
        rows = [r for r in history if r["phase"] == phase]
        best = min(rows, key=lambda r: r["val_loss"])
        info = summary.phases[phase]
        assert info.epochs == len(rows) == epochs
        assert info.best_epoch == best["phase_epoch"]
        assert info.best_val_loss == pytest.approx(best["val_loss"])
        assert info.seconds > 0 and info.train_images_per_s > 0
    assert summary.phases[1].cached_features is True
    assert summary.phases[1].method == "exact"

    # The saved model scores on the validation images what the summary says it scored.
    model = keras.models.load_model(run_dir / "model.keras")
    val_rows = load_split(cfg.dataset_dir(), "val")
    probs = model.predict(eval_dataset(val_rows, cfg), verbose=0)
    accuracy = np.mean(probs.argmax(1) == [r.label_index for r in val_rows])
    assert summary.final.val_accuracy == pytest.approx(accuracy)
    assert summary.final.val_loss == pytest.approx(
        summary.phases[summary.kept_phase].best_val_loss, rel=1e-4
    )

    # The SavedModel takes raw pixels and gives the Keras model's probabilities.
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 75, 75, 3)).astype("float32")
    exported = tf.saved_model.load(str(run_dir / "saved_model"))
    served = exported.serve(pixels)
    expected = model(preprocess(pixels, get_backbone("inception_v3")), training=False)
    np.testing.assert_allclose(np.array(served), np.array(expected), atol=1e-5)


@pytest.mark.slow  # the InceptionV3 fixture run: about 110 s on 2 cores
def test_phase_one_leaves_every_base_weight_unchanged(tiny, inception_run):
    cfg = load_config(inception_run.run_dir / "config.json")
    keras.utils.set_random_seed(cfg.train.seed)  # as train() does before building
    initial = build_classifier(classifier_spec(cfg), 5)
    after = load_into(cfg, inception_run.run_dir / "checkpoints/phase1.weights.h5", 5)
    for a, b in zip(get_base(initial).weights, get_base(after).weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    head_before = initial.get_layer("predictions").get_weights()[0]
    assert not np.allclose(head_before, after.get_layer("predictions").get_weights()[0])


@pytest.mark.slow  # the InceptionV3 fixture run: about 110 s on 2 cores
def test_phase_two_changes_only_the_unfrozen_blocks(tiny, inception_run):
    run_dir = inception_run.run_dir
    cfg = load_config(run_dir / "config.json")
    before = get_base(load_into(cfg, run_dir / "checkpoints/phase1.weights.h5", 5))
    after = get_base(load_into(cfg, run_dir / "checkpoints/phase2.weights.h5", 5))
    names = [layer.name for layer in before.layers]
    cut = names.index("mixed8")
    changed_top = 0
    for i, (old, new) in enumerate(zip(before.layers, after.layers)):
        for a, b in zip(old.weights, new.weights):
            same = np.array_equal(numpy(a), numpy(b))
            if batchnorm(old) or i <= cut:
                assert same, f"{a.path} changed in phase 2"
            else:
                changed_top += not same
                assert not same, f"{a.path} did not train in phase 2"
    assert changed_top >= 18  # the convolutions of mixed9 and mixed10


def summary_phase(result: TrainResult, phase: int) -> PhaseResult:
    return result.summary.phases[phase]


@pytest.mark.slow  # two MobileNet runs, cached and plain: about 55 s
def test_head_on_cached_features_is_the_head_the_plain_way_trains(tiny, cache_pair):
    cached, plain = cache_pair
    heads = [
        keras.models.load_model(r.run_dir / "model.keras").get_layer("predictions")
        for r in cache_pair
    ]
    for a, b in zip(heads[0].get_weights(), heads[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(
            [r[key] for r in read_history(cached.run_dir)],
            [r[key] for r in read_history(plain.run_dir)],
            rtol=1e-4,
            err_msg=key,
        )
    assert summary_phase(cached, 1).cached_features is True
    assert summary_phase(plain, 1).cached_features is False
    assert read_history(cached.run_dir)[-1]["accuracy"] > 0.5  # the features carry signal


@pytest.mark.slow  # two MobileNet runs, cached and plain: about 55 s
def test_the_full_model_predicts_what_the_head_on_cached_features_predicts(tiny, cache_pair):

    cached = cache_pair[0]
    cfg = load_config(cached.run_dir / "config.json")
    model = keras.models.load_model(cached.run_dir / "model.keras")
    features = np.load(summary_phase(cached, 1).feature_cache["val"])
    from_cache = np.array(model.get_layer("predictions")(features))
    from_images = model.predict(eval_dataset(load_split(cfg.dataset_dir(), "val"), cfg), verbose=0)
    np.testing.assert_allclose(from_images, from_cache, atol=1e-5)


@pytest.mark.slow  # two MobileNet runs, cached and plain: about 55 s
def test_the_feature_cache_is_reused_when_nothing_changed(tiny, cache_pair, capsys):
    options = [
        "model.backbone=mobilenet",
        "model.alpha=0.25",
        "input.image_size=96",
        f"model.weights={cache_pair[0].summary.weights}",
        "train.head_epochs=1",
        "train.fine_tune_epochs=0",
        "train.run_name=cached-again",
    ]
    again = train(tiny.cfg(*options))
    assert summary_phase(again, 1).feature_cache_reused is True
    assert "reused" in capsys.readouterr().out
    assert summary_phase(again, 1).feature_cache == summary_phase(cache_pair[0], 1).feature_cache


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow  # about 50 s on 2 cores
def test_a_killed_run_resumes_from_its_last_epoch(tiny, capsys):
    epochs = 12  # short epochs: the kill lands mid-run, not after the end
    overrides = [
        *tiny.overrides,
        *MOBILENET,
        "train.run_name=killed",
        f"train.fine_tune_epochs={epochs}",
        "train.patience=100",
    ]
    run_dir = tiny.root / "models" / "killed"
    metadata = run_dir / "backup" / "phase2" / "training_metadata.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    try:
        while True:  # wait for the first phase-2 epoch's backup, then kill mid-epoch
            if metadata.is_file() and json.loads(metadata.read_text())["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no phase-2 backup within 5 minutes"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    saved_epoch = json.loads(metadata.read_text())["epoch"]
    before = read_history(run_dir)
    assert not (run_dir / "summary.json").exists()

    result = train(load_config(None, overrides))
    out = capsys.readouterr().out
    assert f"Resuming: {run_dir}" in out and "Phase 1 finished earlier" in out
    assert "Phase 2: resuming from its backup" in out
    after = read_history(run_dir)
    assert [(r["phase"], r["phase_epoch"]) for r in after] == [(1, 1)] + [
        (2, e) for e in range(1, epochs + 1)
    ]
    kept = 1 + saved_epoch  # the exact head's row and the phase-2 epochs backed up
    assert saved_epoch < epochs and after[:kept] == before[:kept]
    # The warm-up and cosine schedule continued from the restored step, not from zero.
    cfg = load_config(None, overrides)
    steps = len(load_split(run_dir / "data", "train")) // cfg.input.batch_size
    schedule = warmup_cosine(cfg.train.fine_tune_lr, steps, epochs, cfg.train.warmup_epochs)
    np.testing.assert_allclose(
        [r["learning_rate"] for r in after[1:]],
        [float(schedule(e * steps)) for e in range(1, epochs + 1)],
        rtol=1e-5,
        atol=1e-12,
    )
    assert summary_phase(result, 2).resumed is True
    assert not (run_dir / "backup").exists()


# ----------------------------------------------------------------------------- options


@pytest.mark.slow  # the InceptionV3 fixture run: about 110 s on 2 cores
def test_a_finished_run_is_not_overwritten(tiny, inception_run):
    with pytest.raises(ConfigError, match="holds a finished run; choose another RUN_NAME"):
        train(tiny.cfg(*INCEPTION, "train.run_name=inception"))


def test_an_unfinished_run_with_other_options_is_not_resumed(tiny):
    run_dir = tiny.root / "models" / "other"
    run_dir.mkdir(parents=True)
    cfg = tiny.cfg(*INCEPTION, "train.run_name=other")
    from pipeline.config import save_config

    save_config(cfg, run_dir / "config.json")
    (run_dir / "history.csv").write_text("epoch\n1\n")  # an epoch finished: worth resuming
    with pytest.raises(ConfigError, match=r"other options \(train.head_lr\)"):
        train(tiny.cfg(*INCEPTION, "train.run_name=other", "train.head_lr=0.01"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.fine_tune_epochs=-1", "train.fine_tune_epochs must be 0 or more"),
        ("train.head_lr=0", "train.head_lr must be a positive learning rate"),
        ("train.lr_factor=1.5", "train.lr_factor must be between 0 and 1"),
        ("train.ema=1", r"train.ema must be in \[0, 1\)"),
        ("train.run_name=../x", "train.run_name must be a folder name"),
        ("input.image_size=64", "input.image_size must be 0 .* or at least 75 for inception_v3"),
        ("train.strategy=multi_worker", "needs train.run_name"),
    ],
)
def test_bad_options_are_rejected_before_any_work(tiny, override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train(tiny.cfg("input.image_size=75", override))


def test_class_weights_only_when_classes_are_imbalanced():
    assert class_weights([0, 0, 1, 1, 2, 2], 3, "auto") is None
    assert class_weights([0, 0, 1, 1, 2, 2], 3, "on") == [1.0, 1.0, 1.0]
    weights = class_weights([0] * 8 + [1] * 2, 2, "auto")
    assert weights == pytest.approx([10 / 16, 10 / 4])
    assert class_weights([0] * 8 + [1] * 2, 2, "off") is None


@pytest.mark.slow  # two trainings: about 27 s on 2 cores
def test_same_seed_gives_the_same_metrics(tiny):
    """Initialisation, shuffling, augmentation and dropout all follow train.seed."""
    options = [
        "model.backbone=small_cnn",
        "model.cnn_width=8",
        "input.image_size=32",
        "train.head_epochs=3",
        "train.deterministic=true",
        "train.seed=7",
    ]
    first = train(tiny.cfg(*options, "train.run_name=seed-a"))
    second = train(tiny.cfg(*options, "train.run_name=seed-b"))
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    assert [[r[k] for k in keys] for r in read_history(first.run_dir)] == [
        [r[k] for k in keys] for r in read_history(second.run_dir)
    ]


# ----------------------------------------------------------------------------- flowers-mini


@pytest.mark.slow  # about 50 s on 2 cores
def test_a_short_run_on_flowers_mini_learns(tmp_path, flowers_mini, capsys):
    """From scratch (the small CNN baseline), on a fresh machine: no manifests yet."""
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{flowers_mini}",
            f"paths.data={tmp_path / 'data'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.reports={tmp_path / 'reports'}",
            "model.backbone=small_cnn",
            "input.image_size=64",
            "input.batch_size=16",
            "train.head_epochs=6",
            "train.fine_tune_epochs=0",
            "train.deterministic=true",
        ],
    )
    result = train(cfg)
    assert "Running the data stage first: no manifests" in capsys.readouterr().out
    assert result.summary.final.val_accuracy >= 0.4  # chance: 0.2


def test_the_transfer_recipe_is_a_valid_config():
    """pipeline/configs/transfer.toml: the slow test below and benchmarks/train.py load it."""
    cfg = load_config(CONFIGS / "transfer.toml")
    assert (cfg.model.backbone, cfg.model.alpha, cfg.image_size) == ("mobilenet", 0.25, 224)
    assert cfg.model.weights == "imagenet"  # the caller passes the file


@pytest.mark.slow  # about 4 minutes on 2 cores: four runs at 224 px
def test_the_default_recipe_transfers_and_keeps_up_with_frozen_features(
    flowers_prepared, mobilenet_weights
):
    """pipeline/configs/transfer.toml (the default recipe on Keras's ImageNet MobileNet,
    alpha 0.25, 224 px) on flowers-mini, three training seeds, against a run from random
    weights: the mean test accuracy is at least 30 points above random weights', and the
    mean paired difference from each run's own frozen-feature baseline is not below zero by
    more than its 95% interval. (53 test photos: one photo is 1.9 points. The margin over
    the baseline on larger sets is measured by benchmarks/recipe.py.)"""
    from pipeline.experiment import mean_ci

    base, _ = flowers_prepared
    accuracy: dict[str, list[float]] = {"pretrained": [], "random": []}
    over_baseline = []
    for name, weights, seeds in (
        ("pretrained", str(mobilenet_weights), (1, 2, 3)),
        ("random", "none", (1,)),
    ):
        for seed in seeds:
            cfg = load_config(
                CONFIGS / "transfer.toml",
                [
                    f"data.dataset={base.data.dataset}",
                    f"paths.data={base.paths.data}",
                    f"paths.models={base.paths.models}",
                    f"paths.reports={base.paths.reports}",
                    f"model.weights={weights}",
                    f"train.seed={seed}",
                    f"train.run_name=transfer-{name}-s{seed}",
                ],
            )
            summary = train(cfg).summary
            accuracy[name].append(summary.test.accuracy)
            if name == "pretrained":
                over_baseline.append(summary.test.accuracy - summary.baseline.test.accuracy)
    margin = mean_ci(over_baseline)
    print(f"test accuracy per seed: {accuracy}; over the baseline: {over_baseline}")
    assert np.mean(accuracy["pretrained"]) - np.mean(accuracy["random"]) >= 0.3, accuracy
    assert margin["mean"] + margin["ci95"] >= 0, over_baseline


def test_a_data_set_folder_with_a_space_names_a_valid_default_run(tmp_path):
    """README: DATASET="folder:~/my photos" works; its default run name must pass the
    run-name check, which refuses spaces."""
    from pipeline.config import load_config
    from pipeline.runs import resolve_run_dir

    cfg = load_config(
        None, [f"data.dataset=folder:{tmp_path / 'my photos'}", f"paths.models={tmp_path}"]
    )
    run_dir, named, resumed = resolve_run_dir(cfg)
    assert run_dir.name.startswith("my_photos-inception_v3-") and not resumed
    assert named.train.run_name == run_dir.name
