"""Run one sandboxed execution of the harness, bounded in time and output, and leave nothing behind.

The job and stdin go in as memfds (nothing on disk, no blocking writes); the output comes back
on a pipe this process owns, read without blocking until EOF, the size cap or the deadline.
Then the sandbox's pid namespace is killed and its end awaited, so no process survives.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rewards.sandbox_isolation import ENV, WORK_DIR, bwrap_command, interpreter, python_dirs, sandbox_user
from rewards.sandbox_seccomp import program

SECCOMP = program()  # installed by the harness before the code runs (rewards/sandbox_seccomp.py)

HARNESS = Path(__file__).with_name("sandbox_harness.py").read_text()
# Without bwrap, as root, `unshare -n` still gives the child a network namespace of its own.
_NO_NETWORK = ["unshare", "-n"] if os.geteuid() == 0 and os.path.exists("/usr/bin/unshare") else []


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock, for all of one sample's executions together
    cpu_s: int = 5
    memory_mb: int = 512
    file_size_mb: int = 8
    disk_mb: int = 16  # the private tmpfs (with bwrap)
    open_files: int = 64
    processes: int = 32
    output_kb: int = 1024


@dataclass(frozen=True)
class Outcome:
    output: bytes
    status: str  # "ok", "timeout" or "output_limit"
    returncode: int | None


def execute(job: dict, stdin: bytes, limits: Limits, deadline: float, bwrap: str | None,
            respond: Callable[[bytes], bytes | None] | None = None) -> Outcome:
    """Run the harness on `job` (mode, code, ...) with `stdin`; its output until `deadline` (monotonic).

    With `respond`, stdin is a pipe instead: each complete output line goes to `respond`, and what it
    returns is written to the harness's stdin (the statement handshake)."""
    with contextlib.ExitStack() as stack:
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        user = stack.enter_context(sandbox_user())
        if bwrap:
            info_read, info_write = os.pipe()
            stack.callback(os.close, info_read)
            prefix, cwd, root, fds = bwrap_command(bwrap, limits.disk_mb, info_write), None, WORK_DIR, [info_write]
        else:
            info_read, info_write = None, None
            cwd = root = os.path.realpath(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlpost-sandbox-")))
            prefix, fds = list(_NO_NETWORK), []
            if user is not None:
                os.chown(root, user, user)
                stack.callback(_reap, user)  # runs before the directory goes: nothing of this uid outlives the execution
        payload = {**job, "root": root, "readable": python_dirs(), "limits": asdict(limits), "user": user,
                   "seccomp": SECCOMP.hex()}
        job_fd = _memfd(json.dumps(payload).encode())
        if respond:
            stdin_fd, reply_fd = os.pipe()
            stack.callback(os.close, reply_fd)
        else:
            stdin_fd, reply_fd = _memfd(stdin), None
        try:
            proc = subprocess.Popen([*prefix, interpreter(), "-I", "-S", "-c", HARNESS, str(job_fd)], stdin=stdin_fd,
                                    stdout=write_end, stderr=subprocess.DEVNULL, pass_fds=(job_fd, *fds), cwd=cwd,
                                    env=ENV, start_new_session=True)
        finally:
            for fd in (write_end, job_fd, stdin_fd, *fds):
                os.close(fd)
        try:
            output, status = _read(read_end, deadline, limits.output_kb * 1024, respond, reply_fd)
            if status == "ok":
                proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            _end(proc, info_read)
        return Outcome(output, status, proc.returncode)


def _reap(uid: int) -> None:
    """Kill every process of `uid` (without bwrap there is no pid namespace to kill): kill(-1) run as that uid."""
    reaper = (f"import os\nos.setgroups([])\nos.setresgid({uid}, {uid}, {uid})\nos.setresuid({uid}, {uid}, {uid})\n"
              "try:\n    os.kill(-1, 9)\nexcept OSError:\n    pass")
    subprocess.run([interpreter(), "-I", "-S", "-c", reaper], env=ENV, cwd="/", stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("rlpost-sandbox")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(fd: int, deadline: float, cap: int, respond: Callable[[bytes], bytes | None] | None = None,
          reply_fd: int | None = None) -> tuple[bytes, str]:
    """Everything written to the pipe until EOF ("ok"), the deadline ("timeout") or past `cap` bytes; with
    `respond`, each complete line is answered on `reply_fd` (written without blocking)."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size, line, pending = [], 0, b"", b""
    while (left := deadline - time.monotonic()) > 0:
        for ready, _ in poller.poll(left * 1000):
            if ready == reply_fd:
                try:
                    pending = pending[os.write(reply_fd, pending):]
                except OSError:  # the harness closed its stdin or ended
                    pending = b""
                if not pending:
                    poller.unregister(reply_fd)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), "ok"
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                return b"".join(chunks)[:cap], "output_limit"
            if respond:
                *done, line = (line + chunk).split(b"\n")
                answer = b"".join(filter(None, map(respond, done)))
                if answer and not pending:
                    os.set_blocking(reply_fd, False)
                    poller.register(reply_fd, select.POLLOUT)
                pending += answer
    return b"".join(chunks), "timeout"


def _end(proc: subprocess.Popen, info_fd: int | None) -> None:
    """Kill the sandbox's pid 1 (the kernel then kills its whole namespace), await it, then the rest."""
    if info_fd is not None and proc.poll() is None:
        _kill_namespace(proc.pid, info_fd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _kill_namespace(bwrap_pid: int, info_fd: int) -> None:
    if not select.select([info_fd], [], [], 1.0)[0]:
        return
    with contextlib.suppress(ValueError, KeyError, OSError):
        pid = json.loads(os.read(info_fd, 4096))["child-pid"]
        pidfd = os.pidfd_open(pid)
        try:
            if _parent(pid) == bwrap_pid:  # the pidfd now pins the right process, not a reused pid
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], 5.0)  # readable once it has exited: its namespace is empty
        finally:
            os.close(pidfd)


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
