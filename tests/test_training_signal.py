"""Train on exactly what the policy sampled (issue 12): the driver's wiring from samples to the update.

Each test pins one way the training signal was silently wrong; the numbers in the comments are what
the previous code produced.
"""
import math

import pytest
import torch

from pipeline.advantages import compute_advantages, curriculum_feed, learnable_indices
from pipeline.batch_checks import BatchInvariantError, SpecialTokens, check_completions
from pipeline.config import ConfigError, load_config
from pipeline.records import Completion, Prompt, SamplingSpec, TrainBatch
from pipeline.step_batch import StepBatch, collect, train_batch

from rewards.scoring import Scorer, Scores


class ScriptedWorkers:
    """Rollout + reward stand-in: group g answers correctly on sample i when (g + i) % period == 0."""

    def __init__(self, period: int, components=(("exact_match", 1.0, {}),), unscored_groups=()):
        self.period, self.unscored_groups = period, set(unscored_groups)
        self.scorer = Scorer(list(components), timeout_s=5, failure_score=0.0)

    def generate(self, prompts, sampling: SamplingSpec):
        return [Completion(p.group_id, p.prompt_ids, [5] * (i + 1) + [1], "ok" if (p.group_id + i) % self.period == 0 else "no",
                           [-0.1 * (i + 1)] * (i + 2), "stop", 0) for p in prompts for i in range(sampling.n)]

    def score(self, texts, columns):
        scores = self.scorer.score(texts, columns)
        if self.unscored_groups:  # a hung reward worker leaves its samples unscored (NaN)
            scores.total = [math.nan if g in self.unscored_groups else t for t, g in zip(scores.total, columns["group"])]
        return scores

    def score_texts(self, prompts, continuations):
        """The generator prefers short texts; the discriminator believes 'no' is right."""
        return [(-0.1 if ("no is" in p) == (c == " right") else -3.0) if c in (" right", " wrong") else -float(len(c))
                for p, c in zip(prompts, continuations)]


def _prompts(answer="ok"):
    def sample(n):
        return [Prompt("src" if i % 2 else "other", [7, 8], {"answer": answer, "prompt": "q", "prompts": "q", "question": "q",
                                                             "group": None}) for i in range(n)]
    return sample


def _batch(rewards, correct=None, logprobs=None, group=0):
    batch = StepBatch()
    n = len(rewards)
    completions = [Completion(group, [1], [2, 1], "x", [lp, lp] if logprobs else [-0.5, -0.5], "stop", 0)
                   for lp in (logprobs or [None] * n)]
    batch.extend(completions, ["s"] * n, [{}] * n, Scores(total=list(rewards), components={"exact_match": list(rewards)}),
                 list(correct if correct is not None else [r > 0 for r in rewards]))
    return batch


# --- 3: the curriculum learns from the true |A| of what was generated -----------------------------


def test_mixed_groups_cut_by_dynamic_sampling_feed_their_true_advantages_to_the_curriculum():
    cfg = load_config(None, ["algorithm.name=dapo", "trainer.prompts_per_step=4", "rollout.n=2",
                             "algorithm.gen_prompts_per_round=6"])
    batch = collect(cfg, _prompts(), ScriptedWorkers(period=4), SamplingSpec(n=2, temperature=1.0))
    # period 4, n=2: groups 0, 3, 4 | 7, 8, 11 are mixed; the first four are trained, 8 and 11 are cut
    assert batch.kept_groups() == [0, 3, 4, 7]
    learnable = learnable_indices(batch)
    advantages, _ = compute_advantages(cfg, batch, learnable)
    sources, values = curriculum_feed(batch, dict(zip(learnable, advantages)))
    cut = [v for v, c in zip(values, batch.completions) if c.group_id in (8, 11)]
    assert cut == pytest.approx([0.7071063, -0.7071063, -0.7071063, 0.7071063], abs=1e-6)  # was [0, 0, 0, 0]
    uniform = [v for v, c in zip(values, batch.completions) if c.group_id in (1, 2, 5, 6, 9, 10)]
    assert uniform == [0.0] * 12  # no signal: a true |A| of 0
    assert len(sources) == len(batch.completions) == 24


# --- 4 and 5: shaping that must not rescale penalties or amplify KL noise ---------------------------


def test_unlikeliness_leaves_wrong_answers_and_penalties_alone():
    cfg = load_config(None, ["reward.unlikeliness.beta_rank=0.5", "algorithm.adv_estimator=dr_grpo",
                             "rollout.max_new_tokens=2", "algorithm.overlong_buffer_len=1"])
    # +-1 rewards; the most likely sample (index 1) is wrong, and every sample is overlong-penalised (-1)
    batch = _batch([1.0, -1.0, -1.0, 1.0], correct=[True, False, False, True], logprobs=[-0.3, -0.1, -0.9, -0.5])
    advantages, _ = compute_advantages(cfg, batch, learnable_indices(batch))
    # ranks [2, 3, 0, 1] of 4: only the correct samples' +1 shrinks (to 0.75 and 0.875); penalties stay -1
    shaped = [0.75 - 1, -1 - 1, -1 - 1, 0.875 - 1]
    mean = sum(shaped) / 4
    assert advantages == pytest.approx([r - mean for r in shaped])  # the wrong answers were -0.625 and -1.0 before


def test_unlikeliness_scales_the_verifier_term_not_format_bonuses_or_consensus():
    cfg = load_config(None, ["reward.unlikeliness.beta_rank=0.5", "algorithm.adv_estimator=dr_grpo",
                             "reward.components=[{name: exact_match}, {name: tag_format, weight: 0.2}]"])
    batch = _batch([1.2, 1.0], correct=[True, True], logprobs=[-0.1, -0.5])  # the likely one also has the format bonus
    batch.scores.components = {"exact_match": [1.0, 1.0], "tag_format": [1.0, 0.0]}
    advantages, _ = compute_advantages(cfg, batch, learnable_indices(batch))
    assert advantages == pytest.approx([-0.025, 0.025])  # 1.2 - 0.25 vs 1.0; scaling the whole 1.2 gave -+0.05


def test_kl_in_the_reward_is_not_divided_by_the_task_reward_std():
    cfg = load_config(None, ["algorithm.kl_in=reward", "algorithm.kl_coef=0.1"])
    batch = _batch([1.0, 1.0, 1.0, 1.0])  # all correct: no task signal
    kl = [0.01, 0.02, 0.03, 0.04]
    advantages, _ = compute_advantages(cfg, batch, learnable_indices(batch), kl)
    assert advantages == pytest.approx([0.0015, 0.0005, -0.0005, -0.0015])  # was [1.16, 0.39, -0.39, -1.16]


# --- 6: label-free consensus never reads the answer column -----------------------------------------


@pytest.mark.parametrize("preset", ["grpo", "dapo"])
def test_label_free_training_does_not_depend_on_the_answers(preset):
    cfg = load_config(None, [f"algorithm.name={preset}", "trainer.prompts_per_step=4", "rollout.n=3", "reward.consensus.weight=1",
                             "reward.consensus.use=label_free", "reward.consensus.iterations=50",
                             "algorithm.gen_prompts_per_round=4", "algorithm.max_gen_rounds=3"])
    runs = []
    for answer in ("ok", "no"):  # the labels flip which samples the verifier calls correct
        batch = collect(cfg, _prompts(answer), ScriptedWorkers(period=2), SamplingSpec(n=3, temperature=1.0))
        advantages, _ = compute_advantages(cfg, batch, learnable_indices(batch))
        runs.append((batch.trained, batch.scores.total, advantages))
    assert runs[0] == runs[1]


def test_label_free_with_validation_rewards_in_the_curriculum_is_refused():
    with pytest.raises(ConfigError, match="update_on_validation"):
        load_config(None, ["reward.consensus.weight=1", "reward.consensus.use=label_free", "curriculum.name=ucb",
                           "curriculum.update_on_validation=true"])


def test_a_reward_function_returning_nan_is_a_scored_error_not_an_unscored_group():
    scores = Scorer([("tests.reward_plugins:nan_on_empty", 1.0, {})], 5, 0.0).score(["", "a"], {})
    assert scores.total == [0.0, 1.0] and scores.errors == 1 and "non-finite" in scores.first_errors["tests.reward_plugins:nan_on_empty"]


def test_label_free_with_the_unlikeliness_reward_is_refused():
    with pytest.raises(ConfigError, match="needs labels"):
        load_config(None, ["reward.consensus.weight=1", "reward.consensus.use=label_free", "reward.unlikeliness.beta_rank=0.25"])


# --- 10: overlong filtering and the seq-mean denominators ------------------------------------------


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_sequences_masked_by_overlong_filtering_leave_the_denominator(tiny_model_path, mode):
    from actors.learner import Learner

    cfg = load_config(None, [f"algorithm.loss_agg_mode={mode}"])

    def loss(batch):
        learner = Learner(tiny_model_path, "float32", cfg.lora, cfg.algorithm, cfg.trainer,
                          temperature=1.0, max_new_tokens=8, seed=0)
        return learner.update(batch)["loss"]

    prompts, completions = [[20, 30, 17], [21, 30], [9, 8, 7]], [[14, 15, 1], [16, 1], [17, 18, 19, 20, 21, 22, 23, 24]]
    masked = TrainBatch(prompts, completions, [1.0, -0.5, 2.0], [0, 0, 0], loss_mask=[True, True, False])
    without = TrainBatch(prompts[:2], completions[:2], [1.0, -0.5], [0, 0])
    assert loss(masked) == pytest.approx(loss(without), rel=1e-6)  # was 2/3 of it


def test_a_completion_cut_by_the_context_is_truncated_for_overlong_filtering():
    cfg = load_config(None, ["algorithm.overlong_filtering=true", "rollout.max_new_tokens=8"])
    cut = Completion(0, [1], [5, 5, 5], "abc", [-1.0] * 3, "length", 0)  # the context ended before max_new_tokens
    done = Completion(0, [1], [5, 1], "a", [-1.0] * 2, "stop", 0)
    assert train_batch(cfg, [(cut, 1.0), (done, -1.0)]).loss_mask == [False, True]


# --- E: a hung reward worker's groups are dropped, never scored with made-up zeros ------------------


def test_groups_a_reward_worker_could_not_score_are_dropped_and_counted():
    cfg = load_config(None, ["trainer.prompts_per_step=4", "rollout.n=2"])
    workers = ScriptedWorkers(period=2, unscored_groups={1, 2})

    def prompts(n):
        return [Prompt("src", [7, 8], {"answer": "ok", "group": g}) for g in range(n)]

    batch = collect(cfg, prompts, workers, SamplingSpec(n=2, temperature=1.0))
    assert batch.kept_groups() == [0, 3] and batch.unscored_groups == 2
    learnable = learnable_indices(batch)
    advantages, _ = compute_advantages(cfg, batch, learnable)
    sources, _ = curriculum_feed(batch, dict(zip(learnable, advantages)))
    assert len(sources) == 4  # the unscored groups teach the curriculum nothing either


# --- TRL-style reward functions, and the first error of each failing component ---------------------


def test_a_reward_function_with_trls_signature_works_unchanged():
    cfg = load_config(None, ["trainer.prompts_per_step=2", "rollout.n=2",
                             "reward.components=[{name: 'tests.reward_plugins:trl_style'}]"])
    workers = ScriptedWorkers(period=1, components=[("tests.reward_plugins:trl_style", 1.0, {})])
    workers.generate = lambda prompts, sampling: [Completion(p.group_id, p.prompt_ids, [5, 6, 1], "ok", [-1.0] * 3, "stop", 0)
                                                 for p in prompts for _ in range(sampling.n)]
    batch = collect(cfg, _prompts(), workers, SamplingSpec(n=2, temperature=1.0))
    assert batch.scores.errors == 0 and batch.scores.total == [1.0] * 4  # every sample failed (scored 0) before


def test_the_first_error_of_each_failing_component_is_kept():
    scorer = Scorer([("exact_match", 1.0, {}), ("tests.reward_plugins:fails_on_odd_length", 1.0, {})], 5, 0.0)
    scores = scorer.score(["a", "abc", "ab"], {"answer": ["a", "b", "c"]})
    assert scores.first_errors == {"tests.reward_plugins:fails_on_odd_length": "RuntimeError: odd length"}


# --- the per-batch invariant check -------------------------------------------------------------------

SPECIAL = SpecialTokens(pad=0, eos=frozenset({1, 2}))
ROLLOUT = load_config(None, ["rollout.max_new_tokens=4", "rollout.max_model_len=16"]).rollout


@pytest.mark.parametrize("completion, problem", [
    (Completion(0, [9], [5, 1], "a", [-1.0], "stop", 0), "2 tokens but 1 log-probs"),
    (Completion(0, [9], [5, 6, 0], "ab", [-1.0] * 3, "stop", 0), "padding"),
    (Completion(0, [9], [5, 2, 1], "a", [-1.0] * 3, "stop", 0), "end-of-sequence token before the last"),
    (Completion(0, [9], [5, 6], "ab", [-1.0] * 2, "length", 0), "finish reason 'length'"),
    (Completion(0, [9], [5, 6], "ab", [-1.0] * 2, "stop", 0), "finish reason 'stop'"),
    (Completion(0, [9], [5, 1], "a", [-1.0, float("nan")], "stop", 0), "not finite"),
])
def test_a_broken_completion_stops_the_run_naming_the_sample(completion, problem):
    good = Completion(0, [9], [5, 6, 7, 8], "abcd", [-1.0] * 4, "length", 0)
    check_completions([good], ROLLOUT, SPECIAL)
    with pytest.raises(BatchInvariantError, match=f"sample 1 .*{problem}"):
        check_completions([good, completion], ROLLOUT, SPECIAL)


def test_async_with_sleeping_rollout_engines_is_refused():
    with pytest.raises(ConfigError, match="sleep_while_training=false"):
        load_config(None, ["rollout.async=true", "rollout.sleep_while_training=true"])


# --- 7: plain-text prompts keep the tokenizer's BOS --------------------------------------------------

from tests.real_models import real_model  # noqa: E402,F401  (the session fixture)


def test_prompts_without_a_chat_template_start_with_the_tokenizers_bos(real_model):  # noqa: F811
    from pipeline.data import load_prompts
    from transformers import AutoTokenizer

    path = real_model("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, _ = load_prompts(load_config(None, [f"model.path={path}"]), tokenizer)
    ids, columns = train["add_1d"][0].ids, train["add_1d"][0].columns
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # BOS was dropped before
    assert ids == tokenizer(columns["prompt"])["input_ids"]


def test_a_chat_template_writes_its_own_special_tokens(real_model):  # noqa: F811
    from pipeline.data import load_prompts
    from transformers import AutoTokenizer

    path = real_model("qwen")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, _ = load_prompts(load_config(None, [f"model.path={path}"]), tokenizer)
    ids, columns = train["add_1d"][0].ids, train["add_1d"][0].columns
    assert columns["prompt"].startswith("<|im_start|>user\n")
    assert ids == tokenizer.apply_chat_template([{"role": "user", "content": columns["prompts"]}], add_generation_prompt=True,
                                                return_dict=True)["input_ids"]


# --- 8: LoRA dropout only where gradients flow -------------------------------------------------------


def test_every_no_grad_pass_of_the_learner_is_deterministic_with_lora_dropout(tiny_model_path):
    from actors.learner import Learner

    cfg = load_config(None, ["lora.dropout=0.5", "trainer.lr=0.01"])
    learner = Learner(tiny_model_path, "float32", cfg.lora, cfg.algorithm, cfg.trainer,
                      temperature=1.0, max_new_tokens=8, seed=0)
    prompts, completions = [[20, 30, 17, 34], [21, 30, 17]], [[14, 15, 1], [16, 1]]
    for _ in range(2):  # before and after an update, which trains with dropout on
        first = learner.sequence_logprobs(prompts, completions, 1.0)
        assert learner.sequence_logprobs(prompts, completions, 1.0) == first  # differed by 0.41 nats before
        assert learner.reference_kl(prompts, completions) == learner.reference_kl(prompts, completions)
        metrics = learner.update(TrainBatch(prompts, completions, [1.0, -1.0], [0, 0]))
    assert metrics["clipfrac"] >= 0.0 and not learner.model.training
