"""The predict stage (`make predict`) and the classifier API behind evaluate and export;
``predict(cfg)`` in ``stage.py`` is the entry.

    classifier  a trained run (Keras or .tflite) ready to classify files: load_classifier
    tflite      running an exported .tflite file: raw pixels in, probabilities out
    unknown     photos that fit no class: k-NN distance in the run's feature space
    stream      classifying a sorted list of files batch by batch, rows in path order
    partial     resumable CSV output: rows saved as they finish
    stage       the entry: list the input folder, stream it, write the CSV, sort copies
"""
