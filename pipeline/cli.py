"""Command line: `rlpost train CONFIG [section.key=value ...]` (also `python -m pipeline ...`)."""
from __future__ import annotations

import argparse
import sys

from pipeline.config import describe_options, load_config
from pipeline.errors import RlpostError


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
    train.add_argument("--dry-run", action="store_true", help="validate, resolve model and data, show three prompts as the "
                       "policy sees them, the placement and the learner's memory; start nothing")
    evaluate = commands.add_parser("eval", help="evaluate a run's final adapter, an adapter, or a model on held-out data")
    evaluate.add_argument("target", help="a run directory, a peft adapter directory, or a HF model directory")
    evaluate.add_argument("--config", help="config for an adapter or model target (default configs/debug_cpu.yaml)")
    evaluate.add_argument("overrides", nargs="*", help="section.key=value, e.g. eval.n_samples=16 eval.k=[1,16]")
    export = commands.add_parser("export", help="merge a run's final adapter into a full Hugging Face model")
    export.add_argument("run_dir")
    export.add_argument("--merged", required=True, help="output directory")
    sub = commands.add_parser("submit", help="run a training job on a Ray cluster (ray job submit)")
    sub.add_argument("config")
    sub.add_argument("overrides", nargs="*")
    sub.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard / job API address")
    sub.add_argument("--no-wait", action="store_true", help="return after submitting instead of streaming the logs")
    args, extra = parser.parse_known_args(argv)  # overrides may also follow an option (`CONFIG --dry-run a.b=1`)
    if any(e.startswith("-") or "=" not in e for e in extra) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return COMMANDS[args.command](args)
    except RlpostError as err:  # a problem the user can fix: one line, never a traceback
        print(f"rlpost: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code


def _train(args) -> int:
    overrides = [f"run.{o}" if o.startswith("resume=") else o for o in args.overrides]  # `resume=auto` for short
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        from pipeline.dry_run import dry_run

        print(dry_run(cfg))
        return 0
    from pipeline.train import train  # heavy imports only once the config is valid

    train(cfg)
    return 0


def _submit(args) -> int:
    from actors.jobs import submit

    status = submit(args.config, args.overrides, args.address, wait=not args.no_wait)
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def _export(args) -> int:
    from pipeline.export import export_merged

    print(f"merged model written to {export_merged(args.run_dir, args.merged)}")
    return 0


def _eval(args) -> int:
    import json
    from pathlib import Path

    from pipeline.evaluation import evaluate_saved
    from pipeline.export import resolve_target

    cfg, base, adapter = resolve_target(Path(args.target), args.config, args.overrides)
    results = evaluate_saved(cfg, base, adapter)
    for source, metrics in results.items():
        print(f"{source:<12} " + "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    out = Path(args.target) / "eval_saved.json" if adapter is not None and Path(args.target).is_dir() else None
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return 0


COMMANDS = {"train": _train, "eval": _eval, "export": _export, "submit": _submit}


if __name__ == "__main__":
    sys.exit(main())
