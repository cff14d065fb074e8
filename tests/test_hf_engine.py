"""The hf rollout engine folds the LoRA adapter into its weights (float32, CPU): the same policy, no drift."""
import torch

from actors.hf_backend import HFEngine
from actors.learner import Learner
from pipeline.config import load_config
from pipeline.records import PromptSpec, SamplingSpec

PROMPTS = [[20, 30, 17, 34, 39], [21, 30, 17], [9, 8, 7, 6, 5, 4]]
COMPLETIONS = [[14, 15, 1], [16, 1], [17, 18, 19, 20, 1]]


def _adapter(path, seed):
    """A learner's adapter with a non-trivial B (a fresh LoRA has B = 0, which any engine gets right)."""
    cfg = load_config(None, [])
    learner = Learner(path, "float32", cfg.lora, cfg.algorithm, cfg.trainer, temperature=1.0, max_new_tokens=8, seed=0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in learner.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return learner, learner.adapter_state()


def _engine(path, dtype="float32", fold=True):
    engine = HFEngine(path, dtype, load_config(None, []).lora, gpus=0)
    if not fold:
        engine._folded = []  # the adapter run as it is
    return engine


def test_the_folded_adapter_gives_the_learners_policy_and_the_unfolded_engines_samples(tiny_model_path):
    learner, adapter = _adapter(tiny_model_path, seed=1)
    folded, unfolded = _engine(tiny_model_path), _engine(tiny_model_path, fold=False)
    for engine in (folded, unfolded):
        engine.load_adapter(adapter, version=1)
    assert folded._unadapted and not unfolded._unadapted
    expected = learner.sequence_logprobs(PROMPTS, COMPLETIONS, 1.0)
    for engine in (folded, unfolded):
        got = engine.sequence_logprobs(PROMPTS, COMPLETIONS, 1.0)
        assert max(abs(a - b) for x, y in zip(expected, got) for a, b in zip(x, y)) < 1e-5
    sampling = SamplingSpec(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    prompts = [PromptSpec(i, p) for i, p in enumerate(PROMPTS)]
    a, b = folded.generate(prompts, sampling, 1), unfolded.generate(prompts, sampling, 1)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert max(abs(x - y) for ca, cb in zip(a, b) for x, y in zip(ca.logprobs, cb.logprobs)) < 1e-5


def test_each_sync_folds_from_the_original_weights_and_nothing_accumulates(tiny_model_path):
    _, first = _adapter(tiny_model_path, seed=1)
    _, second = _adapter(tiny_model_path, seed=2)
    synced, fresh = _engine(tiny_model_path), _engine(tiny_model_path)
    for step in range(3):
        synced.load_adapter(first, version=2 * step + 1)
        synced.load_adapter(second, version=2 * step + 2)
    fresh.load_adapter(second, version=1)
    assert all(torch.equal(a, b) for a, b in zip(synced.model.state_dict().values(), fresh.model.state_dict().values()))
    synced._unfold()  # what an EVA reshape starts from: the checkpoint's weights
    pristine = _engine(tiny_model_path).model.get_base_model().state_dict()
    unfolded = synced.model.get_base_model().state_dict()
    assert all(torch.equal(unfolded[k], v) for k, v in pristine.items() if "lora_" not in k)


def test_half_precision_runs_the_adapter_unfolded(tiny_model_path):
    _, adapter = _adapter(tiny_model_path, seed=1)
    engine = _engine(tiny_model_path, dtype="bfloat16")
    engine.load_adapter({k: v.astype("float32") for k, v in adapter.items()}, version=1)
    assert not engine._unadapted  # W + BA in bfloat16 would round most of a small update away
