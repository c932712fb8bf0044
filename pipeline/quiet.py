"""Quiet start-up: TensorFlow's C++ start-up lines are hidden unless a stage runs --verbose.

What prints before the pipeline's first line, and what silences it (TensorFlow 2.18-2.21):

- ``I0000 ... cpu_feature_guard.cc ... This TensorFlow binary is optimized to use available
  CPU instructions ...`` and the oneDNN notice (``oneDNN custom operations are on ...``):
  INFO lines of TensorFlow's own logging, dropped by TF_CPP_MIN_LOG_LEVEL >= 1. TensorFlow
  reads the variable when it first logs, so it must be set before TensorFlow is imported
  (TF_ENABLE_ONEDNN_OPTS=0 would also drop the oneDNN notice, by changing the numerics:
  not used).
- ``WARNING: All log messages before absl::InitializeLog() is called are written to
  STDERR``: abseil prints it once, above the first line anything logs before
  absl::InitializeLog() (which nothing in Python calls). No variable controls it; it
  disappears with the line it announces.
- GPU builds add ``E0000 ... Unable to register cuDNN/cuFFT/cuBLAS factory`` and ``W0000
  ... computation_placer.cc ... already registered``: XLA logs these through abseil
  directly while its libraries load, and TF_CPP_MIN_LOG_LEVEL, even 3, does not reach
  them (tensorflow/tensorflow#100442, #62075). The only cure from Python is to point file
  descriptor 2 elsewhere while TensorFlow is imported, and back afterwards.
- ``E0000 ... util.cc ... oneDNN supports DT_UINT8 only on platforms with AVX-512``: where
  TensorFlow's oneDNN does not count the CPU as AVX-512 capable, its graph pass logs it,
  at error level, for any uint8 Transpose in a graph (a photo's EXIF rotation). Nothing
  fails; ``pipeline.inputs`` rotates by gathering instead, so no such node exists.
- ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``: TFLite's own minimal
  logger (not TensorFlow's), printed once per process from C++ when the first interpreter
  allocates its tensors. It reads no environment variable (TF_CPP_MIN_LOG_LEVEL=3 leaves
  it) and its setter is not exposed to Python; turning the delegate off would hide it by
  making every file slower. So ``pipeline.predict.tflite`` allocates with file descriptor 2 caught
  (``stderr_without``) and writes back everything else it caught. The int8 converter's
  ``fully_quantize: 0, inference_type: 6, ...`` (MLIR's quantiser, C++, to stderr) is
  dropped the same way by ``pipeline.export.stage``.

So by default the command line sets TF_CPP_MIN_LOG_LEVEL=2 (INFO and WARNING dropped, C++
errors still shown) unless the environment sets it, and imports TensorFlow with stderr
caught (``import_tensorflow_quietly``): what the import printed is replayed only if it
fails. ``--verbose`` sets TF_CPP_MIN_LOG_LEVEL=0 and imports TensorFlow plainly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def configure_tensorflow_logging(verbose: bool) -> None:
    """Before TensorFlow is imported: every C++ log line (verbose) or only errors."""
    if verbose:
        os.environ[LOG_LEVEL] = "0"
    else:
        os.environ.setdefault(LOG_LEVEL, "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 caught in a temporary file, then restored;
    what the import wrote is written back to stderr only if the import fails."""
    if "tensorflow" in sys.modules:
        return
    with _fd2_caught(lambda text, failed: text if failed else ""):
        import tensorflow  # noqa: F401


def import_tensorflow_unless_verbose() -> None:
    """For a stage that needs TensorFlow only sometimes (the data stage's sample grid): the
    quiet import, unless --verbose (TF_CPP_MIN_LOG_LEVEL=0) asked for TensorFlow's lines."""
    if not verbose():
        import_tensorflow_quietly()


@contextmanager
def _fd2_caught(kept: Callable[[str, bool], str]) -> Iterator[None]:
    """Point file descriptor 2 (C++ writes there, below sys.stderr) at a temporary file for
    the block; afterwards restore it and write back ``kept(caught text, block raised)``."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            sys.stderr.write(kept(caught.read().decode(errors="replace"), failed))
            sys.stderr.flush()


def verbose() -> bool:
    """Whether C++ INFO lines are wanted: ``--verbose`` sets TF_CPP_MIN_LOG_LEVEL=0."""
    return os.environ.get(LOG_LEVEL) == "0"


@contextmanager
def stderr_without(*noise: str) -> Iterator[None]:
    """Run the block with file descriptor 2 caught; afterwards write back to stderr every
    caught line but those that start with one of ``noise``. A no-op when ``verbose()``."""
    if verbose():
        yield
        return

    def kept(text: str, failed: bool) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith(noise))  # tuple: any

    with _fd2_caught(kept):
        yield
