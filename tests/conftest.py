"""Shared fixtures, all read from tests/fixtures/ (in the repository: nothing is skipped for
want of data), and the skip policy: a test may skip only for a reason on ALLOWED_SKIPS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Skip reasons that are expected on a developer's machine that lacks a system tool. Under CI
# (env CI set, as .ci/run runs) none is: .ci/run installs chromium (the browser test fails,
# not skips, on CI without it) and runs through make. Any other skip fails the run (below).
ALLOWED_SKIPS = (
    "Debian's chromium is not installed",  # tests/test_evaluate.py, the browser test
    "make is not installed",  # tests/support.py needs_make
    "mounting a tmpfs needs root",  # tests/test_fault_safety.py, the full-disk tests
)
ALLOWED_SKIPS_ON_CI: tuple[str, ...] = ()


@pytest.fixture(scope="session")
def flowers_mini() -> Path:
    """400 real flower photos, 5 classes, <class>/<file>.jpg (flower_photos layout), shorter
    side 160 px (tests/fixtures/README.md)."""
    return FIXTURES / "flowers-mini"


@pytest.fixture(scope="session")
def intel_mini() -> Path:
    """Intel scenes in the Kaggle archive's nesting: seg_train/seg_train/<class>/ (20 per
    class), seg_test/seg_test/<class>/ (8 per class), seg_pred/seg_pred/ (10)."""
    return FIXTURES / "intel-mini"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """Keras's ImageNet MobileNet v1 (alpha 0.25, no top): the one real pretrained file."""
    return FIXTURES / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


# ----------------------------------------------------------------------------- skip policy

_unexpected_skips: list[str] = []


def _allowed() -> tuple[str, ...]:
    return ALLOWED_SKIPS_ON_CI if os.environ.get("CI") else ALLOWED_SKIPS


def _record_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not any(allowed in reason for allowed in _allowed()):
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report) -> None:
    _record_skip(report)


def pytest_collectreport(report) -> None:
    _record_skip(report)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _unexpected_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _unexpected_skips:
        where = "on CI (env CI is set)" if os.environ.get("CI") else "(ALLOWED_SKIPS)"
        terminalreporter.section("unexpected skips", sep="=", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(_unexpected_skips)} test(s) skipped for a reason not allowed {where}; "
            "the run fails (tests/conftest.py, skip policy):"
        )
        for line in _unexpected_skips:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def flowers_prepared(tmp_path_factory, flowers_mini):
    """flowers-mini through the real data stage once: (config, DataResult), 128 px."""
    from pipeline.config import load_config
    from pipeline.data.stage import prepare_data

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
            "train.run_name": "trained-run",
        },
    )
    result = train(cfg)
    return cfg, Path(result.run_dir)
