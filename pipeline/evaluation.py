"""Held-out evaluation per source: greedy accuracy and the unbiased pass@k estimator."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from math import comb

from pipeline.config import Config
from pipeline.data import columnar
from pipeline.records import PromptSpec, SamplingSpec


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of n samples, c of them correct, include a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(workers, test: dict[str, list[tuple[list[int], dict]]], cfg: Config, seed: int) -> dict[str, dict[str, float]]:
    """{source: {"greedy_acc", "reward" (greedy), "pass@k"...}} over up to eval.prompts_per_source prompts each."""
    items = [(source, ids, cols) for source, rows in test.items() for ids, cols in rows[: cfg.eval.prompts_per_source]]
    prompts = [PromptSpec(i, ids) for i, (_, ids, _) in enumerate(items)]
    base = dict(max_new_tokens=cfg.rollout.max_new_tokens, stop=tuple(cfg.rollout.stop), seed=seed)
    greedy = workers.generate(prompts, SamplingSpec(n=1, temperature=0.0, **base))
    sampled = workers.generate(prompts, SamplingSpec(n=cfg.eval.n_samples, temperature=cfg.eval.temperature,
                                                     top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, **base))
    greedy_rewards = _rewards(workers, greedy, items)
    correct_greedy = [r >= cfg.reward.correct_threshold for r in greedy_rewards]
    correct_sampled = [r >= cfg.reward.correct_threshold for r in _rewards(workers, sampled, items)]
    per_prompt = defaultdict(int)
    for completion, ok in zip(sampled, correct_sampled):
        per_prompt[completion.group_id] += ok
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for completion, ok, reward in zip(greedy, correct_greedy, greedy_rewards):
        source = items[completion.group_id][0]
        table[source]["greedy_acc"].append(float(ok))
        table[source]["reward"].append(reward)
        for k in cfg.eval.k:
            table[source][f"pass@{k}"].append(pass_at_k(cfg.eval.n_samples, per_prompt[completion.group_id], k))
    return {s: {m: sum(v) / len(v) for m, v in metrics.items()} for s, metrics in table.items()}


def evaluate_saved(cfg: Config, base_path: str, adapter_dir: Path | None) -> dict[str, dict[str, float]]:
    """Evaluate a saved adapter (or a bare model) on the config's test split, through the rollout workers."""
    import ray
    from peft.utils import load_peft_weights

    from pipeline.train import tokenized_prompts
    from pipeline.workers import Workers, init_ray

    _, test = tokenized_prompts(cfg, base_path)
    cfg.rollout.weight_sync = "adapter"  # a saved adapter is served as one, whatever the run synced
    init_ray(cfg)
    workers = Workers(cfg, base_path, with_learner=False)
    try:
        if adapter_dir is not None:
            weights = {k: v.cpu().numpy() for k, v in load_peft_weights(str(adapter_dir)).items()}
            probe = next(iter(test.values()))[0][0]
            workers.load_weights(ray.put(weights), 0, (probe, probe[:1]))
        return evaluate(workers, test, cfg, seed=cfg.run.seed)
    finally:
        workers.shutdown()


def _rewards(workers, completions, items) -> list[float]:
    return workers.score([c.text for c in completions], columnar([items[c.group_id][2] for c in completions])).total
