"""End-to-end runs through real Ray actors on the tiny model (CPU)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.records import PromptSpec, SamplingSpec, TrainBatch

pytestmark = pytest.mark.slow

SMALL = [
    "tracking.samples_every=2", "trainer.steps=3", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.num_workers=2",
    "rollout.cpus_per_worker=0.5", "trainer.cpus_per_learner=1", "eval.prompts_per_source=4",
    "eval.n_samples=2", "eval.k=[1,2]", "run.checkpoint_every=2",
]


def _run(tmp_path: Path, name: str, *extra: str):
    from pipeline.train import train

    cfg = load_config("configs/debug_cpu.yaml", [*SMALL, f"run.dir={tmp_path / name}", *extra])
    return train(cfg), tmp_path / name


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_step_run_writes_metrics_adapter_checkpoint_and_wandb(ray_session, tiny_model_path, tmp_path):
    results, run_dir = _run(tmp_path, "a", "reward.components=[{name: exact_match}, {name: 'tests.reward_plugins:fails_on_odd_length', weight: 0.0}]")
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward/mean", "time/step", "time/generate", "time/score", "time/train", "time/sync", "throughput/gen_tokens_per_s"):
        assert all(key in r for r in rows), key
    sources = set(load_config("configs/debug_cpu.yaml").data.sources)
    assert any(k.startswith("reward/") and k.split("/")[1] in sources for k in rows[0])
    # the plug-in raised on odd-length completions: scored 0, counted, and the run went on
    assert sum(r["scoring/errors"] for r in rows) > 0
    assert all(r["train/logprob_gap_max"] < 1e-3 for r in rows)  # rollout and learner agree: the sync worked
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(run_dir / "final_adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # initialised at zero: the adapter was trained
    assert (run_dir / "checkpoints" / "step_000002" / "adapter" / "adapter_model.safetensors").exists()
    assert (run_dir / "config.yaml").exists() and set(results["after"]) == sources
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    records = offline[0].read_bytes()  # protobuf records: metric names and table keys are stored as plain strings
    for key in (b"reward/mean", b"reward/sort_4", b"accuracy/mean", b"curriculum/p/sort_4", b"time/generate",
                b"throughput/gen_tokens_per_s", b"samples", b"eval/final", b"trainer", b"prompts_per_step"):
        assert key in records, key
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "completion", "reward", "reward/exact_match"} <= set(samples[0])


def test_same_seed_gives_the_same_metrics(ray_session, tiny_model_path, tmp_path):
    _, first = _run(tmp_path, "x", "eval.before=false", "eval.after=false", "tracking.wandb=disabled")
    _, second = _run(tmp_path, "y", "eval.before=false", "eval.after=false", "tracking.wandb=disabled")

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]

    assert strip(_metrics(first)) == strip(_metrics(second))


def test_every_rollout_worker_receives_each_adapter_version(ray_session, tiny_model_path):
    import ray

    from actors.group import ActorGroup

    cfg = load_config("configs/debug_cpu.yaml", [*SMALL, f"model.path={tiny_model_path}", "trainer.lr=0.05"])
    workers = ActorGroup(cfg, tiny_model_path)
    try:
        probe = ([20, 30, 17, 34, 39], [14, 15, 16, 1])
        workers.sync(0, probe)
        before = ray.get([w.sequence_logprobs.remote([probe[0]], [probe[1]], 1.0) for w in workers.rollout.actors])
        completions = workers.generate([PromptSpec(g, probe[0]) for g in range(2)], SamplingSpec(n=4, temperature=1.0, max_new_tokens=4, seed=1))
        advantages = [1.0 if i % 2 else -1.0 for i in range(len(completions))]
        workers.update(TrainBatch([c.prompt_ids for c in completions], [c.token_ids for c in completions], advantages,
                                  [c.group_id for c in completions]))
        workers.sync(1, probe)
        after = ray.get([w.sequence_logprobs.remote([probe[0]], [probe[1]], 1.0) for w in workers.rollout.actors])
        learner = ray.get(workers._learners[0].sequence_logprobs.remote([probe[0]], [probe[1]], 1.0))
        for b, a in zip(before, after):
            assert not np.allclose(b, a, atol=1e-5)  # the policy moved on every worker ...
            assert np.allclose(a, learner, atol=1e-5)  # ... to exactly the learner's
    finally:
        workers.shutdown()


def test_async_rollouts_train_one_step_off_policy(ray_session, tiny_model_path, tmp_path):
    _, run_dir = _run(tmp_path, "async", "rollout.async=true", "trainer.steps=4", "eval.before=false", "tracking.wandb=disabled")
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]  # step t trains on samples of policy t-2
    assert all("time/wait_for_rollouts" in r and r["train/logprob_gap_max"] > 0 for r in rows[1:])


def test_merged_full_weight_sync_trains_with_every_reload_verified(ray_session, tiny_model_path, tmp_path):
    _, adapter_run = _run(tmp_path, "adapter", "eval.before=false", "eval.after=false", "tracking.wandb=disabled")
    _, merged_run = _run(tmp_path, "merged", "rollout.weight_sync=merged", "eval.before=false", "eval.after=false",
                         "tracking.wandb=disabled")
    adapter_rows, merged_rows = _metrics(adapter_run), _metrics(merged_run)
    assert all(r["train/logprob_gap_max"] < 1e-3 for r in merged_rows)  # the engine's bare model = learner's base + adapter
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert merged_rows[0]["sync/bytes"] == sum(t.numel() * t.element_size() for t in base.values())  # every weight travels
    assert adapter_rows[0]["sync/bytes"] < merged_rows[0]["sync/bytes"] / 4
    assert [r["reward/mean"] for r in merged_rows] == pytest.approx([r["reward/mean"] for r in adapter_rows], abs=0.1)


class _LearnerSendingWrongWeights:
    """Stands in for the learner handle: scores the probe with the real policy but ships other weights."""

    def __init__(self, learner):
        self.learner = learner
        self.adapter_state = self  # so that `adapter_state.remote()` lands in `remote` below
        self.probe_logprobs = learner.probe_logprobs

    def remote(self):
        import ray

        state = ray.get(self.learner.adapter_state.remote())
        return ray.put({k: v + 0.5 for k, v in state.items()})


def test_a_worker_running_other_weights_than_the_learner_stops_the_run(ray_session, tiny_model_path):
    from actors.group import SyncError, ActorGroup

    cfg = load_config("configs/debug_cpu.yaml", [*SMALL, "rollout.num_workers=1"])
    workers = ActorGroup(cfg, tiny_model_path)
    real_ranks = workers._state_ranks
    try:
        workers._state_ranks = [_LearnerSendingWrongWeights(workers._learners[0])]  # rank 0, as the sync reaches it
        with pytest.raises(SyncError, match="rollout worker 0 disagrees with the learner after sync v0"):
            workers.sync(0, ([20, 30, 17, 34, 39], [14, 15, 16, 1]))
    finally:
        workers._state_ranks = real_ranks
        workers.shutdown()


def test_a_learner_dead_before_a_sync_ends_the_run_without_restarting_rollout_workers(ray_session, tiny_model_path):
    """The workers load weights the learner was to send: its death is the learner's, not theirs (a CI run once
    restarted a healthy rollout worker three times and reported it lost)."""
    import ray

    from actors.group import ActorGroup, LearnerDied

    workers = ActorGroup(load_config("configs/debug_cpu.yaml", [*SMALL, "rollout.num_workers=1"]), tiny_model_path)
    try:
        ray.kill(workers._learners[0], no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):  # dead before the sync starts
            ray.get(workers._learners[0].__ray_ready__.remote())
        with pytest.raises(LearnerDied, match="the learner actor died"):
            workers.sync(0, ([20, 30, 17, 34, 39], [14, 15, 16, 1]))
        assert workers.rollout.counters.restarts == 0
    finally:
        workers.shutdown()


def test_dapo_with_ucb_curriculum_unlikeliness_and_periodic_eval(ray_session, tiny_model_path, tmp_path):
    _, run_dir = _run(tmp_path, "dapo", "algorithm.name=dapo", "curriculum.name=ucb", "reward.unlikeliness.beta_rank=0.25",
                      "algorithm.ppo_epochs=2", "algorithm.kl_in=reward", "algorithm.kl_coef=0.01",
                      "algorithm.overlong_filtering=true", "eval.every=2", "eval.before=false", "tracking.wandb=disabled",
                      "algorithm.max_gen_rounds=0")
    rows = _metrics(run_dir)
    for row in rows:
        assert row["batch/trained_groups"] == 4 and row["batch/gen_rounds"] >= 1
        assert sum(v for k, v in row.items() if k.startswith("curriculum/p/")) == pytest.approx(1.0)
        for key in ("curriculum/learnability/sort_4", "curriculum/ucb/sort_4", "curriculum/count/sort_4",
                    "unlikeliness/mean_factor_correct", "train/kl_in_reward", "reward_component/overlong_penalty"):
            assert key in row, key
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 3] and "eval/greedy_acc/sort_4" in evals[0]


def test_a_hung_reward_worker_is_killed_restarted_and_its_samples_left_unscored(ray_session, tiny_model_path):
    from actors.group import ActorGroup

    cfg = load_config("configs/debug_cpu.yaml", [*SMALL, "reward.timeout_s=0.5", "reward.worker_deadline_s=4",
                                                 "reward.components=[{name: 'tests.reward_plugins:hangs_uninterruptibly_on_x'}]"])
    workers = ActorGroup(cfg, tiny_model_path)
    try:
        hung = workers.score(["xx", "ab"], {"answer": ["1", "2"]})
        assert all(math.isnan(t) for t in hung.total) and "deadline" in hung.first_errors["reward_worker"]
        healthy = workers.score(["ab", "cd"], {"answer": ["1", "2"]})  # the restarted worker serves again
        assert healthy.total == [0.5, 0.5] and healthy.timeouts == 0
    finally:
        workers.shutdown()


def test_label_free_consensus_training_runs_and_logs_the_rankings(ray_session, tiny_model_path, tmp_path):
    _, run_dir = _run(tmp_path, "consensus", "reward.consensus.weight=1", "reward.consensus.use=label_free",
                      "reward.consensus.iterations=300", "eval.before=false", "tracking.wandb=disabled")
    for row in _metrics(run_dir):
        assert 1 <= row["consensus/candidates_per_group"] <= 4
        assert 0 <= row["reward/mean"] <= 1 and row["reward/mean"] == pytest.approx(row["reward_component/consensus"])
        assert "consensus/pick_correct_er_d" in row and "accuracy/mean" in row


def test_resume_auto_starts_a_first_launch_fresh_and_refuses_an_incompatible_checkpoint(ray_session, tiny_model_path, tmp_path,
                                                                                       capsys):
    from pipeline.checkpoint import CheckpointError

    common = ["trainer.steps=2", "run.checkpoint_every=2", "eval.before=false", "eval.after=false", "tracking.wandb=disabled"]
    _, run_dir = _run(tmp_path, "run", *common, "run.resume=auto")  # as a scheduler that may restart the job launches it
    assert "run.resume=auto: no checkpoint under" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2]
    with pytest.raises(CheckpointError, match="lora"):
        _run(tmp_path, "run", *common, "run.resume=auto", "lora.rank=4", "trainer.steps=3")


def test_eval_and_export_of_a_finished_run(ray_session, tiny_model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.cli import main

    results, run_dir = _run(tmp_path, "done", "eval.before=false", "tracking.wandb=disabled", "trainer.lr=0.02")
    assert main(["eval", str(run_dir), "eval.prompts_per_source=4", "eval.n_samples=2", "eval.k=[1,2]"]) == 0
    saved = json.loads((run_dir / "eval_saved.json").read_text())
    assert {s: m["greedy_acc"] for s, m in saved.items()} == {s: m["greedy_acc"] for s, m in results["after"].items()}

    assert main(["export", str(run_dir), "--merged", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(run_dir / "final_adapter"))
    prompts = torch.tensor([[30, 17, 34, 39, 13, 14, 15, 16, 42]])  # "rev abcd="
    for model in (merged, adapted):
        model.eval()
    greedy = [m.generate(prompts, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=1) for m in (merged, adapted)]
    assert torch.equal(greedy[0], greedy[1])


def test_an_external_model_directory_and_jsonl_data_from_the_command_line(ray_session, tiny_model_path, tmp_path):
    from pipeline.tasks import generate_split

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a, "source": "mine", "level": 1}) + "\n"
                            for p, a in generate_split("sort_4", 60, 0, seed=5)[0]))
    results, run_dir = _run(tmp_path, "external", f"model.path={tiny_model_path}", f"data.files=[{data}]",
                            "rollout.n=2", "trainer.prompts_per_step=3", "rollout.max_new_tokens=6", "trainer.lr=5e-4",
                            "lora.rank=4", "lora.alpha=8", "algorithm.kl_coef=0.01", "trainer.steps=2", "run.seed=3",
                            "tracking.wandb=disabled")
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and "reward/mine" in rows[0] and rows[0]["train/kl"] >= 0
    assert set(results["after"]) == {"mine"}  # a test split was held out of the file
    assert json.loads((run_dir / "final_adapter" / "adapter_config.json").read_text())["r"] == 4


def test_too_many_skipped_updates_stop_the_run_with_a_clear_message(ray_session, tiny_model_path, tmp_path):
    from pipeline.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="1 updates in a row were skipped"):
        _run(tmp_path, "diverged", "trainer.grad_skip_thresh=1e-9", "trainer.max_consecutive_skips=1",
             "eval.before=false", "tracking.wandb=disabled",  # a reward that varies with length: never a zero gradient
             "reward.components=[{name: length_penalty, args: {max_chars: 2}}]")


def test_sigterm_checkpoints_the_current_step_and_stops_every_process(tiny_model_path, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "terminated"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "configs/debug_cpu.yaml", *SMALL, "trainer.steps=500",
                             "run.checkpoint_every=0", "eval.before=false", "tracking.wandb=disabled", f"run.dir={run_dir}"],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists()
                                              and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, output[-2000:]
        assert "stopped by SIGTERM after step" in output
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        assert (run_dir / "checkpoints" / f"step_{last:06d}" / "meta.json").exists()  # resumable from the last step
        time.sleep(2)
        with pytest.raises(ProcessLookupError):  # the driver's Ray and actors are gone too
            os.killpg(proc.pid, 0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_eva_initialised_run_syncs_the_reshaped_adapter_and_resumes(ray_session, tiny_model_path, tmp_path):
    common = ["lora.init=eva", "lora.eva_prompts=16", "lora.eva_max_steps=5", "run.checkpoint_every=2",
              "eval.before=false", "eval.after=false", "tracking.wandb=disabled"]
    _run(tmp_path, "eva", *common)  # every sync is verified: rollout workers run EVA's shape
    layout = json.loads((tmp_path / "eva" / "lora_layout.json").read_text())
    assert layout["rank_pattern"] and set(layout["rank_pattern"].values()) != {16}  # ranks were redistributed
    _run(tmp_path, "eva", *common, "trainer.steps=4", "run.resume=auto")
    assert [r["step"] for r in _metrics(tmp_path / "eva")] == [1, 2, 3, 4]
