"""Run untrusted completion code against test cases in a separate, limited process.

Layers (each catches what the others might miss):
- a fresh process (`python -I`: no user site, no PYTHON* variables) with an empty environment,
  so tokens such as WANDB_API_KEY are not visible, started in its own session (killed as a group);
- an empty temporary working directory, removed afterwards;
- resource limits: CPU seconds, address space, file size, open files; a wall-clock timeout;
- a private network namespace when the scorer runs as root (`unshare -n`: no usable interface);
- a Python audit hook installed before the code runs: no sockets, no new processes, no signals,
  no ctypes, and no file access outside the sandbox directory and the Python installation.
It contains mistakes and mischief in model-written code; it is not a boundary against a
determined attacker with kernel exploits (run the reward workers in a container for that).
"""
from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# As root, `unshare -n` gives the child a network namespace of its own: nothing to connect to.
_NETWORK_ISOLATION = ["unshare", "-n"] if os.geteuid() == 0 and shutil.which("unshare") else []
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    file_size_mb: int = 8
    open_files: int = 64


@dataclass(frozen=True)
class RunResult:
    passed: int
    total: int
    status: str  # "ok", "timeout", "crashed", "no_result"


def extract_code(completion: str) -> str:
    """The last fenced Python block, or the whole completion when there is none."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def run_tests(code: str, tests: list[str], limits: Limits = Limits()) -> RunResult:
    """Execute `code`, then each test (an assert statement or snippet); count the tests that pass."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="rlpost-sandbox-") as workdir:
        payload = json.dumps({"code": code, "tests": tests, "nonce": nonce, "root": os.path.realpath(workdir),
                              "allowed": _python_dirs()})
        output_path = os.path.join(workdir, ".stdout")  # a file, not a pipe: its size is capped by RLIMIT_FSIZE
        with open(output_path, "wb") as output:
            proc = subprocess.Popen(
                [*_NETWORK_ISOLATION, sys.executable, "-I", "-c", _HARNESS], stdin=subprocess.PIPE, stdout=output,
                stderr=subprocess.DEVNULL, cwd=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        try:
            _limit(proc.pid, limits)  # the harness runs no completion code before its input arrives
            proc.communicate(payload.encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            return RunResult(0, len(tests), "timeout")
        finally:
            _kill_session(proc.pid)
        tail = _tail(output_path)
    for line in reversed(tail.splitlines()):
        if line.startswith(nonce + " "):
            return RunResult(min(int(line.split()[1]), len(tests)), len(tests), "ok")
    return RunResult(0, len(tests), "crashed" if proc.returncode else "no_result")


def _tail(path: str, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode(errors="replace")


def code_tests(completions: list[str], tests: list, mode: str = "fraction", timeout_s: float = 5.0,
               memory_mb: int = 512, **_: list) -> list[float]:
    """Reward: the fraction of the row's tests that pass (mode=fraction) or 1.0 only if all pass (mode=all)."""
    if mode not in ("fraction", "all"):
        raise ValueError(f"code_tests mode must be 'fraction' or 'all', got {mode!r}")
    limits = Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb)

    def score(completion: str, row_tests) -> float:
        result = run_tests(extract_code(completion), [row_tests] if isinstance(row_tests, str) else list(row_tests), limits)
        fraction = result.passed / max(1, result.total)
        return fraction if mode == "fraction" else float(fraction == 1.0)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # the children run in parallel
        return list(pool.map(score, completions, tests))


def _python_dirs() -> list[str]:
    """Where the interpreter may read from: its own installation (the standard library)."""
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix)})


def _limit(pid: int, limits: Limits) -> None:
    mb = 1024 * 1024
    for kind, value in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_AS, limits.memory_mb * mb),
                        (resource.RLIMIT_FSIZE, limits.file_size_mb * mb), (resource.RLIMIT_NOFILE, limits.open_files),
                        (resource.RLIMIT_CORE, 0)):
        resource.prlimit(pid, kind, (value, value))


def _kill_session(pid: int) -> None:
    """End the child and anything left in its process group (it leads its own session)."""
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# The harness runs in the child: read the payload, lock the process down, run code and tests.
_HARNESS = r"""
import json, os, sys

def main():
    payload = json.loads(sys.stdin.read())
    root, allowed, nonce = payload.pop("root"), tuple(payload.pop("allowed")), payload.pop("nonce")
    write, out = os.write, sys.__stdout__.fileno()
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, places):
        if isinstance(path, int):
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return any(real == p or real.startswith(p.rstrip("/") + "/") for p in places)

    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.", "os.putenv", "os.unsetenv",
               "sys._getframe", "sys._current_frames", "gc.", "sys.setprofile", "sys.settrace", "os.setsid")
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "os.chdir"}

    def guard(event, args):
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & writing_flags)
            if not inside(path, (root,) if writing else (root,) + allowed):
                raise PermissionError(f"sandbox: no access to {path}")
        elif event in path_events and args and not inside(args[0], (root,)):
            raise PermissionError(f"sandbox: {event} outside the sandbox")
        elif event in ("os.listdir", "os.scandir") and args and not inside(args[0] or ".", (root,) + allowed):
            raise PermissionError(f"sandbox: {event} outside the sandbox")

    sys.addaudithook(guard)
    namespace = {"__name__": "__solution__"}
    passed = 0
    try:
        exec(compile(payload["code"], "<completion>", "exec"), namespace)
        for test in payload["tests"]:
            try:
                exec(compile(test, "<test>", "exec"), namespace)
                passed += 1
            except BaseException:
                pass
    except BaseException:
        pass
    write(out, ("\n%s %d\n" % (nonce, passed)).encode())

main()
"""
