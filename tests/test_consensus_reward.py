"""Consensus rewards over a batch, with a scripted language model standing in for the scoring call."""
import pytest

from pipeline.config import ConsensusConfig
from pipeline.consensus_reward import consensus_rewards, final_answer
from pipeline.records import Completion


def _completion(group, text):
    return Completion(group, [1], [2], text, [-1.0], "stop", 0)


def scripted_lm(prompts, continuations):
    """Generator likes '7'; the discriminator believes '12' is right and '7' is wrong."""
    out = []
    for prompt, cont in zip(prompts, continuations):
        if cont in (" right", " wrong"):
            believes = "12" in prompt
            out.append(-0.1 if (cont == " right") == believes else -3.0)
        else:
            out.append(-1.0 if cont.strip() == "7" else -2.0)
    return out


def test_er_d_rewards_follow_the_equilibrium_and_metrics_compare_rankings():
    completions = [_completion(0, t) for t in ("7", "12", "7", "12 ")] + [_completion(1, "5")]
    columns = [{"prompt": "5+7=", "question": "5+7="}] * 4 + [{"prompt": "2+3=", "question": "2+3="}]
    correct = [False, True, False, True, True]
    rewards, metrics = consensus_rewards(ConsensusConfig(weight=1.0, iterations=2000), scripted_lm, completions, columns, correct)
    assert rewards[1] == rewards[3] > 0.5 > rewards[0] == rewards[2]  # '12' and '12 ' are one answer
    import math

    # a single candidate keeps its initial discriminator probability, here P(right) = e^-3 / (e^-3 + e^-0.1)
    assert rewards[4] == pytest.approx(math.exp(-3) / (math.exp(-3) + math.exp(-0.1)))
    assert metrics["consensus/candidates_per_group"] == 1.5
    assert metrics["consensus/pick_correct_g"] == 0.5  # G alone picks '7' in group 0
    assert metrics["consensus/pick_correct_d"] == metrics["consensus/pick_correct_er_d"] == 1.0


def test_rank_rewards_and_answer_extraction():
    completions = [_completion(0, t) for t in ("7", "12")]
    rewards, _ = consensus_rewards(ConsensusConfig(weight=1.0, reward="rank", iterations=200), scripted_lm, completions,
                                   [{"prompt": "q"}] * 2, [False, True])
    assert rewards == [0.0, 1.0]
    assert final_answer("so the answer is \\boxed{42}.", r"\\boxed\{(.*?)\}") == "42"
    assert final_answer("nothing here", r"\\boxed\{(.*?)\}") == ""
