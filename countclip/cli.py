"""The ``countclip`` command. Thin: parse the config, call the library.

    countclip experiment [--config FILE] [--seed N] [--out DIR] [field.sub=value ...]
"""

from __future__ import annotations

import argparse
import sys

from countclip.config import ConfigError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (defaults apply to fields it leaves out)")
    parser.add_argument("overrides", nargs="*", metavar="field.sub=value", help="override single config fields")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="countclip", description="Teach CLIP to count.")
    commands = parser.add_subparsers(dest="command", required=True)

    exp = commands.add_parser("experiment", help="the CountWorld counting experiment: base vs control vs CountCLIP")
    _add_config_args(exp)
    exp.add_argument("--seed", type=int, help="master seed (shortcut for seed=N)")
    exp.add_argument("--out", help="output folder (shortcut for out=DIR)")
    exp.set_defaults(run=_experiment)
    return parser


def _experiment(args: argparse.Namespace) -> int:
    from countclip.experiment import ExperimentConfig, run_experiment

    overrides = list(args.overrides)
    overrides += [f"seed={args.seed}"] if args.seed is not None else []
    overrides += [f"out={args.out}"] if args.out else []
    cfg = ExperimentConfig.load(args.config, overrides)
    report = run_experiment(cfg, echo=lambda line: print(line, flush=True))
    print(f"report: {cfg.out}/report.json")
    return 0 if report else 1


def main(argv: list[str] | None = None) -> int:
    from countclip.environment import configure_environment

    args = build_parser().parse_args(argv)
    configure_environment()
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"countclip: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"countclip: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
