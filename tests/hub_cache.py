"""Hugging Face caches built in code, in the layouts the libraries read offline, so tests run the real
resolution of Hub ids (tests/conftest.py points HF_HOME at a fresh directory and sets offline mode).

- models: HF_HOME/hub/models--org--name/{refs/<ref> = commit hash, snapshots/<hash>/<file> -> blobs/}
- datasets: offline, `datasets` never reads the Hub file cache; `load_dataset("org/name", config)`
  opens the prepared Arrow cache HF_HOME/datasets/org___name/<config>/..., which is built here the
  way an online load builds it: the repo's parquet files prepared by the same parquet builder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

HUB_CACHE = Path(os.environ["HF_HOME"]) / "hub"
DATASETS_CACHE = Path(os.environ["HF_HOME"]) / "datasets"


def commit(name: str) -> str:
    """A stable 40-hex commit hash for a ref name."""
    return hashlib.sha1(name.encode()).hexdigest()


def cache_model(repo_id: str, model_dir: str, refs: dict[str, str] | None = None, hub_cache: Path = HUB_CACHE) -> Path:
    """Put a model directory into the Hub cache as a download leaves it (refs default to main only).
    Returns the repo's cache folder."""
    refs = refs or {"main": commit("main")}
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for ref, sha in refs.items():
        (repo / "refs" / ref).write_text(sha)  # no newline: the file's whole text is the hash
    for sha in set(refs.values()):
        snapshot = repo / "snapshots" / sha
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in Path(model_dir).iterdir():
            blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copyfile(file, blob)
            if not (snapshot / file.name).exists():
                (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return repo


def cache_dataset(repo_id: str, configs: dict[str, dict[str, dict[str, list]]], workdir: Path,
                  datasets_cache: Path = DATASETS_CACHE) -> None:
    """Cache Hub dataset `repo_id` for offline loads: configs -> splits -> columns (parquet per split)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase as snake

    repo = workdir / repo_id.split("/")[-1]
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        (repo / config).mkdir(parents=True, exist_ok=True)
        for split, columns in splits.items():
            datasets.Dataset.from_dict(columns).to_parquet(str(repo / config / f"{split}-00000-of-00001.parquet"))
            card.append(f"  - {{split: {split}, path: {config}/{split}-*}}")
    (repo / "README.md").write_text("\n".join([*card, "---", ""]))
    built = workdir / "prepared"
    for config in configs:
        datasets.load_dataset_builder(str(repo), config, cache_dir=str(built)).download_and_prepare()
    namespace, name = repo_id.split("/")
    target = datasets_cache / f"{namespace}___{snake(name)}"  # where a load of the Hub id puts it
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built / snake(repo.name)), target)
