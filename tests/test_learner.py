"""The learner driven in-process (no Ray): loss invariances that must hold exactly."""
import pytest
import torch

from actors.learner import Learner
from pipeline.config import load_config
from pipeline.records import TrainBatch


def _learner(path, **trainer):
    cfg = load_config(None, [f"trainer.{k}={v}" for k, v in trainer.items()] + ["trainer.lr=0.01"])
    return Learner(path, "float32", cfg.lora, cfg.algorithm, cfg.trainer,
                   temperature=1.0, max_new_tokens=8, seed=0)


def _batch():
    prompts = [[20, 30, 17, 34, 39], [21, 30, 17], [9, 8, 7, 6, 5, 4]] * 4
    completions = [[14, 15, 1], [16, 1], [17, 18, 19, 20, 1]] * 4
    return TrainBatch(prompts, completions, [1.0, -0.5, 0.3, -1.0, 0.8, 0.0] * 2, [i // 4 for i in range(12)])


def _lora_params(learner):
    return [p.detach().clone() for n, p in learner.model.named_parameters() if "lora_" in n]


def _first_moments(learner):
    return [learner.optimizer.state[p]["exp_avg"] for p in learner.model.parameters() if p.requires_grad]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_matches_one_big_micro_batch(tiny_model_path, mode):
    whole = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    split = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5)
    for learner in (whole, split):
        learner.algo.loss_agg_mode = mode
        learner.update(_batch())
    # Adam's first moment after one step is (1 - beta1) * gradient: compare the gradients themselves
    for a, b in zip(_first_moments(whole), _first_moments(split)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)


def test_first_pass_is_on_policy_and_the_adapter_moves(tiny_model_path):
    learner = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    before = _lora_params(learner)
    metrics = learner.update(_batch())
    assert metrics["clipfrac"] == 0.0  # ratio is exactly 1 on the first (only) mini-batch
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_params(learner)))


def test_off_policy_samples_are_clipped_against_the_policy_that_generated_them(tiny_model_path):
    learner = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    batch = _batch()
    exact = learner.sequence_logprobs(batch.prompt_ids, batch.completion_ids)
    batch.behaviour_logprobs = [[v - 0.5 for v in row] for row in exact]  # the generating policy liked these tokens less
    batch.old_from_behaviour = True
    metrics = learner.update(batch)
    # ratio = e^0.5 = 1.65 > 1 + 0.2 everywhere: exactly the tokens with A > 0 are clipped
    positive = sum(len(c) for c, a in zip(batch.completion_ids, batch.advantages) if a > 0)
    assert metrics["clipfrac"] == pytest.approx(positive / sum(map(len, batch.completion_ids)))
    assert metrics["logprob_gap_mean"] == pytest.approx(0.5, abs=1e-5)  # the gap is still measured against the learner


def test_overlong_filtering_masks_the_loss_of_truncated_samples(tiny_model_path):
    masked = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    batch = _batch()
    batch.loss_mask = [False] * 12
    before = _lora_params(masked)
    masked.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, _lora_params(masked)))


def test_truncated_importance_sampling_reweights_tokens_by_the_rollout_gap(tiny_model_path):
    plain = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    capped = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    capped.algo.tis_cap = 2.0
    batch = _batch()
    exact = plain.sequence_logprobs(batch.prompt_ids, batch.completion_ids)
    batch.behaviour_logprobs = exact  # rollout = learner: every weight is 1, the update is unchanged
    for learner in (plain, capped):
        learner.update(batch)
    for a, b in zip(_first_moments(plain), _first_moments(capped)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    weights = capped._tis_weights(torch.zeros(1, 3), capped._as_tensor([[-2.0, 1.0]], mask, like=torch.zeros(1, 3)), mask)
    assert weights.tolist() == [[2.0, pytest.approx(0.3679, abs=1e-4), 1.0]]  # min(e^2, 2), e^-1, padding


def test_a_gradient_norm_over_the_threshold_skips_the_step(tiny_model_path):
    learner = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12, grad_skip_thresh=1e-9)
    before = _lora_params(learner)
    metrics = learner.update(_batch())
    assert metrics["skipped_steps"] == 1.0 and metrics["all_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _lora_params(learner)))


def test_a_non_finite_loss_skips_the_step(tiny_model_path):
    learner = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    batch = _batch()
    batch.advantages = [float("nan")] + [1.0] * 11  # one poisoned sample poisons the mini-batch's loss
    before = _lora_params(learner)
    metrics = learner.update(batch)
    assert metrics["skipped_steps"] == 1.0 and metrics["all_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _lora_params(learner)))


def test_eva_initialisation_redistributes_ranks_and_the_adapter_reloads(tiny_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, ["lora.init=eva", "lora.rank=4", "lora.alpha=8", "lora.eva_max_steps=5"])
    learner = Learner(tiny_model_path, "float32", cfg.lora, cfg.algorithm, cfg.trainer,
                      temperature=1.0, max_new_tokens=8, seed=0)
    batch = _batch()
    layout = learner.init_eva([p + c for p, c in zip(batch.prompt_ids, batch.completion_ids)] * 3)
    ranks = {name: r for name, r in layout["rank_pattern"].items()}
    assert ranks and max(ranks.values()) <= 8  # rho = 2: a layer gets at most 2 * rank
    assert all(p.device.type != "meta" for p in learner.model.parameters())
    learner.update(batch)  # the optimizer covers EVA's parameters
    learner.save_adapter(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(tmp_path / "adapter"))
    ids = torch.tensor([batch.prompt_ids[0] + batch.completion_ids[0]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, learner.model(input_ids=ids).logits, atol=1e-5)
