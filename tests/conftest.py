import os

import pytest

os.environ.setdefault("WANDB_SILENT", "true")


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
