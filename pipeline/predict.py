"""Classifying new photos (`make predict`), and the small API behind it and `make evaluate`.

    from pipeline.predict import load_classifier
    clf = load_classifier("flowers-inception_v3-20261122-101500")   # or () for the newest
    clf.classify(["photo.jpg"])[0]["predicted"]                     # -> 'tulips'

Every image goes through the same check, decoding and preprocessing as evaluation
(``pipeline.inputs.build_eval_dataset``), so a photo gets the same answer in both.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, load_config
from pipeline.files import write_csv
from pipeline.images import ImageCheck, check_images, has_image_extension, iter_files
from pipeline.manifest import ManifestRow
from pipeline.runs import CONFIG_FILE, LABELS_FILE, MODEL_FILE, resolve_run


@dataclass
class Classifier:
    """A trained run, ready to classify files: its model, labels and input configuration."""

    run_dir: Path
    cfg: Config
    labels: list[str]
    model: Any = field(repr=False)

    def probabilities(self, rows: list[ManifestRow], batch_size: int | None = None) -> np.ndarray:
        """Softmax outputs for checked rows, in row order, through the evaluation pipeline."""
        from pipeline.inputs import build_eval_dataset

        if not rows:
            return np.zeros((0, len(self.labels)), np.float32)
        ds = build_eval_dataset(rows, self.cfg, None, batch_size=batch_size)
        return np.concatenate([self.model.predict_on_batch(x) for x in ds]).astype(np.float64)

    def classify(self, paths: list[str | Path], top_k: int = 3) -> list[dict[str, Any]]:
        """One row per path, like the CSV: unreadable files come back with their reason."""
        checks = check_images(
            paths, self.cfg.data.min_side, self.cfg.data.max_pixels, progress=False
        )
        return classify_checked(self, checks, top_k)


def load_classifier(run: str | Path = "", models_dir: str | Path = "models") -> Classifier:
    import keras

    run_dir = resolve_run(models_dir, str(run))
    cfg = load_config(run_dir / CONFIG_FILE)
    labels = json.loads((run_dir / LABELS_FILE).read_text(encoding="utf-8"))
    model = keras.saving.load_model(run_dir / MODEL_FILE, compile=False)
    return Classifier(run_dir, cfg, labels, model)


def rows_from_checks(checks: list[ImageCheck]) -> list[ManifestRow]:
    return [
        ManifestRow(c.path, "", -1, c.sha256, c.width, c.height, c.orientation, c.decoder)
        for c in checks
        if c.status == "ok"
    ]


def top_k_columns(k: int) -> list[str]:
    return [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_probability")]


def classify_checked(clf: Classifier, checks: list[ImageCheck], top_k: int) -> list[dict]:
    top_k = min(top_k, len(clf.labels))
    ok = [c for c in checks if c.status == "ok"]
    probs = clf.probabilities(rows_from_checks(ok))
    by_path = {c.path: p for c, p in zip(ok, probs)}
    out = []
    for check in checks:
        row: dict[str, Any] = {"path": check.path, "status": check.status, "reason": check.reason}
        p = by_path.get(check.path)
        if p is not None:
            order = np.argsort(-p, kind="stable")[:top_k]
            row["predicted"] = clf.labels[order[0]]
            row["probability"] = float(p[order[0]])
            for i, j in enumerate(order, start=1):
                row[f"top{i}_label"] = clf.labels[j]
                row[f"top{i}_probability"] = float(p[j])
        out.append(row)
    return sorted(out, key=lambda r: r["path"])


@dataclass
class PredictResult:
    output: Path
    classified: int
    skipped: int
    sorted_into: Path | None = None


def list_input_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(f"IN={folder}: no such folder; give a folder of images")
    if not folder.is_dir():
        raise ValueError(f"IN={folder} is a file; give the folder that holds the images")
    files = list(iter_files(folder))
    if not any(has_image_extension(p) for p in files):
        raise ValueError(
            f"IN={folder}: no images found (searched recursively for "
            ".jpg/.jpeg/.png/.gif/.bmp/.webp)"
        )
    return files


def _copy_into(rows: list[dict], destination: Path) -> None:
    """Copy (never move) each classified image into destination/<predicted class>/."""
    for row in rows:
        if row["status"] != "ok":
            continue
        src = Path(row["path"])
        target = destination / row["predicted"] / src.name
        n = 1
        while target.exists():
            if target.read_bytes() == src.read_bytes():
                break
            target = target.with_name(f"{src.stem}-{n}{src.suffix}")
            n += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            shutil.copy2(src, partial)
            partial.replace(target)


def predict(cfg: Config) -> PredictResult:
    """Classify every image below cfg.predict.input into a CSV sorted by path."""
    p = cfg.predict
    if not p.input:
        raise ValueError("Give the folder to classify: make predict IN=path/to/photos")
    files = list_input_files(Path(p.input).expanduser())
    clf = load_classifier(cfg.eval.run, cfg.paths.models)
    print(f"Classifying {len(files)} files under {p.input} with {clf.run_dir}")
    checks = check_images(
        files, clf.cfg.data.min_side, clf.cfg.data.max_pixels, desc="Reading images"
    )
    rows = classify_checked(clf, checks, p.top_k)
    k = min(p.top_k, len(clf.labels))
    header = ["path", "status", "predicted", "probability", *top_k_columns(k), "reason"]
    output = write_csv(p.output, header, ([r.get(h, "") for h in header] for r in rows))
    skipped = sum(r["status"] != "ok" for r in rows)
    result = PredictResult(Path(p.output), len(rows) - skipped, skipped)
    print(f"Classified {result.classified} images, skipped {skipped} unreadable: {output}")
    if p.sort_into:
        result.sorted_into = Path(p.sort_into)
        _copy_into(rows, result.sorted_into)
        print(f"Copied the classified images into {result.sorted_into}/<class>/")
    return result
