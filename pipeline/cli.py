"""Command line: `python -m pipeline <stage> [--config FILE] [section.key=value ...]`.

Stages import TensorFlow only when they run, so `--help` and option errors are instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pipeline.config import Config, ConfigError, load_config, valid_keys


def _run_data(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.data import prepare_data

    prepare_data(cfg)


def _show_config(cfg: Config, args: argparse.Namespace) -> None:
    import json

    print(json.dumps(cfg.to_dict(), indent=2))


Runner = Callable[[Config, argparse.Namespace], None]
AddArguments = Callable[[argparse.ArgumentParser], None]

# name -> (help, runner, extra stage-specific arguments or None). Stage modules are
# imported inside the runners, so registering a stage costs nothing at start-up.
STAGES: dict[str, tuple[str, Runner, AddArguments | None]] = {
    "data": ("fetch or read the data set, check every image, split, write manifests",
             _run_data, None),
    "config": ("print the effective configuration (defaults < --config file < overrides)",
               _show_config, None),
}


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
        p.add_argument("--config", metavar="FILE", help="TOML, YAML or JSON config file")
        if add_arguments is not None:
            add_arguments(p)
        p.add_argument(
            "overrides", nargs="*", metavar="section.key=value",
            help="override any option; valid names: " + ", ".join(valid_keys()),
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    try:
        cfg = load_config(args.config, args.overrides)
        STAGES[args.stage][1](cfg, args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
