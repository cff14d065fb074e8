"""GPU tier: the learner and the hf rollout backend on CUDA. Skipped where no GPU is present."""
import pytest

from pipeline.config import load_config
from pipeline.records import PromptSpec, SamplingSpec, TrainBatch

pytestmark = pytest.mark.gpu


def test_learner_update_and_hf_rollout_on_cuda_agree_after_sync(tiny_model_path):
    from actors.hf_backend import HFEngine
    from actors.learner import Learner

    cfg = load_config("configs/debug_cpu.yaml", ["trainer.gpus_per_learner=1", "placement.mode=split"])
    lora = cfg.lora.model_dump()
    engine = HFEngine(tiny_model_path, "float32", lora, gpus=1)
    learner = Learner(tiny_model_path, "float32", lora, cfg.algorithm.model_dump(), cfg.trainer.model_dump(),
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
