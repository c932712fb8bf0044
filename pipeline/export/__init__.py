"""The export stage (`make export`) as a package; ``export(cfg)`` in ``stage.py`` is the entry.

metadata  the TFLite metadata each file carries (labels, input spec), written and read back
runtimes  the other runtimes a file is checked against (MediaPipe's ImageClassifier)
record    what export.json vouches for, and the check that a .tflite belongs to a run
scores    what each exported file costs and keeps: the figures and their table
stage     the entry: convert, score on the test split, write export.json
"""
