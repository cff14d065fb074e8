import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
# The suite runs offline against a Hugging Face home of its own, set before huggingface_hub or datasets
# is imported and so inherited by every Ray worker the session starts: a Hub id resolves only from the
# caches tests build there (tests/hub_cache.py), never from the network or the machine's own cache.
HF_HOME = tempfile.mkdtemp(prefix="rlpost-test-hf-home-")
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)
os.environ.update(HF_HOME=HF_HOME, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
os.environ.pop("HF_DATASETS_CACHE", None)
os.environ.pop("HF_HUB_CACHE", None)


def pytest_collection_modifyitems(config, items):
    """GPU-tier tests skip cleanly on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The built-in tiny model, built once (or reused from the cache) with the real builder."""
    from pipeline.config import TinyModelConfig
    from pipeline.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model(TinyModelConfig()))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs seconds), with two fake GPUs for placement tests."""
    import ray

    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield
    ray.shutdown()
