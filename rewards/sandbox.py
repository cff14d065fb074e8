"""The `code_tests` reward: run completion code against a row's tests in the sandbox.

Layers, strongest first: bubblewrap namespaces (`rewards/sandbox_isolation.py`), resource limits
and a wall-clock deadline enforced from outside (`rewards/sandbox_exec.py`), test formats whose
expected answers stay in the scorer (`rewards/sandbox_formats.py`), and an audit hook inside the
child as defence in depth only (`rewards/sandbox_harness.py`).
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards.sandbox_exec import Limits, execute
from rewards.sandbox_formats import executions
from rewards.sandbox_isolation import SandboxMode, isolation

_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class RunResult:
    passed: int
    total: int
    status: str  # "ok", or the first execution's "timeout" / "output_limit"


def extract_code(completion: str) -> str:
    """The last fenced Python block, or the whole completion when there is none."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def run_tests(code: str, tests: Any, limits: Limits = Limits(), sandbox: SandboxMode = "strict") -> RunResult:
    """Count the tests `code` passes; all its executions share the one `limits.timeout_s` budget."""
    bwrap = isolation(sandbox)
    deadline = time.monotonic() + limits.timeout_s
    passed, total, status = 0, 0, "ok"
    for run in executions(tests):
        total += run.tests
        if time.monotonic() >= deadline:
            status = "timeout" if status == "ok" else status
            continue
        outcome = execute({**run.job, "code": code}, run.stdin, limits, deadline, bwrap, run.respond)
        passed += run.judge(outcome)
        status = outcome.status if status == "ok" else status
    return RunResult(passed, total, status)


def code_tests(completions: list[str], tests: list, mode: str = "fraction", timeout_s: float = 5.0,
               memory_mb: int = 512, sandbox: SandboxMode = "strict", **_: list) -> list[float]:
    """Reward: the fraction of the row's tests that pass (mode=fraction) or 1.0 only if all pass (mode=all)."""
    if mode not in ("fraction", "all"):
        raise ValueError(f"code_tests mode must be 'fraction' or 'all', got {mode!r}")
    limits = Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb)

    def score(completion: str, row_tests: Any) -> float:
        result = run_tests(extract_code(completion), row_tests, limits, sandbox)
        fraction = result.passed / max(1, result.total)
        return fraction if mode == "fraction" else float(fraction == 1.0)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # the children run in parallel
        return list(pool.map(score, completions, tests))
