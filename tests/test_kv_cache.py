"""The hf engine's KV cache (actors/kv_cache.py): a decode step writes its keys and values in place where HF's
DynamicCache copies the whole cache, and generation samples exactly what HF's own cache gives, on real-shaped
checkpoints (left padding, BOS, two EOS ids, stop strings, a completion cut by the context)."""
import pytest
import torch

from actors import hf_backend
from actors.kv_cache import ReservedLayer, reserved_kv_cache
from pipeline.records import PromptSpec, SamplingSpec
from tests.real_models import CONTEXT_LEN, encode_prompts, real_model, task_examples  # noqa: F401


def _states(n: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, n, 4, generator=torch.Generator().manual_seed(seed))


def _update(layer: ReservedLayer, keys: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    keys.append(new)
    got_keys, got_values = layer.update(new, -new)
    expected = torch.cat(keys, -2)
    assert torch.equal(got_keys, expected) and torch.equal(got_values, -expected)
    return got_keys


def test_decode_steps_write_in_place_and_hold_what_concatenation_holds():
    layer, keys = ReservedLayer(reserve=3), []
    cache = _update(layer, keys, _states(5))  # the prefill
    for step in range(3):  # decode steps within the reserve: no copy of the cache
        assert _update(layer, keys, _states(1, seed=step + 1)).untyped_storage().data_ptr() == cache.untyped_storage().data_ptr()
    assert layer.get_seq_length() == 8
    _update(layer, keys, _states(1, seed=9))  # past the reserve: a larger buffer, the same contents
    layer.batch_select_indices(torch.tensor([2, 0, 1]))  # HF replaces the tensors (beam search): the buffer follows
    keys = [k[[2, 0, 1]] for k in keys]
    _update(layer, keys, _states(1, seed=10))
    layer.batch_select_indices(torch.tensor([2, 0]))  # and a smaller batch
    keys = [k[[2, 0]] for k in keys]
    _update(layer, keys, _states(1, batch=2, seed=11))
    layer.crop(-3)  # assisted decoding drops rejected tokens: the next write lands after what is kept
    keys = [torch.cat(keys, -2)[..., :-3, :]]
    _update(layer, keys, _states(2, batch=2, seed=12))
    assert layer.get_seq_length() == 10
    layer.reset()
    keys = []
    _update(layer, keys, _states(4, seed=13))


def test_the_buffer_grows_with_the_completions_not_with_the_reserve():
    """A large max_new_tokens with completions that end early must not cost its whole room up front."""
    layer, keys = ReservedLayer(reserve=2000), []
    _update(layer, keys, _states(5))
    for step in range(100):
        _update(layer, keys, _states(1, seed=step + 1))
        length = layer.get_seq_length()
        assert layer.buffers[0].shape[-2] <= max(2 * length, length + 64)
    assert layer.buffers[0].shape[-2] < 300


def _qwen2(**overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, **overrides))


def test_a_model_with_other_cache_layers_keeps_hfs_own_cache():
    cache = reserved_kv_cache(_qwen2(), reserve=4)
    assert [type(layer) for layer in cache.layers] == [ReservedLayer, ReservedLayer]
    assert reserved_kv_cache(_qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1), reserve=4) is None


def test_beam_search_and_half_precision_match_hfs_cache():
    """generate's other paths: beams reorder the cache every step (the buffer must follow), bfloat16 buffers."""
    torch.manual_seed(0)
    model = _qwen2().eval()
    prompt = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention = (prompt != 0).long()
    runs = [dict(num_beams=3, do_sample=False), dict(num_beams=3, do_sample=True, num_return_sequences=2),
            dict(do_sample=True, dtype=torch.bfloat16)]
    for run in runs:
        dtype = run.pop("dtype", torch.float32)
        model = model.to(dtype)
        outputs = []
        for cache in (reserved_kv_cache(model, 12), None):
            torch.manual_seed(1)
            outputs.append(model.generate(input_ids=prompt, attention_mask=attention, max_new_tokens=12, min_new_tokens=12,
                                          pad_token_id=0, past_key_values=cache, **run))
        assert torch.equal(*outputs), run


@pytest.mark.parametrize("variant, dtype", [("qwen", "float32"), ("llama", "float32"), ("qwen", "bfloat16")])
def test_generation_is_exactly_what_hfs_dynamic_cache_gives(real_model, monkeypatch, variant, dtype):
    engine = hf_backend.HFEngine(real_model(variant), dtype, None, gpus=0)
    prompts = encode_prompts(engine.tokenizer, [p for p, _ in task_examples(2)])  # of different lengths: left padding
    filler = engine.tokenizer(" ".join(p for p, _ in task_examples(2)), add_special_tokens=False)["input_ids"]
    near_end = prompts[0][:1] + filler[: CONTEXT_LEN - 2 - len(prompts[0])] + prompts[0][1:]  # cut by the context
    specs = [PromptSpec(g, p) for g, p in enumerate([*prompts, near_end])]
    greedy = engine.generate(specs, SamplingSpec(n=1, temperature=0.0, max_new_tokens=12), 0)
    stop = tuple(sorted({c.text[1:3] for c in greedy if len(c.text) > 3}))[:3]
    samplings = [SamplingSpec(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5),
                 SamplingSpec(n=2, temperature=0.7, top_k=5, max_new_tokens=12, stop=stop, seed=6)]
    made = []

    def spy(model, reserve):
        made.append(reserved_kv_cache(model, reserve))
        return made[-1]

    outputs = []
    for sampling in samplings:
        monkeypatch.setattr(hf_backend, "reserved_kv_cache", spy)
        outputs.append(engine.generate(specs, sampling, 0))
        monkeypatch.setattr(hf_backend, "reserved_kv_cache", lambda model, reserve: None)  # HF's DynamicCache
        assert outputs[-1] == engine.generate(specs, sampling, 0)
    assert len(made) == len(samplings) and all(made)
    assert any(c.group_id == len(prompts) and c.finish_reason == "length" for c in outputs[0])  # cut by the context
    assert any(c.finish_reason == "stop" and c.token_ids[-1] not in engine.eos for c in outputs[1])  # by a stop string
