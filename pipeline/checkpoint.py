"""Checkpoints written atomically: build in a temporary directory, then rename into place.

The run directory must be visible to the learner (the same machine, or shared storage on a cluster).
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import ray


def save_checkpoint(run_dir: Path, step: int, learner: Any, driver_state: dict[str, Any], keep_last: int = 2) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    staging = root / f".tmp_step_{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    ray.get(learner.save.remote(str(staging)))
    (staging / "driver_state.pkl").write_bytes(pickle.dumps(driver_state))
    (staging / "meta.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old)
    return final
