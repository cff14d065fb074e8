"""Command line: `rlpost train CONFIG [section.key=value ...]` (also `python -m pipeline ...`)."""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, describe_options, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlpost", description="Ray-based RL post-training for language models")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="run a GRPO post-training job",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a training job. Overrides are section.key=value (values parsed as YAML).",
        epilog="options (section.key = default  [type]  description):\n" + "\n".join(describe_options()),
    )
    train.add_argument("config", help="YAML config file, e.g. configs/debug_cpu.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. trainer.lr=1e-4 rollout.n=8; resume=auto|PATH")
    args = parser.parse_args(argv)

    overrides = [f"run.{o}" if o.startswith("resume=") else o for o in args.overrides]  # `resume=auto` for short
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"rlpost: {err}", file=sys.stderr)
        return 2
    from pipeline.train import USER_ERRORS, train as run_training  # heavy imports only once the config is valid

    try:
        run_training(cfg)
    except USER_ERRORS as err:
        print(f"rlpost: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
