"""Apache Beam pipelines for the two per-image stages, for folders one machine cannot finish.

    python -m pipeline.beam check   [--config F] [section.key=value ...] [-- BEAM OPTIONS]
    python -m pipeline.beam predict [--config F] [section.key=value ...] [-- BEAM OPTIONS]

``check`` is the data stage's per-image check, ``predict`` is ``make predict``: the same
functions (``pipeline.images.check_image``, ``pipeline.inputs.build_eval_dataset``, the
run's model through ``pipeline.predict.classifier.load_classifier``) run inside Beam
transforms, each worker writes a CSV shard, and the shards are merged into one CSV equal to
the local stage's (pipeline/beam/shards.py). Beam is optional (``pip install -e '.[beam]'``, or
``make setup-beam``); importing this package does not import it.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install -e '.[beam]' (or: make setup-beam)"


class BeamMissingError(RuntimeError):
    """Apache Beam is not installed; the message says how to install it."""


def require_beam() -> Any:
    """The apache_beam module, or one line saying how to install it."""
    try:
        import apache_beam
    except ImportError as exc:
        raise BeamMissingError(
            f"Apache Beam is not installed ({exc.msg}): {INSTALL_HINT}"
        ) from None
    return apache_beam
