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
from dataclasses import asdict, dataclass
from pathlib import Path

from rewards.sandbox_isolation import ENV, WORK_DIR, bwrap_command, drop_to, interpreter, python_dirs

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


def execute(job: dict, stdin: bytes, limits: Limits, deadline: float, bwrap: str | None) -> Outcome:
    """Run the harness on `job` (mode, code, ...) with `stdin`; its output until `deadline` (monotonic)."""
    with contextlib.ExitStack() as stack:
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        if bwrap:
            info_read, info_write = os.pipe()
            stack.callback(os.close, info_read)
            prefix, cwd, root, fds = bwrap_command(bwrap, limits.disk_mb, info_write), None, WORK_DIR, [info_write]
            user = drop_to()
        else:
            info_read, info_write = None, None
            cwd = root = os.path.realpath(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlpost-sandbox-")))
            prefix, fds, user = list(_NO_NETWORK), [], None
        payload = {**job, "root": root, "readable": python_dirs(), "limits": asdict(limits), "user": user}
        job_fd, stdin_fd = _memfd(json.dumps(payload).encode()), _memfd(stdin)
        try:
            proc = subprocess.Popen([*prefix, interpreter(), "-I", "-S", "-c", HARNESS, str(job_fd)], stdin=stdin_fd,
                                    stdout=write_end, stderr=subprocess.DEVNULL, pass_fds=(job_fd, *fds), cwd=cwd,
                                    env=ENV, start_new_session=True)
        finally:
            for fd in (write_end, job_fd, stdin_fd, *fds):
                os.close(fd)
        try:
            output, status = _read(read_end, deadline, limits.output_kb * 1024)
            if status == "ok":
                proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            _end(proc, info_read)
        return Outcome(output, status, proc.returncode)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("rlpost-sandbox")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(fd: int, deadline: float, cap: int) -> tuple[bytes, str]:
    """Everything written to the pipe until EOF ("ok"), the deadline ("timeout") or past `cap` bytes."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size = [], 0
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), "ok"
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], "output_limit"
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
