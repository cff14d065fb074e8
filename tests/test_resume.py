"""Which checkpoint run.resume names, decided before Ray starts: `auto` on a first launch (a job a
scheduler may restart) starts from scratch and says so; a given path that is no checkpoint stops the run."""
import json

import pytest

from pipeline.checkpoint import CheckpointError, find_checkpoint
from pipeline.config import load_config


def _checkpoint(run_dir, step: int, complete: bool = True):
    path = run_dir / "checkpoints" / (f"step_{step:06d}" if complete else f".tmp_step_{step:06d}")
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"step": step}))
    (path / "config.yaml").write_text("{}")
    (path / "driver_state.pkl").write_bytes(b"")
    return path


def test_no_resume_starts_fresh_silently(tmp_path, capsys):
    _checkpoint(tmp_path, 2)
    assert find_checkpoint(tmp_path, None) is None
    assert capsys.readouterr().out == ""


def test_auto_on_a_first_launch_starts_from_scratch_and_says_so(tmp_path, capsys):
    _checkpoint(tmp_path, 4, complete=False)  # a checkpoint still being written when the job died does not count
    assert find_checkpoint(tmp_path, "auto") is None
    assert capsys.readouterr().out == f"[rlpost] run.resume=auto: no checkpoint under {tmp_path / 'checkpoints'} yet; starting from scratch\n"


def test_auto_takes_the_latest_complete_checkpoint(tmp_path, capsys):
    _checkpoint(tmp_path, 2)
    latest = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)
    assert find_checkpoint(tmp_path, "auto") == latest
    assert capsys.readouterr().out == ""


def test_a_given_checkpoint_path_must_be_a_checkpoint(tmp_path):
    given = _checkpoint(tmp_path / "other", 2)
    assert find_checkpoint(tmp_path, str(given)) == given
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        find_checkpoint(tmp_path, str(tmp_path / "missing"))


def test_a_missing_checkpoint_path_stops_the_run_before_ray_starts(tmp_path, monkeypatch):
    import pipeline.train

    def no_ray(cfg):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(pipeline.train, "init_ray", no_ray)
    cfg = load_config("configs/debug_cpu.yaml", [f"run.dir={tmp_path / 'run'}", f"run.resume={tmp_path / 'missing'}"])
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        pipeline.train.train(cfg)


def test_auto_passes_over_a_partly_copied_checkpoint_and_says_so(tmp_path, capsys):
    latest = _checkpoint(tmp_path, 2)
    partial = tmp_path / "checkpoints" / "step_000004"
    partial.mkdir()  # a run directory synced or copied while step 4 was being written
    assert find_checkpoint(tmp_path, "auto") == latest
    assert capsys.readouterr().out == f"[rlpost] skipping incomplete checkpoint {partial}\n"
    with pytest.raises(CheckpointError, match="is not a checkpoint directory \\(no meta.json, config.yaml, driver_state.pkl\\)"):
        find_checkpoint(tmp_path, str(partial))
