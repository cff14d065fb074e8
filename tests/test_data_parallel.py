"""Data-parallel learners over gloo on the CPU: two ranks must train exactly like one learner."""
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.records import TrainBatch

pytestmark = pytest.mark.slow


def _batch() -> TrainBatch:
    """6 groups of 4 with completions of different lengths, so the global token-mean matters."""
    rng = np.random.default_rng(0)
    prompts, completions, advantages, groups = [], [], [], []
    for g in range(6):
        prompt = [int(t) for t in rng.integers(13, 40, size=5 + g % 3)]
        for s in range(4):
            prompts.append(prompt)
            completions.append([int(t) for t in rng.integers(13, 40, size=1 + (g + 2 * s) % 7)] + [1])
            advantages.append(float(rng.normal()))
            groups.append(g)
    return TrainBatch(prompts, completions, advantages, groups)


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_two_gloo_learners_match_one_learner_after_several_steps(ray_session, tiny_model_path, loss_agg_mode):
    import ray

    from actors.learner import Learner

    # whole rows: a shared prompt forward changes with the micro-batch's rows, and RMSNorm computes in float32 even
    # in a float64 model, so sharing would add float32 rounding to a comparison meant to be exact
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.minibatch_size=8", "trainer.micro_batch_size=3", "trainer.lr=0.01",
                                                 f"algorithm.loss_agg_mode={loss_agg_mode}", "algorithm.ppo_epochs=2",
                                                 "trainer.share_prompt_forward=false"])
    # float64: Adam turns float32 rounding in near-zero gradients into visible parameter noise
    # (float32 gradients agree to 2e-8 here, but 40% of them are below 1e-7)
    args = (tiny_model_path, "float64", cfg.lora, cfg.algorithm, cfg.trainer, 1.0, 8, 0)
    single = ray.remote(Learner).options(num_cpus=1).remote(*args)
    pair = [ray.remote(Learner).options(num_cpus=1).remote(*args) for _ in range(2)]
    try:
        address = ray.get(pair[0].rendezvous.remote())
        ray.get([learner.join_group.remote(address, rank, 2) for rank, learner in enumerate(pair)])
        batch = ray.put(_batch())
        for _ in range(2):  # 2 updates x 2 epochs x 3 mini-batches = 12 optimizer steps
            expected = ray.get(single.update.remote(batch))
            got = ray.get([learner.update.remote(batch) for learner in pair])
        assert got[0]["loss"] == pytest.approx(expected["loss"], rel=1e-9) and got[0]["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-9)
        reference = ray.get(single.adapter_state.remote())
        for state in ray.get([learner.adapter_state.remote() for learner in pair]):
            assert max(float(np.abs(state[k] - reference[k]).max()) for k in reference) < 1e-9
        moved = ray.get(ray.remote(Learner).options(num_cpus=1).remote(*args).adapter_state.remote())
        assert max(float(np.abs(moved[k] - reference[k]).max()) for k in reference) > 1e-3  # the updates did move the adapter
    finally:
        for actor in [single, *pair]:
            ray.kill(actor)


@pytest.mark.parametrize("sharding", [[], ["trainer.fsdp=true"]], ids=["ddp", "fsdp"])
def test_a_run_with_two_learners_trains_like_one_and_resumes(ray_session, tiny_model_path, tmp_path, sharding):
    import json

    from pipeline.train import train

    common = ["trainer.steps=3", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.cpus_per_worker=0.5",
              "trainer.cpus_per_learner=1", "run.checkpoint_every=2", "eval.before=false", "eval.after=false", "tracking.wandb=disabled"]

    def run(name, *extra):
        train(load_config("configs/debug_cpu.yaml", [*common, f"run.dir={tmp_path / name}", *extra]))
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    one, two = run("one"), run("two", "trainer.num_learners=2", *sharding)
    assert two[0]["train/grad_norm"] == pytest.approx(one[0]["train/grad_norm"], rel=1e-4)  # same batch, same gradient
    assert all(r["train/logprob_gap_max"] < 1e-3 for r in two)  # rank 0's weights reached the rollout worker, verified
    resumed = run("two", "trainer.num_learners=2", *sharding, "trainer.steps=4", "run.resume=auto")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]


def test_two_fsdp_learners_match_one_learner_and_resume_from_their_checkpoint(ray_session, tiny_model_path, tmp_path):
    import ray

    from actors.learner import Learner

    cfg = load_config("configs/debug_cpu.yaml", ["trainer.minibatch_size=8", "trainer.micro_batch_size=3", "trainer.lr=0.01",
                                                 "algorithm.ppo_epochs=2", "trainer.share_prompt_forward=false"])  # as above
    args = (tiny_model_path, "float64", cfg.lora, cfg.algorithm, cfg.trainer, 1.0, 8, 0)

    def sharded_pair():
        pair = [ray.remote(Learner).options(num_cpus=1).remote(*args) for _ in range(2)]
        address = ray.get(pair[0].rendezvous.remote())
        ray.get([learner.join_group.remote(address, rank, 2, True) for rank, learner in enumerate(pair)])
        return pair

    def on_both(pair, method, *call_args):
        return ray.get([getattr(learner, method).remote(*call_args) for learner in pair])[0]

    single, pair = ray.remote(Learner).options(num_cpus=1).remote(*args), sharded_pair()
    resumed = []
    try:
        batch = ray.put(_batch())
        for _ in range(2):
            expected = ray.get(single.update.remote(batch))
            got = on_both(pair, "update", batch)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-9) and got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-9)
        reference, sharded = ray.get(single.adapter_state.remote()), on_both(pair, "adapter_state")
        assert set(sharded) == set(reference)
        assert max(float(np.abs(sharded[k] - reference[k]).max()) for k in reference) < 1e-9

        on_both(pair, "save", str(tmp_path / "ckpt"))  # whole adapter + optimizer, gathered to rank 0
        resumed = sharded_pair()
        on_both(resumed, "load", str(tmp_path / "ckpt"))
        ray.get(single.update.remote(batch))
        on_both(resumed, "update", batch)  # the optimizer state came back too: the next step still matches
        after, reference = on_both(resumed, "adapter_state"), ray.get(single.adapter_state.remote())
        assert max(float(np.abs(after[k] - reference[k]).max()) for k in reference) < 1e-9
    finally:
        for actor in [single, *pair, *resumed]:
            ray.kill(actor)
