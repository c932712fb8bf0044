"""The runtimes an exported .tflite file is checked against, beside this project's own
interpreter: MediaPipe's ``ImageClassifier`` (the mobile task API that also stands for the
TFLite Task Library and ML Kit), loading the file as it is, with no label file or
normalisation given, when the ``mediapipe`` package is installed (the dev extra).

MediaPipe is given each photo decoded as `make predict` decodes it (oriented RGB) and the
evaluation crop as its region of interest, so what can differ from `make predict` is its
resize (bilinear, no antialiasing) and nothing in the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import metadata as dist
from pathlib import Path

import numpy as np

from pipeline.export.record import MediaPipeFigures

LATENCY_IMAGES = 20  # the first test photos timed one by one, after a warm-up call


def interpreter_name() -> str:
    import tensorflow as tf

    return f"tf.lite.Interpreter (TensorFlow {tf.__version__})"


def mediapipe_version() -> str | None:
    """The installed mediapipe's version, None without it."""
    try:
        return dist.version("mediapipe")
    except dist.PackageNotFoundError:
        return None


def centre_roi(height: int, width: int, fraction: float) -> tuple[float, float, float, float]:
    """The evaluation crop (``pipeline.inputs``' centred square, ``fraction`` of the shorter
    side) as MediaPipe's normalised region of interest: (left, top, right, bottom)."""
    side = max(1, int(min(height, width) * fraction))
    top, left = (height - side) // 2, (width - side) // 2
    return left / width, top / height, (left + side) / width, (top + side) / height


class MediaPipeClassifier:
    """MediaPipe's ImageClassifier over one .tflite file: every class's score per image."""

    def __init__(self, path: Path, fraction: float) -> None:
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision import image_classifier

        options = image_classifier.ImageClassifierOptions(
            base_options=BaseOptions(model_asset_path=str(path)), max_results=-1
        )
        self._task = image_classifier.ImageClassifier.create_from_options(options)
        self.fraction = fraction

    def scores(self, rgb: np.ndarray) -> dict[str, float]:
        """Class name -> score for one oriented HxWx3 uint8 image, centre-cropped."""
        return self.classify(rgb)[0]

    def classify(self, rgb: np.ndarray) -> tuple[dict[str, float], bool | None]:
        """``scores`` and whether MediaPipe flags the photo unknown: the unknown_score head
        answers its one category only above the threshold in the file's metadata (None for
        a file without that head)."""
        import mediapipe as mp
        from mediapipe.tasks.python.components.containers.rect import RectF
        from mediapipe.tasks.python.vision.core.image_processing_options import (
            ImageProcessingOptions,
        )

        left, top, right, bottom = centre_roi(*rgb.shape[:2], self.fraction)
        rect = RectF(left=left, top=top, right=right, bottom=bottom)
        roi = ImageProcessingOptions(region_of_interest=rect)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        result = self._task.classify(image, roi)
        heads = {head.head_name: head.categories for head in result.classifications}
        classes = {c.category_name: c.score for c in result.classifications[0].categories}
        return classes, (bool(heads["unknown_score"]) if "unknown_score" in heads else None)

    def close(self) -> None:
        self._task.close()


def mediapipe_figures(
    path: Path,
    paths: Sequence[str],
    labels: Sequence[str],
    fraction: float,
    top1: np.ndarray,
    flags: np.ndarray | None = None,
) -> MediaPipeFigures:
    """MediaPipe on the photos ``paths``: whether it names the run's classes, the share of
    photos whose top-1 is ``top1`` (this project's answer through the same file), the share
    it flags unknown as ``flags`` (the same file's, through this project's interpreter) and
    its latency per image (decode excluded: resize and model)."""
    from pipeline.images import load_rgb

    images = [load_rgb(p) for p in paths]
    task = MediaPipeClassifier(path, fraction)
    try:
        task.scores(images[0])  # warm-up
        predicted, unknown, named = [], [], True
        for rgb in images:
            scores, flagged = task.classify(rgb)
            named = named and sorted(scores) == sorted(labels)
            predicted.append(max(scores, key=scores.__getitem__))
            unknown.append(flagged)
        timed = images[:LATENCY_IMAGES]
        start = time.perf_counter()
        for rgb in timed:
            task.scores(rgb)
        latency = (time.perf_counter() - start) / len(timed)
    finally:
        task.close()
    same = np.array(predicted) == np.array([labels[i] for i in top1])
    return {
        "runtime": f"MediaPipe ImageClassifier {mediapipe_version()}",
        "names_classes": named,
        "top1_agreement": float(same.mean()),
        "unknown_agreement": (
            None
            if flags is None or None in unknown
            else float(np.mean(np.array(unknown) == np.asarray(flags)))
        ),
        "images": len(images),
        "latency_ms": 1000 * latency,
    }
