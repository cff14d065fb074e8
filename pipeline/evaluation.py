"""Held-out evaluation per source: greedy accuracy and the unbiased pass@k estimator."""
from __future__ import annotations

import math
from collections import defaultdict
from math import comb
from pathlib import Path

from pipeline.config import Config
from pipeline.data import load_prompts
from pipeline.hub import resolve_model
from pipeline.records import Completion, Group, Prompt, SamplingSpec
from pipeline.step_batch import RolloutActors, reward_inputs


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of n samples, c of them correct, include a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(actors: RolloutActors, test: dict[str, list[Prompt]], cfg: Config, seed: int) -> dict[str, dict[str, float]]:
    """{source: {"greedy_acc", "reward" (greedy), "pass@k"...}} over up to eval.prompts_per_source prompts each."""
    groups = [Group(i, p) for i, p in enumerate(p for rows in test.values() for p in rows[: cfg.eval.prompts_per_source])]
    specs = [g.spec() for g in groups]
    base = dict(max_new_tokens=cfg.rollout.max_new_tokens, stop=tuple(cfg.rollout.stop), seed=seed)
    greedy = actors.generate(specs, SamplingSpec(n=1, temperature=0.0, **base))
    sampled = actors.generate(specs, SamplingSpec(n=cfg.eval.n_samples, temperature=cfg.eval.temperature,
                                                  top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, **base))
    greedy_rewards = _rewards(actors, greedy, groups, cfg.reward.failure_score)
    correct_greedy = [r >= cfg.reward.correct_threshold for r in greedy_rewards]
    correct_sampled = [r >= cfg.reward.correct_threshold for r in _rewards(actors, sampled, groups, cfg.reward.failure_score)]
    per_prompt = defaultdict(int)
    for completion, ok in zip(sampled, correct_sampled):
        per_prompt[completion.group_id] += ok
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for completion, ok, reward in zip(greedy, correct_greedy, greedy_rewards):
        source = groups[completion.group_id].prompt.source
        table[source]["greedy_acc"].append(float(ok))
        table[source]["reward"].append(reward)
        for k in cfg.eval.k:
            table[source][f"pass@{k}"].append(pass_at_k(cfg.eval.n_samples, per_prompt[completion.group_id], k))
    return {s: {m: sum(v) / len(v) for m, v in metrics.items()} for s, metrics in table.items()}


def evaluate_saved(cfg: Config, base_path: str, adapter_dir: Path | None) -> dict[str, dict[str, float]]:
    """Evaluate a saved adapter (or a bare model) on the config's test split, through the rollout workers;
    `base_path` is a local directory or a Hub id (at model.revision)."""
    from peft.utils import load_peft_weights

    from actors.group import ActorGroup, init_ray
    from actors.policy_model import load_tokenizer
    from actors.rollout import engine_context

    model_path = resolve_model(base_path, cfg.model.revision)
    _, test = load_prompts(cfg, load_tokenizer(model_path), engine_context(cfg.rollout, model_path))  # before Ray, like a run
    cfg.rollout.weight_sync = "adapter"  # a saved adapter is served as one, whatever the run synced
    init_ray(cfg)
    actors = ActorGroup(cfg, base_path, with_learner=False)
    try:
        if adapter_dir is not None:
            weights = {k: v.cpu().numpy() for k, v in load_peft_weights(str(adapter_dir)).items()}
            probe = next(iter(test.values()))[0].ids
            actors.load_weights(weights, 0, (probe, probe[:1]))
        return evaluate(actors, test, cfg, seed=cfg.run.seed)
    finally:
        actors.shutdown()


def _rewards(actors: RolloutActors, completions: list[Completion], groups: list[Group], failure_score: float) -> list[float]:
    """Each completion's total reward; one a hung reward worker left unscored counts as a failure."""
    rows = [groups[c.group_id].prompt.columns for c in completions]
    totals = actors.score([c.text for c in completions], reward_inputs(rows, completions)).total
    return [t if math.isfinite(t) else failure_score for t in totals]
