"""The data stage (`make data`) as a package; ``prepare_data(cfg)`` in ``stage.py`` is the entry.

    sources      where a data set's files are: a folder, an archive, a download
    listing      every candidate file of a source, listed once, and why one is unusable
    check_cache  remembered image checks, so a rerun re-checks only new or changed files
    split        each image's split as a function of its content and the seed
    near_duplicates  near-copies found by their perceptual hashes, kept in one split
    exclude      the user's exclude.txt: photos taken out of the split
    manifest     the CSV files that say which image is in which split (read by every stage)
    provenance   a data set's identity and a run's own split, so no metric uses wrong data
    image_cache  the decoded-image cache of smaller oriented copies (``data.cache_size``)
    reports      the class-distribution and augmented-sample figures
    stage        the entry: list, check, split, write manifests

Importing the package imports nothing heavy; the modules import what they use.
"""
