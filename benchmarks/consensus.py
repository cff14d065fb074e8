"""Consensus-game ranking on the built-in tasks: which answer-picking rule is right most often?

    python benchmarks/consensus.py [--k 8] [--model PATH] [--rl-steps 100] [section.key=value ...]

(1) For every test prompt, sample k answers with the policy and pick one by majority vote, by
    generative ranking (G), by discriminative ranking (D), by ER-G and by ER-D; report how often the
    pick is correct (per source and overall).
(2) An RL run trained with the label-free consensus reward only (the verifier is used for
    evaluation, never for training); held-out greedy accuracy before and after.
Writes benchmarks/results/consensus.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUIET, parser, print_table, train_run, write_result  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.consensus_reward import PICKS, consensus_rewards  # noqa: E402
from pipeline.data import columnar, load_prompts  # noqa: E402
from pipeline.records import PromptSpec, SamplingSpec  # noqa: E402
from pipeline.tiny_model import ensure_tiny_model  # noqa: E402
from actors.policy_model import load_tokenizer  # noqa: E402
from actors.group import ActorGroup, init_ray  # noqa: E402


def ranking(cfg, model_path: str, k: int) -> dict[str, dict[str, float]]:
    _, test = load_prompts(cfg, load_tokenizer(model_path))
    init_ray(cfg)
    workers = ActorGroup(cfg, model_path)
    table = {}
    try:
        for source, rows in test.items():
            rows = rows[: cfg.eval.prompts_per_source]
            completions = workers.generate([PromptSpec(g, p.ids) for g, p in enumerate(rows)],
                                           SamplingSpec(n=k, temperature=1.0, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.run.seed))
            columns = [rows[c.group_id].columns for c in completions]
            scores = workers.score([c.text for c in completions], columnar(columns))
            correct = [t >= cfg.reward.correct_threshold for t in scores.total]
            _, metrics = consensus_rewards(cfg.reward.consensus, workers.score_texts, completions, columns, correct)
            table[source] = {name: metrics[f"consensus/pick_correct_{name}"] for name in PICKS}
            table[source]["candidates"] = metrics["consensus/candidates_per_group"]
            table[source]["any_correct"] = float(np.mean([any(correct[i] for i, c in enumerate(completions) if c.group_id == g)
                                                          for g in range(len(rows))]))
    finally:
        workers.shutdown()
    table["overall"] = {m: float(np.mean([t[m] for t in table.values()])) for m in next(iter(table.values()))}
    return table


def main() -> None:
    cli = parser(__doc__, overrides=True, out="consensus.json")
    cli.add_argument("--k", type=int, default=8)
    cli.add_argument("--model", default=None, help="a local HF causal-LM directory instead of the tiny model")
    cli.add_argument("--rl-steps", type=int, default=100)
    args = cli.parse_intermixed_args()

    overrides = [*QUIET, *args.overrides]
    if args.model:
        overrides.append(f"model.path={args.model}")
    cfg = load_config("configs/debug_cpu.yaml", overrides)
    model_path = cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))
    table = ranking(cfg, model_path, args.k)
    print(f"\npick accuracy with k={args.k} samples per prompt (any_correct = an oracle that sees all k)")
    columns = [*PICKS, "any_correct", "candidates"]
    print_table(["source", *columns], [(source, *(row[c] for c in columns)) for source, row in table.items()],
                ["", *[".3f"] * len(columns)])

    results, _ = train_run("configs/debug_cpu.yaml", [*overrides, f"trainer.steps={args.rl_steps}", "reward.consensus.weight=1",
                                                     "reward.consensus.use=label_free"])
    rl = {s: {"before": results["before"][s]["greedy_acc"], "after": results["after"][s]["greedy_acc"]} for s in results["after"]}
    print("\nlabel-free consensus RL: held-out greedy accuracy")
    print_table(["source", "before", "after"], [(s, row["before"], row["after"]) for s, row in rl.items()], ["", ".3f", ".3f"])
    write_result(args.out, {"model": args.model or "built-in tiny model", "k": args.k,
                            "pick_accuracy": table, "label_free_rl": {"steps": args.rl_steps, "greedy_acc": rl}})


if __name__ == "__main__":
    main()
