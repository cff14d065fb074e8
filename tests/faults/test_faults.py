"""Fault injection on short CPU runs: actors are killed (SIGKILL) or frozen (SIGSTOP) at seeded
random points, and the run must finish (or resume) with exactly the metrics of an unharmed run."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.config import load_config

pytestmark = pytest.mark.slow

COMMON = [
    "trainer.steps=5", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.num_workers=2", "rollout.cpus_per_worker=0.5",
    "reward.num_workers=2", "trainer.cpus_per_learner=1", "run.checkpoint_every=2", "eval.before=false", "eval.after=false",
    "tracking.wandb=disabled", "tracking.samples_every=0",
]
VOLATILE = ("time/", "throughput/", "faults/")  # wall-clock figures and the fault counters themselves


def _train(run_dir: Path, *extra: str):
    from pipeline.train import train

    return train(load_config("configs/debug_cpu.yaml", [*COMMON, f"run.dir={run_dir}", *extra]))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _actor_processes(class_name: str, exclude: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Ray names an actor's process `ray::<Class>` (`ray::<Class>.<method>` while busy)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid not in exclude and any(part.startswith(f"ray::{class_name}") for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


class Saboteur(threading.Thread):
    """Sends `sig` to a random `class_name` actor of this run, `times` times, each within max_delay_s
    after the run has logged a seeded random step in 1..3 (steps take ~0.2 s; the run has 5)."""

    def __init__(self, run_dir: Path, class_name: str, seed: int, times: int = 1, sig=signal.SIGKILL, max_delay_s: float = 0.15):
        super().__init__(daemon=True)
        self.rng, self.run_dir, self.class_name, self.sig = random.Random(seed), run_dir, class_name, sig
        self.after_steps = sorted(self.rng.randint(1, 3) for _ in range(times))
        self.max_delay_s = max_delay_s
        self.earlier = frozenset(p.pid for p in _actor_processes(class_name.split(".")[0]))  # a previous run's, shutting down
        self.hits: list[int] = []
        self.done = threading.Event()

    def __enter__(self) -> "Saboteur":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()

    def run(self) -> None:
        metrics = self.run_dir / "metrics.jsonl"
        for after in self.after_steps:
            while not self.done.is_set():
                logged = len(metrics.read_text().splitlines()) if metrics.exists() else 0
                if logged >= after and _actor_processes(self.class_name, self.earlier):
                    break
                time.sleep(0.01)
            time.sleep(self.rng.uniform(0.0, self.max_delay_s))  # somewhere inside the next step
            victims = _actor_processes(self.class_name, self.earlier)
            if self.done.is_set() or not victims:
                return
            victim = self.rng.choice(victims)
            victim.send_signal(self.sig)
            self.hits.append(victim.pid)


@pytest.fixture(scope="module")
def reference(ray_session, tiny_model_path, tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    _train(run_dir)
    rows = _metrics(run_dir)
    assert rows[-1]["faults/rollout_restarts"] == 0 and rows[-1]["faults/reward_restarts"] == 0
    return rows


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_rollout_workers_are_restarted_and_the_run_is_unchanged(reference, tmp_path, seed):
    with Saboteur(tmp_path / "run", "RolloutWorker", seed, times=2) as saboteur:
        _train(tmp_path / "run", "rollout.max_restarts=4")
    rows = _metrics(tmp_path / "run")
    assert saboteur.hits and rows[-1]["faults/rollout_restarts"] >= 1
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # no step lost or duplicated
    assert _stable(rows) == _stable(reference)  # every sample regenerated exactly: same seeds per chunk, same policy


def test_a_killed_reward_worker_is_restarted_and_its_samples_rescored(reference, tmp_path):
    with Saboteur(tmp_path / "run", "RewardWorker", seed=3, times=2) as saboteur:
        _train(tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert saboteur.hits and rows[-1]["faults/reward_restarts"] >= 1
    assert _stable(rows) == _stable(reference)


def test_a_frozen_rollout_worker_is_treated_as_dead_after_its_deadline(reference, tmp_path):
    with Saboteur(tmp_path / "run", "RolloutWorker.generate", seed=4, sig=signal.SIGSTOP, max_delay_s=0.0) as saboteur:
        _train(tmp_path / "run", "rollout.worker_deadline_s=5")
    rows = _metrics(tmp_path / "run")
    assert saboteur.hits and rows[-1]["faults/rollout_restarts"] == 1 and rows[-1]["faults/rollout_redone_groups"] >= 1
    assert _stable(rows) == _stable(reference)


def test_a_worker_that_stays_dead_stops_the_run_with_a_clear_message(ray_session, tiny_model_path, tmp_path):
    from actors.worker_pool import WorkerLost

    with Saboteur(tmp_path / "run", "RolloutWorker", seed=5, times=1):
        with pytest.raises(WorkerLost, match="did not come back"):
            _train(tmp_path / "run", "rollout.max_restarts=0", "trainer.steps=20")


def test_a_dead_learner_ends_the_run_cleanly_and_it_resumes_to_the_same_metrics(reference, tmp_path):
    from actors.group import LearnerDied

    saboteur = Saboteur(tmp_path / "run", "Learner", seed=6)
    saboteur.after_steps = [3]  # after the step-2 checkpoint
    with saboteur:
        with pytest.raises(LearnerDied, match=r"the latest checkpoint is .*step_00000[24].*resume=auto"):
            _train(tmp_path / "run")
    _train(tmp_path / "run", "run.resume=auto")
    assert _stable(_metrics(tmp_path / "run")) == _stable(reference)


@pytest.fixture(scope="module")
def async_reference(ray_session, tiny_model_path, tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("faults") / "async_reference"
    _train(run_dir, "rollout.async=true")
    return _metrics(run_dir)


@pytest.mark.parametrize("seed, mode", [(7, "sync"), (9, "async")])
def test_a_driver_killed_at_a_random_step_resumes_to_the_same_metrics(request, tmp_path, seed, mode):
    """An async checkpoint holds the batch the next step already generated, so its resume is exact too."""
    reference = request.getfixturevalue("reference" if mode == "sync" else "async_reference")
    extra = ["rollout.async=true"] if mode == "async" else []
    kill_after = random.Random(seed).randint(2, 4)  # logged steps; the checkpoint is at step 2 or 4
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "configs/debug_cpu.yaml", *COMMON, *extra,
                             f"run.dir={run_dir}"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert len(_metrics(run_dir)) >= kill_after
    _train(run_dir, "run.resume=auto", *extra)
    assert _stable(_metrics(run_dir)) == _stable(reference)
