"""The whole pipeline on checkpoints shaped like real ones (tests/real_models.py), on both engines:
pad != eos with two EOS ids and a chat template, a BOS-adding tokenizer, and non-neutral generation
defaults. Every step's batch passes the invariant check, and the learner's recomputed log-probs
match what the engine says it sampled from (a stop string, a pad, an applied repetition penalty or
a truncated top-p distribution would all show as a gap)."""
import json

import pytest

from pipeline.config import load_config
from tests.real_models import real_model  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow

RUN = ["trainer.steps=2", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12", "trainer.minibatch_size=16",
       "trainer.micro_batch_size=16", "eval.before=false", "eval.after=false", "tracking.wandb=disabled",
       "tracking.samples_every=0", "rollout.top_p=0.7", "data.sources=[add_1d,reverse_4]", "data.train_per_source=20",
       "data.test_per_source=4"]


@pytest.mark.parametrize("backend", ["hf", "vllm"])
@pytest.mark.parametrize("variant, extra", [("qwen", ["rollout.stop=['.']"]), ("llama", []), ("gencfg", [])])
def test_two_training_steps_train_on_exactly_what_was_sampled(ray_session, real_model, tmp_path, variant, extra, backend):  # noqa: F811
    if backend == "vllm":
        pytest.importorskip("vllm")
    from pipeline.train import train

    run_dir = tmp_path / f"{variant}-{backend}"
    train(load_config("configs/debug_cpu.yaml", [*RUN, *extra, f"model.path={real_model(variant)}", f"rollout.backend={backend}",
                                                 f"run.dir={run_dir}"]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["train/logprob_gap_max"] < 2e-3 for r in rows), [r["train/logprob_gap_max"] for r in rows]
    assert all(0 < r["response/length_mean"] <= 12 for r in rows)
