"""Command line: `python -m pipeline <stage> [--config FILE] [section.key=value ...]`.

Stages import TensorFlow only when they run, so `--help` and option errors are instant.
TensorFlow's C++ start-up lines are hidden unless the stage runs with --verbose
(pipeline/quiet.py says which line goes how).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config, ConfigError, load_config, valid_keys
from pipeline.quiet import configure_tensorflow_logging, import_tensorflow_quietly


def _run_data(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.data.stage import prepare_data

    prepare_data(cfg)


def _run_memory(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.config import with_overrides
    from pipeline.memory import estimate_memory

    if args.batch is not None:
        cfg = with_overrides(cfg, {"input.batch_size": args.batch})
    estimate_memory(
        cfg,
        layers=args.layers,
        input_shape=args.input,
        dtype=args.dtype,
        head=not args.no_head,
        num_classes=args.classes,
        table=not args.no_table,
    )


def _memory_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default="", metavar="HxWxC", help="input of --layers: 200x300x3")
    p.add_argument(
        "--layers",
        default="",
        metavar="SPEC",
        help="a layer stack instead of the configured backbone, e.g. conv3x3s2same:100,"
        "maxpool3x3s2,lrn,flatten,dense:10 (grammar: pipeline/memory/spec.py)",
    )
    p.add_argument("--batch", type=int, default=None, metavar="N", help="input.batch_size")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16", "int8"),
        help="value size of the textbook and inference figures (default float32)",
    )
    p.add_argument("--no-head", action="store_true", help="the backbone without its head")
    p.add_argument(
        "--classes",
        type=int,
        default=None,
        metavar="N",
        help="head size (default: the data set's classes.json, else 5)",
    )
    p.add_argument(
        "--no-table", action="store_true", help="print the summary only (reports keep the table)"
    )


def _run_review(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.review.stage import review

    review(cfg)


def _run_train(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.training import train

    train(cfg)


def _run_evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.evaluate.stage import evaluate

    evaluate(cfg)


def _run_predict(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.predict.stage import predict

    predict(cfg)


def _run_export(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.export.stage import export

    export(cfg)


def _run_experiment(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from pipeline.experiment import RESULTS_FILE, experiment_plan, run_experiment, summarize

    if not args.summarize:
        result = run_experiment(cfg)
        if result.ran and result.failed == result.ran:
            raise RuntimeError(
                f"all {result.ran} run(s) of the experiment failed (each one's error is in "
                f"{result.out_dir / RESULTS_FILE}); fix what they name and run it again"
            )
        return
    name = experiment_plan(cfg)[0]
    out = Path(cfg.paths.reports) / "experiments" / name
    extra = [Path(p.strip()) for p in cfg.experiment.results.split(",") if p.strip()]
    summarize([out / RESULTS_FILE, *extra], out, cfg.experiment)


def _apply_preset(cfg: Config) -> Config:
    from pipeline.experiment.presets import with_preset

    return with_preset(cfg)


def _experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--summarize",
        action="store_true",
        help="run nothing: summarise this experiment's results.csv and experiment.results",
    )


def _run_clean(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.clean.stage import clean

    clean(cfg)


def _show_config(cfg: Config, args: argparse.Namespace) -> None:
    import json

    print(json.dumps(cfg.to_dict(), indent=2))


Runner = Callable[[Config, argparse.Namespace], None]
AddArguments = Callable[[argparse.ArgumentParser], None]

# name -> (help, runner, extra stage-specific arguments or None). Stage modules are
# imported inside the runners, so registering a stage costs nothing at start-up.
STAGES: dict[str, tuple[str, Runner, AddArguments | None]] = {
    "data": (
        "fetch or read the data set, check every image, split, write manifests",
        _run_data,
        None,
    ),
    "review": (
        "rank suspected label errors, outliers and near-duplicates: reports/<dataset>/review/",
        _run_review,
        None,
    ),
    "train": (
        "two-phase fine-tuning (frozen base, then its top): models/<run>/, resumable",
        _run_train,
        None,
    ),
    "evaluate": (
        "metrics, figures and an HTML report for a run on the test (or val) split",
        _run_evaluate,
        None,
    ),
    "predict": (
        "classify every image below predict.input into a CSV (optionally sort copies)",
        _run_predict,
        None,
    ),
    "export": (
        "TFLite float32/float16/int8 (or SavedModel) into models/<run>/export/, each scored",
        _run_export,
        None,
    ),
    "experiment": (
        "train + evaluate every cell of experiment.grid experiment.repeats times; summary",
        _run_experiment,
        _experiment_arguments,
    ),
    "clean": (
        "remove only the folders the pipeline made (they carry .generated-by-pipeline)",
        _run_clean,
        None,
    ),
    "config": (
        "print the effective configuration (defaults < --config file < overrides)",
        _show_config,
        None,
    ),
    "memory": (
        "estimate parameters, memory and FLOPs layer by layer, and what fits memory.budget",
        _run_memory,
        _memory_arguments,
    ),
}


# A stage's last word on its configuration, before it is validated: the experiment stage
# applies experiment.preset (pipeline/configs/presets/<name>.toml) over the other values.
PREPARE: dict[str, Callable[[Config], Config]] = {"experiment": _apply_preset}

# Stages that do not import TensorFlow up front (nothing to keep quiet, nothing to wait
# for): config and clean never do; data only to draw its sample grid, and then itself,
# quietly (pipeline.data.reports): a rerun with nothing changed never waits for it.
WITHOUT_TENSORFLOW = frozenset({"config", "clean", "data"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Transfer-learning image classification, one stage at a time.",
        epilog="Overrides are section.key=value, e.g. `pipeline data data.dataset=intel "
        "input.image_size=128`. `pipeline config` lists every option with its default.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (help_text, _, add_arguments) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_arguments is not None:
            add_arguments(p)
        add_config_arguments(p)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --verbose and the overrides: the same on every command line."""
    parser.add_argument("--config", metavar="FILE", help="TOML, YAML or JSON config file")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up and C++ log lines (hidden by default)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override any option; valid names: " + ", ".join(valid_keys()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also follow a stage's options (`memory --no-table a.b=1 --batch 8 c.d=2`).
    args, extra = parser.parse_known_args(argv)
    options = [a for a in extra if a.startswith("-")]
    if options:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    args.overrides = [*args.overrides, *extra]
    configure_tensorflow_logging(args.verbose)  # before anything imports TensorFlow

    def run() -> None:
        cfg = load_config(args.config, args.overrides, PREPARE.get(args.stage))
        if not args.verbose and args.stage not in WITHOUT_TENSORFLOW:
            import_tensorflow_quietly()
        STAGES[args.stage][1](cfg, args)

    return exit_status(run)


USER_ERRORS = (
    ConfigError,
    FileNotFoundError,
    ValueError,
    RuntimeError,
)

_FREE_SPACE = (
    "free some space (or point paths.* at another disk) and run it again: finished work is kept"
)
# errno -> (what happened, the fix): what the machine refused, said in one line.
OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", _FREE_SPACE),
    **({errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE)} if hasattr(errno, "EDQUOT") else {}),
    errno.EFBIG: ("file too large for this file system or its limit", _FREE_SPACE),
    errno.EACCES: (
        "permission denied",
        "make it readable/writable for this user, or choose another path",
    ),
    errno.EPERM: (
        "operation not permitted",
        "make it writable for this user, or choose another path",
    ),
    errno.EROFS: ("read-only file system", "choose a path on a writable disk"),
    errno.ELOOP: ("too many levels of symbolic links (a link loop)", "fix or remove the link"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n 4096) or lower data.workers"),
    errno.ENFILE: ("too many open files on the system", "close other programs and run it again"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path or file name"),
    errno.EIO: ("input/output error", "check the disk (dmesg), then run it again"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "give a path in a folder"),
    errno.EEXIST: ("already exists", "move it away, or choose another path"),
}
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "ENOSPC")


def os_error_line(exc: BaseException) -> str | None:
    """One line for an error the operating system raised, or None when it is not one.

    TensorFlow and h5py wrap a full disk in their own exception types; their message still
    says so, and gets the same line.
    """
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in OS_ERRORS:
        what, fix = OS_ERRORS[code]
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        where = f"{' -> '.join(paths)}: " if paths else ""
        return f"{where}{what}; {fix}"
    text = str(exc)
    if any(marker in text for marker in _DISK_FULL_TEXT):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return f"no space left on the device ({first[:200]}); {_FREE_SPACE}"
    return None


def _save_trace(exc: BaseException) -> str:
    """Write the full trace to a log file; its path, or why it could not be written."""
    text = "".join(traceback.format_exception(exc))
    name = f"pipeline-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            path = folder / name
            path.write_text(f"{' '.join(sys.argv)}\n{text}", encoding="utf-8")
            return f"the full trace is in {path}"
        except OSError:
            continue
    return "the trace could not be saved (no writable folder)"


def exit_status(run: Callable[[], object]) -> int:
    """Run a stage: 0; a user's error or one the machine raised (one line on stderr): 2;
    Ctrl-C: 130; anything else, a bug: one line naming the log file that keeps the trace, 1.

    The stages' errors already name the cause and the fix, so no traceback is shown.
    """
    try:
        run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every exception becomes one line
        line = os_error_line(exc)
        if line is None and isinstance(exc, USER_ERRORS):
            line = str(exc)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            return 2
        summary = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        print(
            f"error: an internal error ({summary[:300]}), a bug in the pipeline; "
            f"{_save_trace(exc)}: please report it with that file",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
