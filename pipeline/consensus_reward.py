"""Consensus-game rewards for a batch: LM scores of each group's answers, then equilibrium ranking.

For every group the distinct final answers are the candidates. The generator score of a sample is
log P(completion | generator prompt for v), merged per answer by log-sum-exp (spec §4.6); the
discriminator score is log P(correct word | answer) vs log P(incorrect word | answer). All LM
queries of a batch go out in one scoring call.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import ConsensusConfig
from pipeline.records import Completion
from rewards.consensus import dedupe_candidates, equilibrium_ranking

ScoreTexts = Callable[[list[str], list[str]], list[float]]
PICKS = ("majority", "g", "d", "er_g", "er_d")


def final_answer(text: str, pattern: str | None) -> str:
    if pattern:
        found = re.findall(pattern, text, flags=re.DOTALL)
        return str(found[-1]).strip() if found else ""
    return text.strip()


def consensus_rewards(cfg: ConsensusConfig, score_texts: ScoreTexts, completions: list[Completion],
                      columns: list[dict[str, Any]], correct: list[bool]) -> tuple[list[float], dict[str, float]]:
    """Per-sample consensus reward and metrics (candidates per group; how often each ranking picks a correct answer)."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(completions):
        groups.setdefault(c.group_id, []).append(i)
    answers = [final_answer(c.text, cfg.answer_regex) for c in completions]
    queries = _queries(cfg, groups, completions, columns, answers)
    logps = dict(zip(queries, score_texts([q[0] for q in queries], [q[1] for q in queries])))

    rewards = [0.0] * len(completions)
    hits: dict[str, list[float]] = {name: [] for name in PICKS}
    sizes = []
    for members in groups.values():
        prompts = _prompts(cfg, columns[members[0]])
        gen = np.array([[logps[(prompts[v], completions[i].text)] for i in members] for v in ("g_correct", "g_incorrect")])
        distinct, merged, index = dedupe_candidates([answers[i] for i in members], gen, [completions[i].text for i in members])
        disc = np.array([[logps[(cfg.discriminator.format(**prompts["fields"], answer=y), w)]
                          for w in (cfg.correct_word, cfg.incorrect_word)] for y in distinct])
        eq = equilibrium_ranking(merged, disc, cfg.lambda_g, cfg.lambda_d, cfg.eta_g, cfg.eta_d, cfg.iterations)
        p_correct = eq.pi_d[:, 0]
        order = np.argsort(-p_correct, kind="stable")
        rank = np.empty(len(distinct))
        rank[order] = np.arange(len(distinct))
        for i, y in zip(members, index):
            rewards[i] = float(p_correct[y]) if cfg.reward == "er_d" else float(1 - rank[y] / max(1, len(distinct) - 1))
        sizes.append(len(distinct))
        votes = Counter(index)
        picks = {"majority": max(votes, key=lambda y: (votes[y], -y)), "g": int(np.argmax(merged[0])),
                 "d": int(np.argmax(disc[:, 0] - np.logaddexp(disc[:, 0], disc[:, 1]))), "er_g": eq.er_g, "er_d": eq.er_d}
        for name, y in picks.items():
            hits[name].append(float(any(correct[i] for i, yi in zip(members, index) if yi == y)))
    metrics = {"consensus/candidates_per_group": float(np.mean(sizes)), "consensus/reward_mean": float(np.mean(rewards))}
    metrics.update({f"consensus/pick_correct_{name}": float(np.mean(v)) for name, v in hits.items()})
    return rewards, metrics


def _prompts(cfg: ConsensusConfig, row: dict[str, Any]) -> dict[str, Any]:
    fields = {"prompt": row.get("prompt", ""), "question": row.get("question", row.get("prompt", ""))}
    return {"g_correct": cfg.generator_correct.format(**fields), "g_incorrect": cfg.generator_incorrect.format(**fields),
            "fields": fields}


def _queries(cfg, groups, completions, columns, answers) -> list[tuple[str, str]]:
    queries: dict[tuple[str, str], None] = {}
    for members in groups.values():
        prompts = _prompts(cfg, columns[members[0]])
        for i in members:
            queries[(prompts["g_correct"], completions[i].text)] = None
            queries[(prompts["g_incorrect"], completions[i].text)] = None
            for word in (cfg.correct_word, cfg.incorrect_word):
                queries[(cfg.discriminator.format(**prompts["fields"], answer=answers[i]), word)] = None
    return list(queries)
