"""`rlpost submit`: send a training run to a Ray cluster as a Ray job, stream its logs, wait for it.

The job's working directory is this checkout (without virtual environments, runs and VCS data);
its driver joins the cluster that runs it (RAY_ADDRESS is set by Ray) instead of starting a Ray.
"""
from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path

from pipeline.config import load_config

EXCLUDES = [".venv", "venv", "runs", "wandb", ".git", "__pycache__", "*.egg-info", ".whl"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submit(config: str, overrides: list[str], address: str, wait: bool = True) -> str:
    """Submit `rlpost train CONFIG overrides` as a Ray job; returns its final (or current) status."""
    from ray.job_submission import JobSubmissionClient

    cfg = load_config(config, overrides)  # a bad config fails here, before anything is sent
    run_dir = Path(cfg.run.dir).expanduser().resolve()  # the job runs in a copy of the checkout elsewhere
    args = [*[o for o in overrides if not o.startswith("run.dir=")], f"run.dir={run_dir}"]
    entrypoint = shlex.join(["python", "-m", "pipeline", "train", config, *args])
    client = JobSubmissionClient(address)
    job_id = submit_when_ready(client, entrypoint=entrypoint, runtime_env={"working_dir": ".", "excludes": EXCLUDES})
    print(f"submitted {job_id} to {address}: {entrypoint}\nrun directory: {run_dir}", flush=True)
    if not wait:
        return str(client.get_job_status(job_id))
    asyncio.run(_stream_logs(client, job_id))
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(1)
    print(f"job {job_id}: {status}", flush=True)
    return status


def submit_when_ready(client, timeout_s: float = 120.0, **job) -> str:
    """submit_job, retried while the head's job agent is still starting (a head just started answers
    'No available agent to submit job' for a while)."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > give_up:
                raise
            time.sleep(1.0)


async def _stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()
