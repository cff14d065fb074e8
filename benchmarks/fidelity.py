"""Do the papers' directions reproduce at tiny scale? Same seeds and budget for every arm.

    python benchmarks/fidelity.py [--seeds 3] [--steps 150] [--experiments curriculum unlikeliness]

curriculum:    uniform vs UCB (DUMP) sampling over graded sources; held-out greedy accuracy per
               source every `--eval-every` steps.
unlikeliness:  GRPO vs GRPO + unlikeliness reward (mu = 1 and mu = 2); held-out pass@k for k up
               to 64 after training (and for the untrained model).
eva:           default LoRA init vs EVA init; training reward and held-out accuracy after the run.

Writes benchmarks/results/fidelity_<experiment>.json and .png and prints tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.train import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CURRICULUM_SOURCES = ["reverse_4", "sort_4", "count_8", "sort_6", "reverse_8", "add_2d", "add_3d"]
PASS_K = [1, 2, 4, 8, 16, 32, 64]
COMMON = ["tracking.wandb=disabled", "run.checkpoint_every=0"]


def run(overrides: list[str]) -> tuple[dict, Path]:
    run_dir = Path(tempfile.mkdtemp(prefix="rlpost-fidelity-"))
    cfg = load_config("configs/debug_cpu.yaml", [*COMMON, *overrides, f"run.dir={run_dir}"])
    return train(cfg), run_dir


def curriculum(seeds: list[int], steps: int, eval_every: int) -> dict:
    arms = {"uniform": ["curriculum.name=uniform"], "ucb": ["curriculum.name=ucb"]}
    base = [f"data.sources={CURRICULUM_SOURCES}", f"trainer.steps={steps}", f"eval.every={eval_every}",
            "eval.n_samples=1", "eval.k=[1]", "eval.before=true"]
    curves: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in seeds:
        for arm, extra in arms.items():
            _, run_dir = run([*base, *extra, f"run.seed={seed}"])
            evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
            probs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
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


def report_eva(result: dict) -> None:
    print(f"\nEVA vs default init after {result['steps']} steps, mean ± std over seeds")
    for arm, by_seed in result["results"].items():
        reward = [v["train_reward_last"] for v in by_seed.values()]
        acc = [v["greedy_acc"] for v in by_seed.values()]
        print(f"{arm:<10} training reward (last 10 steps) {np.mean(reward):.3f}±{np.std(reward):.3f}   "
              f"held-out greedy acc {np.mean(acc):.3f}±{np.std(acc):.3f}")


def _pass_at_k(per_source: dict[str, dict[str, float]]) -> dict[str, float]:
    """pass@k averaged over sources (each source weighs the same)."""
    return {str(k): float(np.mean([m[f"pass@{k}"] for m in per_source.values()])) for k in PASS_K}


def report_curriculum(result: dict) -> None:
    print("\ncurriculum: held-out greedy accuracy, final (mean over the curve), mean ± std over seeds")
    print(f"{'source':<10}" + "".join(f"{arm:>26}" for arm in result["curves"]))
    for source in result["sources"]:
        cells = []
        for by_seed in result["curves"].values():
            final = [c["acc"][source][-1] for c in by_seed.values()]
            area = [np.mean(c["acc"][source]) for c in by_seed.values()]
            cells.append(f"{np.mean(final):.2f}±{np.std(final):.2f} ({np.mean(area):.2f}±{np.std(area):.2f})")
        print(f"{source:<10}" + "".join(f"{c:>26}" for c in cells))
    _plot_curriculum(result)


def report_unlikeliness(result: dict) -> None:
    print("\nunlikeliness: held-out pass@k (mean over sources), mean ± std over seeds")
    print(f"{'arm':<14}" + "".join(f"{'@' + str(k):>13}" for k in result["k"]))
    for arm, by_seed in result["pass_at_k"].items():
        cells = [f"{np.mean([v[str(k)] for v in by_seed.values()]):.3f}±{np.std([v[str(k)] for v in by_seed.values()]):.3f}"
                 for k in result["k"]]
        print(f"{arm:<14}" + "".join(f"{c:>13}" for c in cells))
    _plot_unlikeliness(result)


def _plot_curriculum(result: dict) -> None:
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
    fig.savefig(RESULTS / "fidelity_curriculum.png", dpi=90)


def _plot_unlikeliness(result: dict) -> None:
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
    fig.savefig(RESULTS / "fidelity_unlikeliness.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--experiments", nargs="+", default=["curriculum", "unlikeliness", "eva"])
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU only"
    experiments = {"curriculum": (lambda: curriculum(seeds, args.steps, args.eval_every), report_curriculum),
                   "unlikeliness": (lambda: unlikeliness(seeds, args.steps), report_unlikeliness),
                   "eva": (lambda: eva(seeds, args.steps), report_eva)}
    for name in args.experiments:
        build, report = experiments[name]
        result = build()
        result["machine"] = machine
        (RESULTS / f"fidelity_{name}.json").write_text(json.dumps(result, indent=1))
        report(result)


if __name__ == "__main__":
    main()
