"""model.path as a Hugging Face Hub id, resolved offline from a Hub cache built here in the layout
huggingface_hub reads (HF_HOME/hub/models--org--name/{refs,snapshots,blobs}): by id and revision, the
one error naming what to fetch, a run that stops on it before Ray starts, and two-step runs whose
driver and actors (started by a fresh local Ray, which inherits the environment) all load the id,
then exported from it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.export import export_merged
from pipeline.hub import ModelNotAvailable, resolve_model
from tests.real_models import real_model  # noqa: F401  (the session fixture)
from tests.hub_cache import cache_model, commit
from tests.test_e2e_real_models import RUN

ROOT = Path(__file__).resolve().parent.parent
REPO = "org/name"
MAIN, V1 = commit("main"), commit("v1")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache under an offline HF_HOME. Processes started from here read both variables;
    this one read them when huggingface_hub was imported, so its settings are set too."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


@pytest.fixture
def hub(hub_cache, tmp_path) -> Path:
    """org/name cached at main and at tag v1: a model directory's files, enough to resolve (not to load)."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (files / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    return cache_model(REPO, str(files), {"main": MAIN, "v1": V1}, hub_cache)


def test_a_hub_id_resolves_to_its_cached_snapshot_directory(hub):
    path = resolve_model(REPO, None)
    assert path == str(hub / "snapshots" / MAIN)
    assert json.loads((Path(path) / "generation_config.json").read_text()) == {"eos_token_id": [1, 2]}  # through the link


@pytest.mark.parametrize("revision, commit", [("main", MAIN), ("v1", V1), (V1, V1), (MAIN, MAIN)])
def test_a_revision_is_a_ref_name_or_a_commit_hash(hub, revision, commit):
    assert resolve_model(REPO, revision) == str(hub / "snapshots" / commit)


@pytest.mark.parametrize("repo_id, revision", [("org/missing", None), (REPO, "v2")])
def test_a_model_not_cached_offline_names_the_id_revision_and_how_to_fetch_it(hub, repo_id, revision):
    shown = revision or "main"
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model(repo_id, revision)
    message = str(err.value)
    assert f"Hub model {repo_id!r} at revision {shown!r} is not in the Hugging Face cache" in message
    assert "(HF_HUB_OFFLINE is set)" in message
    assert f"`hf download {repo_id} --revision {shown}`, HF_HOME pointing at storage" in message
    assert "\n" not in message


def test_an_unreachable_hub_is_named_as_the_reason(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelNotAvailable, match=r"'org/missing' at revision 'main' is not in .* \(the Hub cannot be reached\): fetch"):
        resolve_model("org/missing", None)


@pytest.mark.parametrize("path", ["/no/such/model", "./models/missing", "~/missing/model"])
def test_a_missing_local_path_that_is_no_hub_id_says_so(hub, path):
    with pytest.raises(ModelNotAvailable, match="is neither an existing local directory nor a Hugging Face Hub id"):
        resolve_model(path, None)


def test_a_local_directory_passes_through_and_takes_no_revision(hub, tmp_path):
    assert resolve_model(str(tmp_path / "files"), None) == str(tmp_path / "files")
    with pytest.raises(ModelNotAvailable, match="model.revision='v1' needs a Hub id"):
        resolve_model(str(tmp_path / "files"), "v1")


def test_the_driver_pins_the_commit_every_actor_loads(hub, tmp_path):
    from pipeline.config import load_config
    from pipeline.train import resolve_inputs

    cfg = load_config("configs/debug_cpu.yaml", [f"model.path={REPO}", "model.revision=v1", f"run.dir={tmp_path}"])
    assert resolve_inputs(cfg)[:2] == (REPO, str(hub / "snapshots" / V1))
    assert cfg.model.revision == V1  # the actors resolve this commit, even if the tag moves meanwhile
    local = load_config("configs/debug_cpu.yaml", [f"model.path={tmp_path / 'files'}", f"run.dir={tmp_path}"])
    assert resolve_inputs(local)[1] == str(tmp_path / "files") and local.model.revision is None


def test_rlpost_train_stops_on_an_uncached_hub_model_before_ray_starts(hub, monkeypatch, capsys, tmp_path):
    import pipeline.train
    from pipeline.cli import main

    monkeypatch.setattr(pipeline.train, "init_ray", lambda cfg: pytest.fail("Ray started"))
    code = main(["train", "configs/debug_cpu.yaml", "model.path=org/missing", "model.revision=v2",
                 f"run.dir={tmp_path / 'run'}", "tracking.wandb=disabled"])
    err = capsys.readouterr().err
    assert code == ModelNotAvailable.exit_code
    assert err.startswith("rlpost: ModelNotAvailable: model.path='org/missing' is no local directory here, and Hub model "
                          "'org/missing' at revision 'v2' is not in") and err.count("\n") == 1


@pytest.mark.slow
def test_two_training_steps_from_a_hub_id_offline(hub_cache, real_model, tmp_path):  # noqa: F811
    """`rlpost train` in a fresh process: its local Ray's actors inherit HF_HOME and HF_HUB_OFFLINE. (The
    vLLM engine loads Hub ids in tests/test_recipes.py.)"""
    repo = cache_model(REPO, real_model("qwen"), {"main": MAIN, "v1": V1}, hub_cache)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}  # its own local Ray
    subprocess.run([sys.executable, "-m", "pipeline", "train", "configs/debug_cpu.yaml", *RUN, f"model.path={REPO}",
                    "model.revision=v1", "rollout.backend=hf", f"run.dir={run_dir}"], cwd=ROOT, env=env, check=True,
                   timeout=600)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    snapshot = str(repo / "snapshots" / V1)
    adapter = json.loads((run_dir / "final_adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == snapshot  # the learner loaded the tag's snapshot
    merged = export_merged(run_dir, tmp_path / "merged")  # `rlpost export` resolves the run's Hub id too
    assert yaml.safe_load((merged / "rlpost_export.yaml").read_text())["base_model"] == snapshot
