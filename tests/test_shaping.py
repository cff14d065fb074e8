"""DAPO's overlong shaping (E5), group filtering and dynamic sampling, and the advantage pipeline."""
import pytest

from pipeline.advantages import compute_advantages, learnable_indices
from pipeline.config import load_config
from pipeline.records import Completion, Prompt, SamplingSpec
from pipeline.step_batch import DynamicSamplingError, StepBatch, collect, mixed_groups
from rewards.overlong import soft_overlong_penalty
from rewards.scoring import Scorer


@pytest.mark.parametrize("length, penalty", [(16000, 0), (16384, 0), (16385, -0.000244140625), (18432, -0.5), (20480, -1.0), (20481, -1.0)])
def test_e5_soft_overlong_penalty(length, penalty):
    assert soft_overlong_penalty(length, 20480, 4096) == pytest.approx(penalty)


def test_mixed_groups_keeps_only_groups_with_a_signal():
    assert mixed_groups([1, 0, 1, 1, 0, 0], [5, 5, 6, 6, 7, 7]) == {5}


class ScriptedWorkers:
    """Rollout + reward stand-in: group g answers correctly on sample i when (g + i) % period == 0."""

    def __init__(self, period: int):
        self.period, self.calls = period, 0
        self.scorer = Scorer([("exact_match", 1.0, {})], timeout_s=5, failure_score=0.0)

    def generate(self, prompts, sampling: SamplingSpec):
        self.calls += 1
        return [Completion(p.group_id, p.prompt_ids, [1] * (i + 1), "ok" if (p.group_id + i) % self.period == 0 else "no",
                           [-0.1 * (i + 1)] * (i + 1), "stop", 0) for p in prompts for i in range(sampling.n)]

    def score(self, texts, columns):
        return self.scorer.score(texts, columns)


def _prompts(n):
    return [Prompt("src", [7, 8], {"answer": "ok"}) for _ in range(n)]


def test_dynamic_sampling_fills_the_batch_with_mixed_groups():
    cfg = load_config(None, ["algorithm.name=dapo", "trainer.prompts_per_step=4", "rollout.n=2", "algorithm.gen_prompts_per_round=3"])
    workers = ScriptedWorkers(period=4)  # with n=2, only groups g % 4 in {0, 3} are mixed
    batch = collect(cfg, _prompts, workers, SamplingSpec(n=2, temperature=1.0))
    assert len(batch.kept_groups()) == 4 and sum(batch.trained) == 8
    assert batch.gen_rounds == workers.calls and batch.gen_rounds >= 2
    assert len(batch.completions) == 2 * 3 * batch.gen_rounds  # metrics see everything generated
    for gid in batch.kept_groups():
        assert gid % 4 in (0, 3)


def test_dynamic_sampling_gives_up_after_max_rounds():
    cfg = load_config(None, ["algorithm.name=dapo", "trainer.prompts_per_step=4", "rollout.n=2", "algorithm.max_gen_rounds=3"])
    with pytest.raises(DynamicSamplingError, match="after 3 generation rounds"):
        collect(cfg, _prompts, ScriptedWorkers(period=1), SamplingSpec(n=2, temperature=1.0))


def test_without_filtering_everything_is_trained_in_one_round():
    cfg = load_config(None, ["trainer.prompts_per_step=4", "rollout.n=2"])
    batch = collect(cfg, _prompts, ScriptedWorkers(period=1), SamplingSpec(n=2, temperature=1.0))
    assert batch.gen_rounds == 1 and all(batch.trained)


def test_unlikeliness_filters_uniform_groups_and_ranks_within_groups():
    cfg = load_config(None, ["trainer.prompts_per_step=4", "rollout.n=4", "reward.unlikeliness.beta_rank=0.25"])
    batch = collect(cfg, _prompts, ScriptedWorkers(period=2), SamplingSpec(n=4, temperature=1.0))
    assert all(batch.trained)  # period 2: every group has 2 of 4 correct
    advantages, metrics = compute_advantages(cfg, batch, learnable_indices(batch))
    # sample i has mean log-prob -0.1 (i + 1): sample 0 is the most likely (rank 3 of 4)
    first_group = advantages[:4]
    correct = [i for i in range(4) if batch.completions[i].text == "ok"]
    assert correct == [0, 2] and first_group[2] > first_group[0] > 0
    # even groups: samples 0, 2 correct (ranks 3, 1); odd groups: samples 1, 3 (ranks 2, 0)
    factors = [1 - 0.25 * rank / 4 for rank in (3, 1, 2, 0)]
    assert metrics["unlikeliness/mean_factor_correct"] == pytest.approx(sum(factors) / 4)
    assert metrics["unlikeliness/unique_correct_per_group"] == 1.0


def test_overlong_punishment_enters_the_reward_before_normalisation():
    cfg = load_config(None, ["algorithm.name=dr_grpo", "rollout.max_new_tokens=4", "algorithm.overlong_buffer_len=2"])
    batch = StepBatch()
    batch.extend([Completion(0, [1], [2] * n, "x", [0.0] * n, "stop", 0) for n in (1, 2, 3, 4)], ["s"] * 4, [{}] * 4,
                 Scorer([("exact_match", 1.0, {})], 5, 0.0).score(["x"] * 4, {"answer": ["x"] * 4}), [True] * 4)
    advantages, metrics = compute_advantages(cfg, batch, learnable_indices(batch))
    penalties = [0, 0, -0.5, -1.0]
    mean = 1 + sum(penalties) / 4
    assert advantages == pytest.approx([1 + p - mean for p in penalties])
    assert metrics["reward_component/overlong_penalty"] == pytest.approx(-0.375)
