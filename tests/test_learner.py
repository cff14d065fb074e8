"""The learner driven in-process (no Ray): loss invariances that must hold exactly."""
from types import SimpleNamespace

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
    assert _same_gradients(_first_moments(whole), _first_moments(split))


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
    assert _same_gradients(_first_moments(plain), _first_moments(capped))  # weights 1 up to float rounding
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


# --- issue 15: the learner's update, faster and linear in memory, computes what it did --------------------


def _mixed_batch():
    """12 samples of very different prompt and completion lengths (so micro-batches pad very differently)."""
    prompts = [[20 + i % 7] * (2 + (5 * i) % 9) for i in range(12)]
    completions = [[10 + (i * j) % 13 for j in range(1 + (7 * i) % 17)] + [1] for i in range(12)]
    return TrainBatch(prompts, completions, [1.0, -0.5, 0.3, -1.0, 0.8, 0.0, -0.2, 0.6, -0.9, 0.4, 0.1, -0.7],
                      [i // 4 for i in range(12)])


def _same_gradients(a, b, rel=1e-5):
    """Equal up to float32 summation order: the largest difference is tiny next to the largest entry (near-zero
    entries differ relatively more when padding widths, hence matmul shapes, differ)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) <= rel * max(float(x.abs().max()) for x in a)


def _naive_token_logprobs(model, ids, attention, temperature):
    """The previous implementation: full-vocabulary float32 log_softmax at every position."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    detached = logp_all.detach()
    return logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1), -(detached.exp() * detached).sum(-1)


@pytest.mark.parametrize("chunk,trained_head", [(None, False), (64, False), (64, True)],
                         ids=["one-chunk", "many-chunks", "trained-head"])
def test_chunked_response_only_logprobs_match_the_full_log_softmax(tiny_model_path, monkeypatch, chunk, trained_head):
    from actors import policy_model
    from actors.policy_model import pad_sequences, token_logprobs

    if chunk:
        monkeypatch.setattr(policy_model, "LOGIT_CHUNK_ELEMENTS", chunk)  # a couple of rows per chunk
    learner = _learner(tiny_model_path)
    with torch.no_grad():
        for name, param in learner.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)  # a non-trivial adapter
    if trained_head:  # a head with gradients (LoRA on lm_head, modules_to_save) takes the checkpointed chunks
        learner.model.get_base_model().get_output_embeddings().weight.requires_grad_(True)
    batch = _mixed_batch()
    ids, attention, response = pad_sequences(batch.prompt_ids, batch.completion_ids, 0, torch.device("cpu"))
    params = [p for p in learner.model.parameters() if p.requires_grad]
    weights = torch.randn(response.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for compute in (lambda: _naive_token_logprobs(learner.model, ids, attention, 0.7),
                    lambda: token_logprobs(learner.model, ids, attention, 0.7, with_entropy=True, positions=response)):
        logp, entropy = compute()
        grads = torch.autograd.grad((logp * weights * response).sum(), params)
        results.append((logp.detach() * response, entropy * response, grads))
    (logp_a, entropy_a, grads_a), (logp_b, entropy_b, grads_b) = results
    assert torch.allclose(logp_a, logp_b, atol=1e-5) and torch.allclose(entropy_a, entropy_b, atol=1e-5)
    assert all((a - b).abs().max() <= 1e-5 * a.abs().max() for a, b in zip(grads_a, grads_b))  # float32 summation order
    # a plain callable (merged_logprobs' functional_call) takes the logits path: the same values
    with torch.no_grad():
        via_logits, _ = token_logprobs(lambda **inputs: learner.model(**inputs), ids, attention, 0.7, positions=response)
    assert torch.allclose(via_logits, logp_b, atol=1e-5)
    assert torch.equal(logp_b[response == 0], torch.zeros_like(logp_b[response == 0]))  # prompt and padding never computed


def test_token_budget_packs_sorted_samples_each_padded_to_its_own_longest(tiny_model_path):
    learner = _learner(tiny_model_path, max_tokens_per_micro_batch=40)
    lengths = torch.tensor([5, 30, 12, 41, 12, 7, 20, 3])
    micros = learner._micro_batches(torch.arange(8), lengths)
    assert sorted(i for micro, _ in micros for i in micro.tolist()) == list(range(8))
    assert all(width == int(lengths[micro].max()) for micro, width in micros)
    assert all(len(micro) * width <= 40 or len(micro) == 1 for micro, width in micros)
    assert [micro.tolist() for micro, _ in micros][:2] == [[3], [1]]  # the longest first, over-budget rows alone


def _assert_same_updates(a, b, batch):
    """One update of each on `batch`: the same gradients and metrics, up to float summation order."""
    metrics = [learner.update(batch) for learner in (a, b)]
    assert _same_gradients(_first_moments(a), _first_moments(b))
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-7)


def test_micro_batch_size_still_caps_the_rows_of_a_token_budget_micro_batch(tiny_model_path):
    """A CPU config's budget must not silently void a user's micro_batch_size (or data-parallel tests' small one)."""
    learner = _learner(tiny_model_path, micro_batch_size=3, max_tokens_per_micro_batch=100)
    lengths = torch.tensor([5, 30, 12, 41, 12, 7, 20, 3, 4, 2])
    micros = learner._micro_batches(torch.arange(10), lengths)
    assert sorted(i for micro, _ in micros for i in micro.tolist()) == list(range(10))
    assert [lengths[micro].tolist() for micro, _ in micros] == [[41, 30], [20, 12, 12], [7, 5, 4], [3, 2]]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_a_token_budget_gives_the_same_gradients_as_sample_micro_batches(tiny_model_path, mode):
    whole = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    budget = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12, max_tokens_per_micro_batch=48)
    batch = _mixed_batch()
    lengths = torch.tensor([len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)])
    micros = budget._micro_batches(torch.arange(12), lengths)
    assert len(micros) >= 4 and len({width for _, width in micros}) >= 3  # really several differently padded micro-batches
    for learner in (whole, budget):
        learner.algo.loss_agg_mode = mode
    _assert_same_updates(whole, budget, batch)


def test_a_row_cap_inside_a_token_budget_gives_the_same_gradients_with_shared_prompts(tiny_model_path):
    whole = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    capped = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5, max_tokens_per_micro_batch=1000)
    batch = _batch()  # three prompts, four samples of each
    lengths = torch.tensor([len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)])
    micros = capped._micro_batches(torch.arange(12), lengths, capped._prompt_rows(batch.prompt_ids))
    assert [len(micro) for micro, _ in micros] == [5, 5, 2]  # the row cap binds, splitting a prompt's samples
    _assert_same_updates(whole, capped, batch)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_path):
    plain = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5)
    checkpointed = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5, gradient_checkpointing="true")
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model.modules())
    for learner in (plain, checkpointed):
        learner.update(_mixed_batch())
    assert _same_gradients(_first_moments(plain), _first_moments(checkpointed))


@pytest.mark.parametrize("rollout", ["on-policy", "tis", "old-from-behaviour"])
def test_reusing_the_gradient_pass_as_pi_old_gives_the_recomputed_update(tiny_model_path, monkeypatch, rollout):
    reused = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5)
    recomputed = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=5)
    assert reused._old_is_current(12) and not reused._old_is_current(13)
    monkeypatch.setattr(recomputed, "_old_is_current", lambda samples: False)
    monkeypatch.setattr(reused, "_logprobs_no_grad", None)  # the extra no-grad pass must not run at all
    batch = _mixed_batch()
    if rollout != "on-policy":
        exact = recomputed.sequence_logprobs(batch.prompt_ids, batch.completion_ids)
        batch.behaviour_logprobs = [[v + 0.3 * ((i + j) % 3 - 1) for j, v in enumerate(row)] for i, row in enumerate(exact)]
        batch.old_from_behaviour = rollout == "old-from-behaviour"
        for learner in (reused, recomputed):
            learner.algo.tis_cap = 1.2 if rollout == "tis" else None
    metrics = [learner.update(batch) for learner in (reused, recomputed)]
    assert _same_gradients(_first_moments(reused), _first_moments(recomputed))
    for key in sorted(set(metrics[1]) - {"lr"}):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-4, abs=1e-6), key
    if rollout == "on-policy":
        assert metrics[0]["clipfrac"] == 0.0
    else:
        assert metrics[0]["logprob_gap_mean"] > 0.1  # the gap is measured against the learner's pass


def test_several_epochs_or_live_dropout_still_recompute_pi_old(tiny_model_path):
    learner = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=12)
    learner.algo.ppo_epochs = 2
    assert not learner._old_is_current(12)  # the second epoch's pi_old is not its own policy
    cfg = load_config(None, ["trainer.minibatch_size=12", "trainer.micro_batch_size=12", "lora.dropout=0.1"])
    dropout = Learner(tiny_model_path, "float32", cfg.lora, cfg.algorithm, cfg.trainer, temperature=1.0, max_new_tokens=8, seed=0)
    assert not dropout._old_is_current(12)  # the gradient pass is not the eval-mode policy


@pytest.mark.gpu
def test_a_bfloat16_learner_on_cuda_trains_under_autocast_with_every_option(tiny_model_path):
    from actors.policy_model import pad_sequences, token_logprobs

    cfg = load_config(None, ["trainer.gpus_per_learner=1", "trainer.minibatch_size=12", "trainer.micro_batch_size=4",
                             "trainer.gradient_checkpointing=true", "trainer.max_tokens_per_micro_batch=64", "trainer.lr=0.01"])
    learner = Learner(tiny_model_path, "bfloat16", cfg.lora, cfg.algorithm, cfg.trainer, temperature=1.0, max_new_tokens=8, seed=0)
    assert learner.device.type == "cuda" and learner.model.dtype == torch.bfloat16
    batch = _mixed_batch()
    ids, attention, response = pad_sequences(batch.prompt_ids, batch.completion_ids, 0, learner.device)
    with torch.no_grad(), learner._forwards():
        chunked, _ = token_logprobs(learner.model, ids, attention, 1.0, positions=response)
        full, _ = _naive_token_logprobs(learner.model, ids, attention, 1.0)
    assert torch.allclose(chunked, full * response, atol=2e-2)
    before = _lora_params(learner)
    metrics = learner.update(batch)
    assert metrics["skipped_steps"] == 0.0 and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_params(learner)))


def test_the_synced_adapter_is_exactly_peft_state_dict(tiny_model_path):
    """The weight sync reads the LoRA parameters by a cheap name walk; it must give peft's own state dict."""
    import torch
    from peft import get_peft_model_state_dict

    from actors.policy_model import adapter_parameters, load_policy
    from pipeline.config import LoraSection

    model = load_policy(tiny_model_path, "float32", LoraSection(rank=4), torch.device("cpu"))
    with torch.no_grad():
        for param in adapter_parameters(model).values():
            param.normal_()  # lora_B starts at zero: make every tensor tell
    peft_dict, ours = get_peft_model_state_dict(model), adapter_parameters(model)
    assert peft_dict.keys() == ours.keys() and all(torch.equal(peft_dict[k], ours[k]) for k in peft_dict)
    # LoRA on the embeddings keeps more in peft's dict than the walk finds: then peft's own call is used
    embedded = load_policy(tiny_model_path, "float32", LoraSection(rank=4, target_modules=["q_proj", "embed_tokens"]),
                           torch.device("cpu"))
    assert adapter_parameters(embedded) is None


SMALL = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
ARCHITECTURES = {  # model_type -> config overrides for a tiny random model
    "qwen2": {}, "llama": {}, "mistral": {"sliding_window": None}, "phi3": {"pad_token_id": 0}, "gemma": {"head_dim": 8},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32}, "bloom": {"n_layer": 2, "n_head": 4},
    "gpt_neox": {},
}


def _tiny_lm(kind, **overrides):
    """A random two-layer LM of the named architecture (no dropout in eval mode), its head frozen."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(kind, **{**SMALL, **ARCHITECTURES.get(kind, {}), **overrides})
    model = AutoModelForCausalLM.from_config(config)
    model.get_output_embeddings().weight.requires_grad_(False)
    return model.eval()


def _shared_prompt_batch():
    """3 prompts of different lengths, 3 samples each of different lengths, rows interleaved (as mini-batches are)."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    rows = [(g, s) for s in range(3) for g in range(3)]
    completions = [[20 + (g * 7 + s * 3 + j) % 25 for j in range(1 + (g * 5 + s * 4) % 7)] + [1] for g, s in rows]
    return [prompts[g] for g, _ in rows], completions, torch.tensor([g for g, _ in rows])


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_a_prompt_run_once_for_its_samples_gives_the_same_logprobs_and_gradients(kind):
    from actors.policy_model import PromptRows, _prompt_plan, pad_sequences, shares_prompts, token_logprobs

    model = _tiny_lm(kind)
    assert shares_prompts(model, load_config(None, []).trainer)
    prompts, completions, keys = _shared_prompt_batch()
    ids, attention, response = pad_sequences(prompts, completions, 0, torch.device("cpu"))
    rows = PromptRows(torch.tensor([len(p) for p in prompts]), keys)
    assert _prompt_plan(attention, response.bool(), rows) is not None  # the shared path is the one taken
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(response.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for shared in (None, rows):
        for run in (model, lambda **inputs: model(**inputs)):  # the head path and the logits path
            logp, entropy = token_logprobs(run, ids, attention, 0.7, with_entropy=True, positions=response, prompts=shared)
            grads = torch.autograd.grad((logp * weights * response).sum(), params)
            results.append((logp.detach(), entropy, grads))
    (logp_a, entropy_a, grads_a) = results[0]
    for logp, entropy, grads in results[1:]:
        assert torch.allclose(logp, logp_a, atol=1e-5) and torch.allclose(entropy, entropy_a, atol=1e-5)
        assert _same_gradients(grads_a, grads, rel=1e-4)
    assert torch.equal(results[2][0][response == 0], torch.zeros_like(logp_a[response == 0]))


def test_prompts_run_whole_when_sharing_would_not_save_tokens():
    from actors.policy_model import PromptRows, _prompt_plan, pad_sequences

    prompts = [[5] * 12, [6] * 2, [7] * 7]  # distinct prompts, the long ones with short completions
    completions = [[8] * 2, [9] * 12, [10] * 7]
    ids, attention, response = pad_sequences(prompts, completions, 0, torch.device("cpu"))
    rows = PromptRows(torch.tensor([12, 2, 7]), torch.arange(3))
    assert _prompt_plan(attention, response.bool(), rows) is None  # 3 x 12 + 3 x 12 > 3 x 14
    with pytest.raises(ValueError, match="completion tokens only"):
        _prompt_plan(attention, attention[:, 1:].bool(), PromptRows(rows.lengths, torch.zeros(3, dtype=torch.long)))


def test_shared_prompt_updates_match_whole_row_updates_and_keep_a_prompts_samples_together(tiny_model_path):
    shared = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=4)
    whole = _learner(tiny_model_path, minibatch_size=12, micro_batch_size=4, share_prompt_forward=False)
    assert shared._share_prompts and not whole._share_prompts
    batch = _batch()  # three prompts, four samples each, interleaved
    for learner in (shared, whole):
        learner.update(batch)
    assert _same_gradients(_first_moments(whole), _first_moments(shared), rel=1e-4)
    prompts = shared._prompt_rows(batch.prompt_ids)
    micros = shared._micro_batches(torch.randperm(12, generator=torch.Generator().manual_seed(1)),
                                   torch.tensor([len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]), prompts)
    assert sorted(i for m, _ in micros for i in m.tolist()) == list(range(12))
    assert [len(set(prompts.keys[m].tolist())) for m, _ in micros] == [1, 1, 1]  # 4 rows each: one prompt's samples


@pytest.mark.parametrize("kind, overrides", [
    ("mistral", {"sliding_window": 4096}),  # a window counts cache slots: the padding would shift it
    ("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}),
    ("gemma2", {"head_dim": 8}),  # alternating local and global layers
    ("gpt_neo", {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "attention_types": [[["global", "local"], 1]]}),
    ("mpt", {"d_model": 32, "n_heads": 4, "n_layers": 2}),  # ALiBi counted in cache slots
    ("rwkv", {"hidden_size": 32, "num_hidden_layers": 2}),  # a recurrent state, no key/value cache
])
def test_architectures_where_a_cached_prompt_is_not_exact_run_whole_rows(kind, overrides):
    from transformers import AutoConfig

    from actors.policy_model import shares_prompts

    config = AutoConfig.for_model(kind, **overrides)
    assert not shares_prompts(SimpleNamespace(config=config), load_config(None, []).trainer)


@pytest.mark.parametrize("overrides, dropout, shares", [
    ({}, False, True), ({}, True, False), ({"gradient_checkpointing": True}, False, False),
    ({"share_prompt_forward": False}, False, False)])
def test_prompts_are_shared_only_where_the_cache_is_exact(overrides, dropout, shares):
    from actors.policy_model import shares_prompts

    cfg = load_config(None, [f"trainer.{k}={v}" for k, v in overrides.items()])
    assert shares_prompts(_tiny_lm("llama"), cfg.trainer, dropout) is shares



def test_the_sync_probe_runs_at_the_threads_asked_for_and_scores_like_the_learner(tiny_model_path):
    """The sync's probe runs beside the rollout workers' at the learner's own share; its threads are back after it."""
    import torch

    learner = _learner(tiny_model_path)
    learner.update(_batch())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        plain, merged = learner.sequence_logprobs, learner.merged_logprobs
        learner.sequence_logprobs = lambda *a: seen.append(torch.get_num_threads()) or plain(*a)
        learner.merged_logprobs = lambda *a: seen.append(torch.get_num_threads()) or merged(*a)
        probe = ([20, 30, 17, 34, 39], [14, 15, 16, 1])
        expected = plain([probe[0]], [probe[1]], 1.0)[0]
        assert learner.probe_logprobs(probe, merged=False, threads=1) == pytest.approx(expected, abs=1e-6)
        assert learner.probe_logprobs(probe, merged=True, threads=1) == pytest.approx(expected, abs=1e-4)
        assert learner.probe_logprobs(probe, merged=False) == pytest.approx(expected, abs=1e-6)
        assert seen == [1, 1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_no_thread_count_leaves_torch_s_threads_alone(monkeypatch):
    """threads_at(None) never calls torch.set_num_threads (vLLM's CPU build replaces it with a warning)."""
    import torch

    from actors.policy_model import threads_at

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    with threads_at(None):
        pass
    assert calls == []
    with threads_at(1):
        pass
    assert calls == [1, torch.get_num_threads()]
