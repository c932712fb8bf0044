"""Collection without the optional Beam dependency (`make setup` does not install it).

pipeline/beam's pipelines and their tests import apache_beam, which only `make setup-beam`
installs (in .venv-beam/: its pins differ, constraints-beam.txt); without it they are not
collected at all, rather than failing to import. `make test-beam` runs them where Beam is
installed, and fails if it is not (tests/test_beam.py), so CI never loses them silently.
"""

from __future__ import annotations

import importlib.util

BEAM_ONLY = ["pipeline/beam/check.py", "pipeline/beam/predict.py", "tests/test_beam.py"]
collect_ignore = [] if importlib.util.find_spec("apache_beam") else BEAM_ONLY
