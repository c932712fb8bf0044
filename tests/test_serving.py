"""The run's SavedModel as a server or another program uses it: `serve_bytes` takes encoded
photos and answers as `make predict` does; docs/export.md's TensorFlow Serving request and
`tf.saved_model.load` snippet run as printed (the server itself is out of reach: no Docker
Hub here, so its request goes through the same signature, decoded as TF Serving decodes it).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.model import BYTES_ENDPOINT
from pipeline.predict.classifier import load_classifier

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
BATCH = 64


def snippet(name: str) -> str:
    """The fenced block after ``<!-- snippet: name -->`` in docs/export.md."""
    found = re.search(
        rf"<!-- snippet: {name} -->\s*```\w*\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S
    )
    assert found, f"docs/export.md has no snippet {name!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def served(trained_run):
    """The run's own SavedModel (written by the train stage), loaded: (run folder, model)."""
    _, run_dir = trained_run
    return run_dir, tf.saved_model.load(str(run_dir / "saved_model"))


@pytest.fixture(scope="module")
def predicted_by_make_predict(trained_run, flowers_mini):
    """Every fixture photo through the Classifier API behind `make predict`: path -> row."""
    _, run_dir = trained_run
    paths = sorted(flowers_mini.glob("*/*.jpg"))
    return {row["path"]: row for row in load_classifier(run_dir).classify(paths, top_k=1)}


def serve_bytes(model, photos: list[bytes]) -> dict[str, np.ndarray]:
    outputs: dict[str, list] = {}
    for start in range(0, len(photos), BATCH):
        out = model.signatures[BYTES_ENDPOINT](images=tf.constant(photos[start : start + BATCH]))
        for key, value in out.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(parts) for key, parts in outputs.items()}


def test_the_bytes_signature_answers_as_make_predict_on_every_fixture_photo(
    served, predicted_by_make_predict
):
    run_dir, model = served
    labels = load_classifier(run_dir).labels
    paths = list(predicted_by_make_predict)
    out = serve_bytes(model, [Path(p).read_bytes() for p in paths])
    names = [n.decode() for n in out["predicted"]]
    expected = [predicted_by_make_predict[p]["predicted"] for p in paths]
    assert np.mean(np.array(names) == np.array(expected)) >= 0.995
    assert [c.decode() for c in out["classes"][0]] == labels
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    best = out["probabilities"].max(axis=1)
    reference = np.array([predicted_by_make_predict[p]["probability"] for p in paths])
    np.testing.assert_allclose(best, reference, atol=1e-4)


def test_the_bytes_signature_flags_unknown_photos_as_make_predict(served, intel_mini, flowers_mini):
    """`serve_bytes` carries the run's unknown-photo detector: the same scores and flags
    as `make predict` gives, on scene photos and on the run's own kind of photos."""
    run_dir, model = served
    paths = sorted(intel_mini.rglob("*.jpg"))[:40] + sorted(flowers_mini.glob("*/*.jpg"))[:40]
    clf = load_classifier(run_dir)
    by_path = {row["path"]: row for row in clf.classify(paths, top_k=1)}  # rows sorted by path
    rows = [by_path[str(p)] for p in paths]
    out = serve_bytes(model, [p.read_bytes() for p in paths])
    np.testing.assert_allclose(
        out["unknown_score"], [row["unknown_score"] for row in rows], atol=1e-4
    )
    assert [bool(u) for u in out["unknown"]] == [row["unknown"] == "true" for row in rows]
    assert sum(bool(u) for u in out["unknown"][:40]) > sum(bool(u) for u in out["unknown"][40:])


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_the_bytes_signature_decodes_each_format_as_make_predict(
    served, flowers_mini, tmp_path, fmt
):
    """The same photos re-encoded: each format's bytes answer as `make predict` on that file."""
    from PIL import Image

    run_dir, model = served
    files = []
    for photo in sorted(flowers_mini.glob("*/*.jpg"))[::40]:
        path = tmp_path / f"{photo.stem}.{fmt.lower()}"
        Image.open(photo).convert("RGB").save(path, fmt)
        files.append(path)
    by_path = {r["path"]: r for r in load_classifier(run_dir).classify(files, top_k=1)}
    rows = [by_path[str(p)] for p in files]
    assert all(r["status"] == "ok" for r in rows)
    out = serve_bytes(model, [p.read_bytes() for p in files])
    assert [n.decode() for n in out["predicted"]] == [r["predicted"] for r in rows]
    np.testing.assert_allclose(
        out["probabilities"].max(axis=1), [r["probability"] for r in rows], atol=1e-4
    )


def test_the_docs_tf_saved_model_load_snippet_runs(served, flowers_mini, tmp_path, monkeypatch):
    run_dir, _ = served
    photo = sorted(flowers_mini.glob("*/*.jpg"))[0]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / run_dir.name).symlink_to(run_dir)
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet("saved-model").replace("<run>", run_dir.name), scope)
    expected = load_classifier(run_dir).classify([photo], top_k=1)[0]["predicted"]
    assert scope["answer"]["predicted"][0].numpy().decode() == expected


def test_the_docs_tf_serving_request_carries_what_serve_bytes_takes(served, flowers_mini, tmp_path):
    """The request body the docs build with base64, decoded as TensorFlow Serving's REST API
    decodes {"b64": ...}, through the signature the request names."""
    run_dir, model = served
    photo = sorted(flowers_mini.glob("*/*.jpg"))[-1]
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    build = snippet("tf-serving-request").splitlines()[0]  # the curl line needs the server
    subprocess.run(["bash", "-c", build], cwd=tmp_path, check=True, env=dict(os.environ))
    request = json.loads((tmp_path / "request.json").read_text())
    images = [base64.b64decode(instance["b64"]) for instance in request["instances"]]
    assert request["signature_name"] == BYTES_ENDPOINT and images == [photo.read_bytes()]
    out = model.signatures[request["signature_name"]](images=tf.constant(images))
    expected = load_classifier(run_dir).classify([photo], top_k=1)[0]["predicted"]
    assert out["predicted"][0].numpy().decode() == expected
