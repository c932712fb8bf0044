"""Transfer-learning image classification pipeline (see README.md).

Stages: data -> train -> evaluate -> predict, plus memory estimates and experiments.
Each stage module has one public entry that takes a ``Config`` and returns what it wrote.
"""

__version__ = "0.1.0"
