"""Running an exported .tflite classifier: raw RGB pixels in [0, 255] in, probabilities out,
and each photo's unknown_score beside them from a file exported with the run's detector.

Shared by the export stage (scoring what it wrote) and predict (``MODEL=...tflite``). Uses
``tf.lite.Interpreter``, which ships with the pinned TensorFlow (docs/export.md says
why not ai-edge-litert); its deprecation notice is silenced here, once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from pipeline.quiet import stderr_without

TFLITE_SUFFIX = ".tflite"
XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def cpu_threads() -> int:
    """Every core this process may use: the interpreter defaults to fewer."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TFLiteModel:
    """One interpreter over a .tflite file or its bytes; callable on a batch of raw pixels.

    The input's batch dimension is resized to each batch, so any batch size works.
    """

    def __init__(self, path: str | Path | None = None, content: bytes | None = None) -> None:
        import tensorflow as tf

        self.path = Path(path) if path is not None else None
        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": docs/export.md
            warnings.simplefilter("ignore")
            try:
                self._interpreter = tf.lite.Interpreter(
                    model_path=str(path) if content is None else None,
                    model_content=content,
                    num_threads=cpu_threads(),
                )
            except (ValueError, RuntimeError) as exc:
                cause = " ".join(str(exc).split())[:160]
                raise ValueError(
                    f"{path} is not a readable TFLite model ({cause}); export it again with "
                    "`make export RUN=<run>`"
                ) from None
        inputs = self._interpreter.get_input_details()
        outputs = _named_outputs(self._interpreter)
        if len(inputs) != 1 or outputs is None:
            raise ValueError(
                f"{path} has {len(inputs)} inputs and "
                f"{len(self._interpreter.get_output_details())} outputs, not one image input "
                "and a probability output (and perhaps unknown_score); export it with "
                "`make export RUN=<run>`"
            )
        self._input = inputs[0]
        self._output, self._unknown = outputs
        if self._input["dtype"] != np.float32:
            raise ValueError(
                f"{path} takes {np.dtype(self._input['dtype']).name} input, not float pixels; "
                "export it with `make export RUN=<run>` (float input and output)"
            )
        self._batch = -1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(height, width, channels) of one image."""
        return tuple(int(d) for d in self._input["shape"][1:])

    @property
    def outputs(self) -> int:
        return int(self._output["shape"][-1])

    @property
    def has_unknown(self) -> bool:
        """Whether the file answers each photo's unknown_score too."""
        return self._unknown is not None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (batch, classes) for float pixels (batch, h, w, 3) in [0, 255]."""
        return self.scored(pixels)[0]

    def scored(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, from the same invocation, unknown scores (batch,); None from a
        file without the unknown_score output."""
        pixels = np.asarray(pixels, np.float32)
        if len(pixels) != self._batch:
            self._interpreter.resize_tensor_input(
                self._input["index"], [len(pixels), *pixels.shape[1:]]
            )
            with stderr_without(XNNPACK_NOTICE):  # printed by C++ once: pipeline/quiet.py
                self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._input["index"], pixels)
        self._interpreter.invoke()
        probabilities = np.array(self._interpreter.get_tensor(self._output["index"]))
        if self._unknown is None:
            return probabilities, None
        return probabilities, np.array(self._interpreter.get_tensor(self._unknown["index"]))[:, 0]


def _named_outputs(interpreter: object) -> tuple[dict, dict | None] | None:
    """(probabilities, unknown_score) output details: the one output of a plain file, or the
    two its signature names; None for any other layout."""
    outputs = interpreter.get_output_details()
    if len(outputs) == 1:
        return outputs[0], None
    signatures = interpreter.get_signature_list()
    if len(outputs) != 2 or len(signatures) != 1:
        return None
    named = {o["index"]: o for o in outputs}
    indices = interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
    if set(indices) != {"probabilities", "unknown_score"}:
        return None
    probabilities, unknown = (
        named[indices[n]["index"]] for n in ("probabilities", "unknown_score")
    )
    return probabilities, unknown
