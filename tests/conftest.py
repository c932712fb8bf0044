"""Shared fixtures: the real photo subsets in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared real-photo subsets are not on this machine")
    return path


@pytest.fixture(scope="session")
def flowers_mini() -> Path:
    """400 real flower photos, 5 classes, <class>/<file>.jpg (flower_photos layout)."""
    return _shared("datasets/flowers-mini")


@pytest.fixture(scope="session")
def intel_mini() -> Path:
    """Intel scenes in the Kaggle archive's nesting: seg_train/seg_train/<class>/ ..."""
    return _shared("datasets/intel-mini")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """Keras's ImageNet MobileNet v1 (alpha 0.25, no top): the one real pretrained file."""
    return _shared("weights/mobilenet_2_5_224_tf_no_top.h5")


@pytest.fixture(scope="session")
def flowers_prepared(tmp_path_factory, flowers_mini):
    """flowers-mini through the real data stage once: (config, DataResult), 128 px."""
    from pipeline.config import load_config
    from pipeline.data import prepare_data

    root = tmp_path_factory.mktemp("flowers_prepared")
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{flowers_mini}",
            f"paths.data={root / 'data'}",
            f"paths.reports={root / 'reports'}",
            f"paths.models={root / 'models'}",
            "input.image_size=128",
            "input.batch_size=16",
        ],
    )
    return cfg, prepare_data(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_run(flowers_prepared, mobilenet_weights):
    """A real, short training run on flowers-mini (MobileNet 0.25, ImageNet weights, 128 px).

    Shared by the evaluate and predict tests: (config used, run folder).
    """
    from pipeline.config import with_overrides
    from pipeline.training import train

    cfg, _ = flowers_prepared
    cfg = with_overrides(
        cfg,
        {
            "model.backbone": "mobilenet",
            "model.alpha": 0.25,
            "model.weights": str(mobilenet_weights),
            "train.head_epochs": 3,
            "train.fine_tune_epochs": 1,
            "train.run_name": "shared-run",
        },
    )
    result = train(cfg)
    return cfg, Path(result.run_dir)
