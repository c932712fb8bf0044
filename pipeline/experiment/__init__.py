"""The experiment stage (`make experiment`): a grid of configurations, each run several times.

Single runs mislead: two runs of one configuration differ by about a point of accuracy.
Every cell of the grid is trained and evaluated ``experiment.repeats`` times with
different seeds on the same data split, and the summary reports mean, standard deviation
and a 95% confidence interval per configuration, saying plainly when the best one is not
distinguishable from the runner-up.

One responsibility per module:

- ``presets``: named sweeps stored as data (pipeline/configs/presets/<name>.toml), loaded by name.
- ``grid``: parse and expand experiment.grid, name its cells, validate the whole plan.
- ``runner``: run every cell x repeat, resumably, into results.csv.
- ``results``: results.csv's row (``RunRow``), written and read in one place each.
- ``stats``: mean and confidence interval, Welch's noise test, the verdicts.
- ``summary``: summary.md, summary.json and the plots from any results.csv files.

Public entries: ``run_experiment(cfg)`` and ``summarize(result_files, out_dir)``.
"""

from pipeline.experiment.grid import cell_id, cell_label, expand_grid, experiment_plan, parse_grid
from pipeline.experiment.presets import Preset, apply_preset, load_preset, preset_names
from pipeline.experiment.results import (
    RESULT_COLUMNS,
    RESULTS_FILE,
    RunRow,
    read_results,
    write_results,
)
from pipeline.experiment.runner import (
    ExperimentResult,
    device_label,
    peak_training_memory,
    run_experiment,
)
from pipeline.experiment.stats import mean_ci, within_noise
from pipeline.experiment.summary import METRICS, SUMMARY_JSON, SUMMARY_MD, summarize

__all__ = [
    "METRICS",
    "RESULTS_FILE",
    "RESULT_COLUMNS",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "ExperimentResult",
    "Preset",
    "RunRow",
    "apply_preset",
    "cell_id",
    "cell_label",
    "device_label",
    "expand_grid",
    "experiment_plan",
    "load_preset",
    "mean_ci",
    "parse_grid",
    "peak_training_memory",
    "preset_names",
    "read_results",
    "run_experiment",
    "summarize",
    "within_noise",
    "write_results",
]
