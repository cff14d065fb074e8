"""Checkpoints: written atomically (built in a temporary directory, then renamed), rotated, resumed.

A checkpoint holds the learner's adapter, optimizer, scheduler and RNG states, and the driver's
state (step, curriculum sampler, reward curve, W&B run id), plus the config it was written under.
The run directory must be visible to the learner (the same machine, or shared storage).
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import ray
import yaml

from pipeline.config import Config

# Changing any of these makes a checkpoint's adapter or data cursor meaningless.
COMPATIBILITY_KEYS = ("model.path", "model.tiny", "model.dtype", "lora", "data.sources", "data.files", "curriculum.name",
                      "trainer.fsdp")


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(run_dir: Path, step: int, learners: list[Any], driver_state: dict[str, Any], cfg: Config, keep_last: int) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, staging = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    ray.get([learner.save.remote(str(staging)) for learner in learners])  # rank 0 writes (the others help gather, under FSDP)
    (staging / "driver_state.pkl").write_bytes(pickle.dumps(driver_state))
    (staging / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    (staging / "meta.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # atomic: a crash before this line leaves the previous checkpoint as the latest
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old)
    return final


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """`auto`: the latest complete checkpoint of run_dir; otherwise the given checkpoint directory."""
    if resume != "auto":
        path = Path(resume)
        if not (path / "meta.json").exists():
            raise CheckpointError(f"run.resume={resume!r} is not a checkpoint directory (no meta.json)")
        return path
    found = sorted((run_dir / "checkpoints").glob("step_*"))
    if not found:
        raise CheckpointError(f"run.resume=auto: no checkpoint under {run_dir / 'checkpoints'}")
    return found[-1]


def load_checkpoint(path: Path, learners: list[Any], cfg: Config) -> dict[str, Any]:
    """Restore every learner rank from `path` (after checking the config is compatible); return the driver state."""
    saved = yaml.safe_load((path / "config.yaml").read_text())
    current = cfg.model_dump()
    different = [key for key in COMPATIBILITY_KEYS if _lookup(saved, key) != _lookup(current, key)]
    if different:
        details = "; ".join(f"{k}: checkpoint {_lookup(saved, k)!r}, now {_lookup(current, k)!r}" for k in different)
        raise CheckpointError(f"checkpoint {path} was written under an incompatible config ({details})")
    ray.get([learner.load.remote(str(path)) for learner in learners])
    return pickle.loads((path / "driver_state.pkl").read_bytes())


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else None
    return tree
