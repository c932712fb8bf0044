"""The user's ``exclude.txt``: photos taken out of the split without touching the photos.

``data/<dataset id>/exclude.txt`` holds one path a line: absolute, or relative to the
source folder (``roses/123.jpg``); blank lines and lines starting with ``#`` are ignored.
The pipeline reads it and never writes it (``make clean`` keeps it). Its content is one of
the split's options, so editing it rebuilds the manifests and tells a run trained before
that its split changed. No TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EXCLUDE_FILE = "exclude.txt"
REASON = f"listed in {EXCLUDE_FILE}"


@dataclass(frozen=True)
class Exclusions:
    lines: tuple[str, ...]  # the paths as written, in order

    @property
    def summary(self) -> str:
        """What the data set's record keeps: the count and a digest of the sorted lines."""
        if not self.lines:
            return "none"
        digest = hashlib.sha256("\n".join(sorted(self.lines)).encode()).hexdigest()[:12]
        return f"{len(self.lines)} path(s), sha256 {digest}"

    def resolve(self, roots: Iterable[Path]) -> dict[str, str]:
        """Real path -> the line naming it; a relative line is tried under every root."""
        found: dict[str, str] = {}
        roots = list(roots)
        for line in self.lines:
            bases = [Path(line)] if os.path.isabs(line) else [root / line for root in roots]
            for path in bases:
                found.setdefault(os.path.realpath(path), line)
        return found


def read_exclusions(dataset_dir: Path) -> Exclusions:
    path = dataset_dir / EXCLUDE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Exclusions(())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc}); fix or remove it") from exc
    lines = (line.strip() for line in text.splitlines())
    return Exclusions(tuple(line for line in lines if line and not line.startswith("#")))
