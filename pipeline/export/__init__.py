"""The export stage (`make export`) as a package; ``export(cfg)`` in ``stage.py`` is the entry.

record  what export.json vouches for, and the check that a .tflite belongs to a run
scores  what each exported file costs and keeps: the figures and their table
stage   the entry: convert, score on the test split, write export.json
"""
