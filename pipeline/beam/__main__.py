"""`python -m pipeline.beam check|predict [--config F] [section.key=value ...] [BEAM OPTIONS]`.

Our options and overrides first; every other ``--name=value`` (after an optional ``--``) is
a Beam pipeline option, passed on untouched: --runner, --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, --flink_master, ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import add_config_arguments, exit_status
from pipeline.config import load_config
from pipeline.quiet import configure_tensorflow_logging

STAGES = {
    "check": "the data stage's per-image check of data.dataset: a check_report.csv",
    "predict": "make predict: classify every image below predict.input into predict.output",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.beam",
        description="The per-image stages on Apache Beam (any runner), CSVs equal to the "
        "local ones.",
        epilog="Beam options go after our own, as --name=value: --runner=DirectRunner "
        "--direct_num_workers=2 --direct_running_mode=multi_processing (README, 'Apache Beam').",
    )
    parser.add_argument(
        "stage", choices=STAGES, help="; ".join(f"{k}: {v}" for k, v in STAGES.items())
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the merged CSV (check: data/<dataset id>/beam/check_report.csv; "
        "predict: predict.output)",
    )
    parser.add_argument(
        "--shards",
        default=None,
        metavar="FOLDER",
        help="where workers write their CSV shards (default: beside the output; on a "
        "cluster a folder every worker can write, e.g. gs://bucket/tmp); deleted once merged",
    )
    add_config_arguments(parser)
    return parser


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(ours, Beam's): after ``--`` everything is Beam's; before it, unknown --options are."""
    after: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    known = {"--config", "--output", "--shards", "--verbose", "-h", "--help"}
    ours: list[str] = []
    beam_args: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and name not in known:
            beam_args.append(arg)
            continue
        ours.append(arg)
        if name in {"--config", "--output", "--shards"} and "=" not in arg:
            ours.append(next(args, ""))
    beam_args += after
    return ours, beam_args


# Beam's workers log every bundle at INFO and RunInference warns once per bundle that it
# cannot read memory usage; errors still show. --default_sdk_harness_log_level=INFO undoes it.
QUIET_WORKERS = "--default_sdk_harness_log_level=ERROR"


def main(argv: list[str] | None = None) -> int:
    ours, beam_args = split_arguments(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith(QUIET_WORKERS.split("=")[0]) for a in beam_args):
        beam_args.append(QUIET_WORKERS)
    args = build_parser().parse_args(ours)
    configure_tensorflow_logging(args.verbose)  # the worker processes inherit it

    def run() -> None:
        cfg = load_config(args.config, args.overrides)
        if args.stage == "check":
            from pipeline.beam.check import run_check

            run_check(cfg, args.output, args.shards, beam_args)
        else:
            from pipeline.beam.predict import run_predict

            run_predict(cfg, args.output, args.shards, beam_args)

    return exit_status(run)  # a missing Beam is a RuntimeError: one line, exit code 2


if __name__ == "__main__":
    sys.exit(main())
