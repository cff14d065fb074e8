"""Do the papers' directions reproduce at tiny scale? Same seeds and budget for every arm.

    python benchmarks/fidelity.py [--seeds 3] [--steps 150] [--experiments curriculum unlikeliness]

curriculum:    uniform vs UCB (DUMP) sampling over graded sources; held-out greedy accuracy per
               source every `--eval-every` steps.
unlikeliness:  GRPO vs GRPO + unlikeliness reward (mu = 1 and mu = 2); held-out pass@k for k up
               to 64 after training (and for the untrained model).
eva:           default LoRA init vs EVA init; training reward and held-out accuracy after the run.

Writes benchmarks/results/fidelity_<experiment>.json and .png (or under --out-dir) and prints tables.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, parser, print_table, read_jsonl, train_run, write_result  # noqa: E402

CURRICULUM_SOURCES = ["reverse_4", "sort_4", "count_8", "sort_6", "reverse_8", "add_2d", "add_3d"]
PASS_K = [1, 2, 4, 8, 16, 32, 64]


def run(overrides: list[str]) -> tuple[dict, Path]:
    return train_run("configs/debug_cpu.yaml", overrides, prefix="rlpost-fidelity-")


def curriculum(seeds: list[int], steps: int, eval_every: int) -> dict:
    arms = {"uniform": ["curriculum.name=uniform"], "ucb": ["curriculum.name=ucb"]}
    base = [f"data.sources={CURRICULUM_SOURCES}", f"trainer.steps={steps}", f"eval.every={eval_every}",
            "eval.n_samples=1", "eval.k=[1]", "eval.before=true"]
    curves: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in seeds:
        for arm, extra in arms.items():
            _, run_dir = run([*base, *extra, f"run.seed={seed}"])
            evals, probs = read_jsonl(run_dir / "eval.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
            curves[arm][seed] = {
                "steps": [e["step"] for e in evals],
                "acc": {s: [e[f"eval/greedy_acc/{s}"] for e in evals] for s in CURRICULUM_SOURCES},
                "p": {s: [r[f"curriculum/p/{s}"] for r in probs] for s in CURRICULUM_SOURCES},
            }
    return {"sources": CURRICULUM_SOURCES, "seeds": seeds, "steps": steps, "curves": curves}


def unlikeliness(seeds: list[int], steps: int) -> dict:
    arms = {
        "grpo": ["reward.unlikeliness.beta_rank=0", "algorithm.ppo_epochs=1"],
        "unlikely_mu1": ["reward.unlikeliness.beta_rank=0.25", "algorithm.ppo_epochs=1"],
        "unlikely_mu2": ["reward.unlikeliness.beta_rank=0.25", "algorithm.ppo_epochs=2"],
    }
    base = [f"trainer.steps={steps}", "eval.n_samples=64", f"eval.k={PASS_K}"]
    table: dict[str, dict[int, dict]] = {arm: {} for arm in ["base", *arms]}
    for seed in seeds:
        for i, (arm, extra) in enumerate(arms.items()):
            results, _ = run([*base, *extra, f"run.seed={seed}", f"eval.before={i == 0}"])
            if i == 0:
                table["base"][seed] = _pass_at_k(results["before"])
            table[arm][seed] = _pass_at_k(results["after"])
    return {"seeds": seeds, "steps": steps, "k": PASS_K, "pass_at_k": table}


def eva(seeds: list[int], steps: int) -> dict:
    """Default LoRA init vs EVA (spec §5): training reward and held-out greedy accuracy after `steps`."""
    arms = {"default": ["lora.init=default"], "eva": ["lora.init=eva"]}
    table: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in seeds:
        for arm, extra in arms.items():
            results, _ = run([f"trainer.steps={steps}", "eval.before=false", *extra, f"run.seed={seed}"])
            table[arm][seed] = {"train_reward_last": results["train_reward_last"],
                                "greedy_acc": float(np.mean([m["greedy_acc"] for m in results["after"].values()]))}
    return {"seeds": seeds, "steps": steps, "results": table}


def report_eva(result: dict, out_dir: Path) -> None:
    print(f"\nEVA vs default init after {result['steps']} steps, mean ± std over seeds")
    print_table(["init", "training reward (last 10 steps)", "held-out greedy acc"],
                [(arm, *(_mean_std([v[key] for v in by_seed.values()], ".3f") for key in ("train_reward_last", "greedy_acc")))
                 for arm, by_seed in result["results"].items()])


def _pass_at_k(per_source: dict[str, dict[str, float]]) -> dict[str, float]:
    """pass@k averaged over sources (each source weighs the same)."""
    return {str(k): float(np.mean([m[f"pass@{k}"] for m in per_source.values()])) for k in PASS_K}


def _mean_std(values, spec: str) -> str:
    return f"{np.mean(values):{spec}}±{np.std(values):{spec}}"


def report_curriculum(result: dict, out_dir: Path) -> None:
    print("\ncurriculum: held-out greedy accuracy, final (mean over the curve), mean ± std over seeds")
    rows = []
    for source in result["sources"]:
        cells = []
        for by_seed in result["curves"].values():
            final = [c["acc"][source][-1] for c in by_seed.values()]
            area = [np.mean(c["acc"][source]) for c in by_seed.values()]
            cells.append(f"{_mean_std(final, '.2f')} ({_mean_std(area, '.2f')})")
        rows.append((source, *cells))
    print_table(["source", *result["curves"]], rows)
    _plot_curriculum(result, out_dir / "fidelity_curriculum.png")


def report_unlikeliness(result: dict, out_dir: Path) -> None:
    print("\nunlikeliness: held-out pass@k (mean over sources), mean ± std over seeds")
    print_table(["arm", *(f"@{k}" for k in result["k"])],
                [(arm, *(_mean_std([v[str(k)] for v in by_seed.values()], ".3f") for k in result["k"]))
                 for arm, by_seed in result["pass_at_k"].items()])
    _plot_unlikeliness(result, out_dir / "fidelity_unlikeliness.png")


def _plot_curriculum(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = result["sources"]
    fig, axes = plt.subplots(2, len(sources), figsize=(3 * len(sources), 5.5), sharex=True)
    for col, source in enumerate(sources):
        for arm, by_seed in result["curves"].items():
            steps = next(iter(by_seed.values()))["steps"]
            acc = np.array([c["acc"][source] for c in by_seed.values()])
            axes[0, col].plot(steps, acc.mean(0), label=arm)
            axes[0, col].fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
            p = np.array([c["p"][source] for c in by_seed.values()])
            axes[1, col].plot(range(1, p.shape[1] + 1), p.mean(0), label=arm)
        axes[0, col].set_title(source)
        axes[1, col].set_xlabel("step")
    axes[0, 0].set_ylabel("held-out greedy accuracy")
    axes[1, 0].set_ylabel("sampling probability")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_unlikeliness(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, by_seed in result["pass_at_k"].items():
        values = np.array([[v[str(k)] for k in result["k"]] for v in by_seed.values()])
        ax.errorbar(result["k"], values.mean(0), yerr=values.std(0), label=arm, capsize=3, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("held-out pass@k (mean over sources)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--seeds", type=int, default=3)
    cli.add_argument("--steps", type=int, default=150)
    cli.add_argument("--eval-every", type=int, default=25)
    cli.add_argument("--experiments", nargs="+", default=["curriculum", "unlikeliness", "eva"])
    cli.add_argument("--out-dir", type=Path, default=RESULTS, help="where fidelity_<experiment>.json/.png go")
    args = cli.parse_args()
    seeds = list(range(args.seeds))
    experiments = {"curriculum": (lambda: curriculum(seeds, args.steps, args.eval_every), report_curriculum),
                   "unlikeliness": (lambda: unlikeliness(seeds, args.steps), report_unlikeliness),
                   "eva": (lambda: eva(seeds, args.steps), report_eva)}
    for name in args.experiments:
        build, report = experiments[name]
        result = build()
        write_result(args.out_dir / f"fidelity_{name}.json", result, indent=1)
        report(result, args.out_dir)


if __name__ == "__main__":
    main()
