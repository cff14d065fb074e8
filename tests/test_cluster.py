"""Jobs submitted to a live Ray head (started and stopped here), the way users run on a cluster."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JOB = ["trainer.steps=3", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.cpus_per_worker=0.5",
       "eval.before=false", "eval.prompts_per_source=4", "eval.n_samples=2", "eval.k=[1,2]",
       "tracking.wandb=disabled", "run.checkpoint_every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tiny_model_path):
    """A Ray head with its dashboard (the job API), in its own process group so that it is ended exactly."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    dashboard = _free_port()
    # every port chosen free: the suite's own local Ray (started earlier in this process) holds the defaults
    ports = [f"--{name}={_free_port()}" for name in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")]
    head = subprocess.Popen([f"{bin_dir}/ray", "start", "--head", *ports, "--num-cpus=4",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Ray head did not come up")
        _wait_for_the_job_agent(address, env)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def _wait_for_the_job_agent(address: str, env: dict) -> None:
    """The dashboard answers before the head's job agent does: wait until a trivial job goes through
    (from a subprocess with the head's environment, as the tests submit)."""
    deadline = time.time() + 180
    while time.time() < deadline:
        done = subprocess.run([f"{Path(sys.executable).parent}/ray", "job", "submit", "--address", address, "--", "true"],
                              env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"the Ray head's job agent did not come up: {done.stderr[-2000:]}")


def _check_run_dir(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step_000002" / "adapter").exists()
    assert (run_dir / "final_adapter" / "adapter_model.safetensors").exists()


def test_ray_job_submit_joins_the_running_cluster(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "job"
    result = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "runs", "wandb"]}), "--",
         "python", "-m", "pipeline", "train", "configs/debug_cpu.yaml", *JOB, f"run.dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output and "step    3" in output  # the logs were streamed
    assert "Started a local Ray instance" not in output  # it joined the head instead
    _check_run_dir(run_dir)


def test_rlpost_submit_wraps_it(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "wrapped"
    result = subprocess.run([sys.executable, "-m", "pipeline", "submit", "configs/debug_cpu.yaml", *JOB, f"run.dir={run_dir}",
                             "--address", address], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "SUCCEEDED" in result.stdout
    _check_run_dir(run_dir)
