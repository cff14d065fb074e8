"""GPU tier: the learner and the hf rollout backend on CUDA. Skipped where no GPU is present."""
import pytest

from pipeline.config import load_config
from pipeline.records import PromptSpec, SamplingSpec, TrainBatch

pytestmark = pytest.mark.gpu


def test_learner_update_and_hf_rollout_on_cuda_agree_after_sync(tiny_model_path):
    from actors.hf_backend import HFEngine
    from actors.learner import Learner

    cfg = load_config("configs/debug_cpu.yaml", ["trainer.gpus_per_learner=1", "placement.mode=split"])
    lora = cfg.lora
    engine = HFEngine(tiny_model_path, "float32", lora, gpus=1)
    learner = Learner(tiny_model_path, "float32", lora, cfg.algorithm, cfg.trainer,
                      temperature=1.0, max_new_tokens=8, seed=0)
    assert engine.device.type == "cuda" and learner.device.type == "cuda"
    completions = engine.generate([PromptSpec(g, [30, 17, 34, 39, 13, 14, 15, 16, 42]) for g in range(4)],
                                  SamplingSpec(n=4, temperature=1.0, max_new_tokens=8, seed=0), 0)
    metrics = learner.update(TrainBatch([c.prompt_ids for c in completions], [c.token_ids for c in completions],
                                        [(-1.0) ** i for i in range(16)], [c.group_id for c in completions],
                                        [c.logprobs for c in completions]))
    assert metrics["logprob_gap_max"] < 1e-3
    engine.load_adapter(learner.adapter_state(), 1)
    probe = (completions[0].prompt_ids, completions[0].token_ids)
    rollout = engine.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0]
    assert max(abs(a - b) for a, b in zip(rollout, learner.sequence_logprobs([probe[0]], [probe[1]])[0])) < 1e-4


def test_hf_engine_sleep_frees_its_gpu_memory_and_wakes_unchanged(tiny_model_path):
    import torch

    from actors.hf_backend import HFEngine

    engine = HFEngine(tiny_model_path, "float32", None, gpus=1)
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=8)
    prompts = [PromptSpec(0, [30, 17, 34, 39, 13, 14, 15, 16, 42])]
    before = [c.token_ids for c in engine.generate(prompts, greedy, 0)]
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    allocated = torch.cuda.memory_allocated()
    engine.sleep()
    assert allocated - torch.cuda.memory_allocated() >= weights
    engine.wake_up()
    assert [c.token_ids for c in engine.generate(prompts, greedy, 0)] == before


def test_merged_weights_from_a_cuda_learner_reload_into_a_bare_cuda_engine(tiny_model_path):
    from actors.hf_backend import HFEngine
    from actors.learner import Learner

    cfg = load_config("configs/debug_cpu.yaml", ["trainer.gpus_per_learner=1", "placement.mode=split", "trainer.lr=0.05"])
    learner = Learner(tiny_model_path, "bfloat16", cfg.lora, cfg.algorithm, cfg.trainer,
                      temperature=1.0, max_new_tokens=8, seed=0)
    prompt = [30, 17, 34, 39, 13, 14, 15, 16, 42]
    learner.update(TrainBatch([prompt] * 4, [[16, 15, 1], [14, 1], [13, 13, 1], [16, 1]], [1.0, -1.0, 0.5, -0.5], [0] * 4))
    bare = HFEngine(tiny_model_path, "bfloat16", None, gpus=1)
    bare.load_merged(learner.merged_state(), 1)
    probe = [16, 15, 14, 13, 1]
    got = bare.sequence_logprobs([prompt], [probe], 1.0)[0]
    assert max(abs(a - b) for a, b in zip(got, learner.merged_logprobs([prompt], [probe], 1.0)[0])) < 1e-3
    # bf16: the once-rounded W + BA is measurably not the adapter applied on the fly, hence the merged probe
    assert max(abs(a - b) for a, b in zip(got, learner.sequence_logprobs([prompt], [probe], 1.0)[0])) > 1e-3
