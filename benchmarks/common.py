"""What every benchmark script shares: the machine line, the CLI skeleton, result files, tables,
timing and a throw-away training run.

Scripts run as `python benchmarks/X.py` from the repository root; each puts the root on sys.path
and imports this module as `benchmarks.common`. Nothing here imports torch or Ray at import time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Overrides every benchmark run takes: no W&B, no checkpoints, no evaluation unless asked.
QUIET = ("tracking.wandb=disabled", "run.checkpoint_every=0")
NO_EVAL = ("eval.before=false", "eval.after=false")


def machine() -> str:
    """One line naming the machine: architecture, CPU model, cores, GPUs, Python."""
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {_gpus()}, Python {platform.python_version()}"


def _gpus() -> str:
    if not shutil.which("nvidia-smi"):
        return "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "no GPU"
    names = Counter(line.strip() for line in out.splitlines() if line.strip())
    return ", ".join(f"{count}× {name}" for name, count in names.items()) or "no GPU"


def parser(doc: str, *, out: str | None = None, config: bool = False, overrides: bool = False,
           new_tokens: int | None = None) -> argparse.ArgumentParser:
    """The script's docstring as help; `config` adds the positional CONFIG and section.key=value
    overrides, `overrides` only the latter; `out` adds --out defaulting to benchmarks/results/<out>;
    `new_tokens` adds the generation options --prompts, --n, --repeats and --new-tokens (its default)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        p.add_argument("config")
    if config or overrides:
        p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    if out:
        p.add_argument("--out", default=os.path.relpath(RESULTS / out), help="result JSON (default: %(default)s)")
    if new_tokens is not None:
        p.add_argument("--prompts", type=int, default=64)
        p.add_argument("--n", type=int, default=8, help="samples per prompt")
        p.add_argument("--new-tokens", type=int, default=new_tokens)
        p.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    return p


def write_result(path: str | Path, payload: dict[str, Any], indent: int = 2) -> Path:
    """Write `payload` as JSON (with a "machine" line unless it has one) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=indent) + "\n")
    print(f"wrote {path}")
    return path


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]], formats: Sequence[str] = ()) -> None:
    """Columns as wide as their widest cell; a column of numbers right-aligned, others left;
    `formats` are format specs per column ("" or missing = str())."""
    rows = [list(row) for row in rows]
    numeric = [i > 0 and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows)
               for i in range(len(header))]
    cells = [[format(v, formats[i] if i < len(formats) else "") for i, v in enumerate(row)] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    for row in [list(map(str, header)), *cells]:
        print("  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def timed(fn: Callable[[], Any], repeats: int, *, warmup: bool = True,
          sync: Callable[[], None] | None = None) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls (after one untimed call if `warmup`) and the last output;
    `sync` runs before and after each call (e.g. torch.cuda.synchronize)."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times, out


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def train_run(config: str | Path, overrides: Sequence[str], prefix: str = "rlpost-bench-") -> tuple[dict, Path]:
    """Train in a fresh temporary run directory with QUIET (then `overrides`, which win);
    returns train()'s results and the run directory (metrics.jsonl, eval.jsonl)."""
    from pipeline.config import load_config
    from pipeline.train import train

    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    return train(load_config(config, [*QUIET, *overrides, f"run.dir={run_dir}"])), run_dir
