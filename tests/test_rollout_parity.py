"""Both rollout backends on checkpoints shaped like real ones (tests/real_models.py): the same completions
(ids, text, finish reason, log-probs) under greedy decoding and stop strings, behaviour log-probs that are
the learner's full-vocabulary log-probs, per-group seeds, and the checkpoint's sampling defaults ignored."""
import json
import shutil

import numpy as np
import pytest

from pipeline.records import Completion, PromptSpec, SamplingSpec
from tests.real_models import CONTEXT_LEN, VARIANTS, encode_prompts, generation_config, real_model, task_examples  # noqa: F401

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow
TEXTS = [p for p, _ in task_examples(2)]  # two prompts of each task family


@pytest.fixture(scope="module")
def hf(real_model):
    """variant -> in-process hf RolloutWorker (cheap to start)."""
    from actors.rollout import RolloutWorker

    workers: dict[str, RolloutWorker] = {}

    def get(variant: str) -> RolloutWorker:
        if variant not in workers:
            workers[variant] = RolloutWorker(real_model(variant), "float32", None, "hf", 1, 0)
        return workers[variant]

    return get


@pytest.fixture(scope="module")
def vllm(ray_session, real_model):
    """variant -> vllm RolloutWorker actor, started once per module (an engine takes ~15 s)."""
    import ray

    from actors.rollout import RolloutWorker

    actors = {}

    def get(variant: str):
        if variant not in actors:
            actors[variant] = ray.remote(RolloutWorker).options(num_cpus=1).remote(real_model(variant), "float32", None, "vllm", 1, 0)
        return actors[variant]

    yield get
    for actor in actors.values():
        ray.kill(actor)


def generate(worker, prompts: list[list[int]], sampling: SamplingSpec, group_ids: list[int] | None = None) -> list[Completion]:
    specs = [PromptSpec(g, p) for g, p in zip(group_ids or range(len(prompts)), prompts)]
    if hasattr(worker, "generate") and not hasattr(worker.generate, "remote"):
        return worker.generate(specs, sampling)
    import ray

    return ray.get(worker.generate.remote(specs, sampling))


def check_invariants(completions: list[Completion], tokenizer, eos: frozenset[int], sampling: SamplingSpec) -> None:
    """What the driver relies on: one log-prob per token, no pad inside, finish_reason == "length" exactly when cut."""
    for c in completions:
        ids = c.token_ids
        assert ids and len(ids) == len(c.logprobs), c
        assert not any(t in eos for t in ids[:-1]), c
        assert tokenizer.pad_token_id not in ids[:-1] and (tokenizer.pad_token_id in eos or tokenizer.pad_token_id not in ids), c
        room = min(sampling.max_new_tokens, CONTEXT_LEN - len(c.prompt_ids))
        if c.finish_reason == "length":
            assert len(ids) == room and ids[-1] not in eos, c
        else:
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            assert c.finish_reason == "stop" and (ids[-1] in eos or any(s in decoded for s in sampling.stop)), c


def assert_same(a: list[Completion], b: list[Completion]) -> None:
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    gap = max(abs(x - y) for ca, cb in zip(a, b) for x, y in zip(ca.logprobs, cb.logprobs))
    assert gap < 1e-4, gap


def eos_of(hf, variant: str) -> frozenset[int]:
    """The EOS set as the checkpoint defines it: the tokenizer's and generation_config.json's ids."""
    tokenizer = hf(variant).engine.tokenizer
    return frozenset({tokenizer.convert_tokens_to_ids(t) for t in VARIANTS[variant].eos})


def both(hf, vllm, variant: str, prompts: list[list[int]], sampling: SamplingSpec) -> tuple[list[Completion], list[Completion]]:
    worker = hf(variant)
    out = generate(worker, prompts, sampling), generate(vllm(variant), prompts, sampling)
    for completions in out:
        check_invariants(completions, worker.engine.tokenizer, eos_of(hf, variant), sampling)
    return out


def prompts_of(hf, variant: str) -> list[list[int]]:
    return encode_prompts(hf(variant).engine.tokenizer, TEXTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_completions_match_across_backends(hf, vllm, variant):
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12)
    hf_out, vllm_out = both(hf, vllm, variant, prompts_of(hf, variant), greedy)
    assert_same(hf_out, vllm_out)
    assert "stop" in {c.finish_reason for c in hf_out}  # the fixture model does end its completions


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stop_strings_end_completions_like_vllm(hf, vllm, variant):
    """A stop string ends the completion at the token completing it (kept), the text is cut before it,
    and nothing generated after it (padding) stays in the ids or log-probs."""
    prompts = prompts_of(hf, variant)
    free = generate(hf(variant), prompts, SamplingSpec(n=1, temperature=0.0, max_new_tokens=12))
    stop = tuple(sorted({c.text[1:3] for c in free if len(c.text) > 3}))[:3]  # multi-token strings inside completions
    sampling = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12, stop=stop)
    hf_out, vllm_out = both(hf, vllm, variant, prompts, sampling)
    assert sum(c.finish_reason == "stop" and c.token_ids[-1] not in eos_of(hf, variant) for c in vllm_out) >= 3
    assert_same(hf_out, vllm_out)


def test_stop_strings_never_match_across_the_prompt(hf, vllm):
    """"=" ends every prompt: a stop string "=<first completion char>" must not stop the completion."""
    prompts = prompts_of(hf, "llama")
    free = generate(hf("llama"), prompts, SamplingSpec(n=1, temperature=0.0, max_new_tokens=12))
    sampling = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12, stop=tuple({"=" + c.text[0] for c in free}))
    hf_out, vllm_out = both(hf, vllm, "llama", prompts, sampling)
    assert [c.token_ids for c in hf_out] == [c.token_ids for c in free]
    assert_same(hf_out, vllm_out)


@pytest.mark.parametrize("variant", ["qwen", "gencfg"])
def test_behaviour_logprobs_are_the_full_distribution_at_temperature(hf, vllm, variant):
    """With top_p/top_k truncation the reported log-prob is still log_softmax(logits / T) over the whole
    vocabulary, as the learner recomputes it (token_logprobs on the same weights)."""
    prompts = prompts_of(hf, variant)[:8]
    sampling = SamplingSpec(n=4, temperature=0.8, top_p=0.5, top_k=3, max_new_tokens=8, seed=3)
    for completions in both(hf, vllm, variant, prompts, sampling):
        learner = hf(variant).sequence_logprobs([c.prompt_ids for c in completions], [c.token_ids for c in completions], 0.8)
        gap = max(abs(x - y) for c, row in zip(completions, learner) for x, y in zip(c.logprobs, row))
        assert gap < 1e-4, gap


def test_the_checkpoints_sampling_defaults_are_ignored(hf, vllm, real_model, tmp_path, caplog):
    """generation_config.json's do_sample/top_k/repetition_penalty/... never apply: the gencfg model samples
    exactly as the same weights shipped with no defaults, and the ignored fields are named in the log."""
    from actors.rollout import RolloutWorker

    neutral = tmp_path / "neutral"
    shutil.copytree(real_model("gencfg"), neutral)
    config = json.loads((neutral / "generation_config.json").read_text())
    (neutral / "generation_config.json").write_text(json.dumps({k: v for k, v in config.items() if k.endswith("token_id")}))
    with caplog.at_level("WARNING"):
        plain = RolloutWorker(str(neutral), "float32", None, "hf", 1, 0)
        shipped = RolloutWorker(real_model("gencfg"), "float32", None, "hf", 1, 0)
    assert "no_repeat_ngram_size, repetition_penalty, temperature, top_k, top_p" in caplog.text
    prompts = prompts_of(hf, "gencfg")
    for sampling in (SamplingSpec(n=1, temperature=0.0, max_new_tokens=12), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=5)):
        assert [c.token_ids for c in generate(shipped, prompts, sampling)] == [c.token_ids for c in generate(plain, prompts, sampling)]


def test_each_group_has_its_own_seed(hf, vllm):
    """A prompt drawn twice in a step gives two different groups; a group's samples do not depend on the
    chunk it was sent in, and a chunk redone gives the same samples."""
    prompts = prompts_of(hf, "qwen")[:3]
    sampling = SamplingSpec(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    twice = [prompts[0], prompts[0], *prompts[1:]]
    for worker in (hf("qwen"), vllm("qwen")):
        out = generate(worker, twice, sampling)
        assert [c.token_ids for c in out[:4]] != [c.token_ids for c in out[4:8]]
        assert [c.token_ids for c in generate(worker, twice, sampling)] == [c.token_ids for c in out]
    whole = generate(vllm("qwen"), twice, sampling)
    split = generate(vllm("qwen"), twice[:2], sampling) + generate(vllm("qwen"), twice[2:], sampling, group_ids=[2, 3])
    assert [c.token_ids for c in split] == [c.token_ids for c in whole]


def test_a_completion_cut_by_the_context_is_a_length_finish(hf, vllm):
    """Two tokens from the context limit, both backends stop at it with finish_reason "length" (the
    truncation flag), but "stop" when the last token that fits is an EOS."""
    tokenizer = hf("llama").engine.tokenizer
    filler = tokenizer(" ".join(TEXTS), add_special_tokens=False)["input_ids"]
    long = [p[:1] + filler[: CONTEXT_LEN - 2 - len(p)] + p[1:] for p in prompts_of(hf, "llama")[::2]]
    hf_out, vllm_out = both(hf, vllm, "llama", long, SamplingSpec(n=1, temperature=0.0, max_new_tokens=10))
    assert {(c.finish_reason, len(c.token_ids)) for c in hf_out} == {("length", 2), ("stop", 2)}
    assert_same(hf_out, vllm_out)


def test_every_generation_config_eos_id_ends_a_completion(hf, vllm, real_model):
    """Qwen lists <|im_end|> and <|endoftext|> (also its pad token): either ends a completion, on both backends."""
    assert set(generation_config(real_model("qwen"))["eos_token_id"]) == eos_of(hf, "qwen")
    for completions in both(hf, vllm, "qwen", prompts_of(hf, "qwen"), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=2)):
        assert {c.token_ids[-1] for c in completions if c.finish_reason == "stop"} == eos_of(hf, "qwen")


def _sentencepiece_tokenizer():
    """A Llama-2 / Mistral-style tokenizer (Metaspace, and a decoder that strips the first space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁The": 3, "▁capital": 4, "▁is": 5, "▁Paris": 6, ".": 7, "<0xE3>": 8}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_completion_text_is_decoded_in_the_prompts_context_like_vllm():
    """vLLM primes its detokenizer with the prompt: ' Paris.' keeps its space and a stop string ' ' matches it;
    decoding the completion alone gave 'Paris.' and ran past the stop (issue 12.1 on SentencePiece tokenizers)."""
    from actors.hf_backend import TextStream, completion_end

    tokenizer = _sentencepiece_tokenizer()
    prompt, completion = [1, 3, 4, 5], [6, 7, 2]
    assert completion_end(completion, frozenset({2}), (), TextStream(tokenizer, prompt)) == (3, " Paris.", "stop")
    assert completion_end(completion, frozenset({2}), (" ",), TextStream(tokenizer, prompt)) == (1, "", "stop")
    # an incomplete character at the end is held back, not decoded as U+FFFD
    assert completion_end([6, 8, 2], frozenset({2}), (), TextStream(tokenizer, prompt)) == (3, " Paris", "stop")
