"""Turn a run into artefacts: the merged full model, and the base model + adapter a run used."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.config import Config, load_config
from pipeline.errors import RlpostError
from pipeline.hub import resolve_model
from pipeline.tiny_model import ensure_tiny_model


class TargetNotFound(RlpostError, FileNotFoundError):
    """The path given to `rlpost eval` / `rlpost export` is not what the command needs."""


def run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise TargetNotFound(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(path, list(overrides))


def base_model_path(cfg: Config) -> str:
    """model.path (a local directory or a Hub id, resolved where it is loaded), else the tiny model's directory."""
    return cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))


def resolve_target(target: Path, config: str | None, overrides: list[str]) -> tuple[Config, str, Path | None]:
    """(config, base model path or Hub id, adapter dir or None) for a run directory, an adapter, or a full model."""
    target = Path(target)
    if (target / "config.yaml").exists():
        cfg = run_config(target, overrides)
        return cfg, base_model_path(cfg), target / "final_adapter"
    if (target / "adapter_config.json").exists():
        adapter = json.loads((target / "adapter_config.json").read_text())
        shape = [f"lora.rank={adapter['r']}", f"lora.alpha={adapter['lora_alpha']}",
                 f"lora.target_modules={sorted(adapter['target_modules'])}"]  # the workers' LoRA must match the file's
        cfg = load_config(config or "configs/debug_cpu.yaml", [*shape, *overrides])
        return cfg, cfg.model.path or adapter["base_model_name_or_path"], target
    cfg = load_config(config or "configs/debug_cpu.yaml", overrides)
    if (target / "config.json").exists():
        return cfg, str(target), None
    raise TargetNotFound(f"{target} is neither a run directory, a peft adapter, nor a Hugging Face model")


def export_merged(run_dir: Path, out: Path) -> Path:
    """Base model + the run's final adapter, merged into one model that AutoModelForCausalLM loads."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = run_config(run_dir)
    base_path = resolve_model(base_model_path(cfg), cfg.model.revision)
    adapter = Path(run_dir) / "final_adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter))
    merged = model.merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else base_path).save_pretrained(out)
    (out / "rlpost_export.yaml").write_text(yaml.safe_dump({"run_dir": str(run_dir), "base_model": base_path}))
    return out
