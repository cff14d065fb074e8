"""Checkpoints: written atomically (built in a temporary directory, then renamed), rotated, resumed.

A checkpoint holds the learner's adapter, optimizer, scheduler and RNG states, and the driver's
state (step, curriculum sampler, reward curve, W&B run id), plus the config it was written under.
The run directory must be visible to the learner (the same machine, or shared storage).
"""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipeline.config import Config
from pipeline.errors import RlpostError

# Changing any of these makes a checkpoint's adapter or data cursor meaningless.
# what a resumed run must share with its checkpoint: the weights' shape and meaning, and the prompts (as sampled and as shown)
COMPATIBILITY_KEYS = ("model.path", "model.revision", "model.tiny", "model.dtype", "lora", "data.sources", "data.files",
                      "data.dataset", "data.dataset_config", "data.train_split", "data.prompt_key", "data.answer_key",
                      "data.source_key", "data.prompt_template", "data.system_prompt", "data.answer_format",
                      "data.chat_template", "curriculum.name", "trainer.fsdp")


class CheckpointError(RlpostError):
    pass


@dataclass
class DriverState:
    """What the driver itself must restore to continue a run exactly (the learner saves its own part)."""

    step: int = 0
    sampler: dict[str, Any] = field(default_factory=dict)  # the curriculum's state_dict
    reward_curve: list[float] = field(default_factory=list)
    before: dict[str, dict[str, float]] = field(default_factory=dict)  # the evaluation before training
    wandb_id: str | None = None
    prefetched: Any = None  # rollout.async: the batch the next step had already generated (a StepBatch)


class LearnerCheckpoints(Protocol):
    def save(self, directory: str) -> None: ...
    def load(self, directory: str) -> None: ...


def save_checkpoint(run_dir: Path, learners: LearnerCheckpoints, state: DriverState, cfg: Config, keep_last: int) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, staging = root / f"step_{state.step:06d}", root / f".tmp_step_{state.step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    learners.save(str(staging))
    (staging / "driver_state.pkl").write_bytes(pickle.dumps(state))
    (staging / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    (staging / "meta.json").write_text(json.dumps({"step": state.step}))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # atomic: a crash before this line leaves the previous checkpoint as the latest
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old)
    return final


def find_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint run.resume names, decided before Ray starts: none without run.resume; with `auto`,
    run_dir's latest, or none on a first launch (a job a scheduler may restart is launched with `auto`
    every time: the first launch starts from scratch and says so); a given path must be a checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        latest = latest_checkpoint(run_dir)
        if latest is None:
            print(f"[rlpost] run.resume=auto: no checkpoint under {run_dir / 'checkpoints'} yet; starting from scratch",
                  flush=True)
        return latest
    path = Path(resume)
    missing = [name for name in ("meta.json", "config.yaml", "driver_state.pkl") if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"run.resume={resume!r} is not a checkpoint directory (no {', '.join(missing)})")
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """run_dir's latest complete checkpoint. One still being written is a hidden .tmp_ directory; one
    without meta.json or config.yaml (a partial copy or sync of the run directory) is passed over, saying so."""
    for path in sorted((run_dir / "checkpoints").glob("step_*"), reverse=True):
        if all((path / name).exists() for name in ("meta.json", "config.yaml", "driver_state.pkl")):
            return path
        print(f"[rlpost] skipping incomplete checkpoint {path}", flush=True)
    return None


def check_compatible(path: Path, cfg: Config) -> None:
    """Refuse (before Ray starts) a checkpoint written under a config this run cannot continue."""
    saved = yaml.safe_load((path / "config.yaml").read_text())
    current = cfg.model_dump()
    different = [key for key in COMPATIBILITY_KEYS if _lookup(saved, key) != _lookup(current, key)]
    if different:
        details = "; ".join(f"{k}: checkpoint {_lookup(saved, k)!r}, now {_lookup(current, k)!r}" for k in different)
        raise CheckpointError(f"checkpoint {path} was written under an incompatible config ({details})")


def load_checkpoint(path: Path, learners: LearnerCheckpoints) -> DriverState:
    """Restore every learner rank from `path` (checked by check_compatible); return the driver state."""
    learners.load(str(path))
    state = pickle.loads((path / "driver_state.pkl").read_bytes())
    return DriverState(**state) if isinstance(state, dict) else state  # checkpoints written before DriverState held a dict


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else None
    return tree
