"""The evaluate stage (`make evaluate`) as a package; ``evaluate(cfg)`` (``stage.py``) is the
entry.

metrics      classification metrics from labels and probabilities: pure functions
calibration  temperature scaling (fitted by the train stage) and the ECE: pure functions
report       the one self-contained HTML page per evaluated run
stage        the entry: predict the split once, compute metrics, draw figures, write the report
"""
