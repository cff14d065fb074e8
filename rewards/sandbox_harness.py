"""What runs inside the sandbox: read the job, limit the process, run the completion's code.

Run as `python -I -S -c <this source> JOB_FD`; it imports nothing from rlpost. It holds no
secret and no expected answer: stdin/stdout programs print to the parent's pipe, probes (calls
and assert operands) write one `repr` line each, which the parent parses and compares. Only
`statement` jobs (assert tests of other shapes) decide pass/fail in here, which is why they
are the weaker format. The audit hook is defence in depth; the OS sandbox is the barrier.
"""
import json
import os
import resource
import sys


def main() -> None:
    job_fd = int(sys.argv[1])
    with os.fdopen(job_fd, "rb") as job_file:
        job = json.loads(job_file.read())
    if job["user"] is not None:  # started as root (no user namespace): become nobody, which drops all capabilities
        os.setgroups([])
        os.setresgid(job["user"], job["user"], job["user"])
        os.setresuid(job["user"], job["user"], job["user"])
    _limit(job["limits"])
    results = os.dup(1)
    if job["mode"] != "stdio":  # the program's own prints must not mix with the results
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.addaudithook(_guard(job["root"], tuple(job["readable"])))
    namespace = {"__name__": "__main__"}
    status = 1
    try:
        exec(compile(job["code"], "<completion>", "exec"), namespace)
        if job["mode"] == "probes":
            for probe in job["probes"]:
                os.write(results, (_probe(namespace, probe) + "\n").encode())
        elif job["mode"] == "statement":
            exec(compile(job["statement"], "<test>", "exec"), namespace)
            os.write(results, b"True\n")
        status = 0
    except BaseException:
        pass
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os._exit(status)


def _probe(namespace: dict, probe: dict) -> str:
    """repr of the value (the parent parses it with ast.literal_eval); empty when it raised."""
    try:
        if "expr" in probe:
            return repr(eval(compile(probe["expr"], "<test>", "eval"), namespace))
        name = probe["call"]
        fn = namespace[name] if name in namespace else getattr(namespace["Solution"](), name)
        return repr(fn(*probe["args"]))
    except Exception:
        return ""


def _limit(limits: dict) -> None:
    mb = 1024 * 1024
    for kind, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb), (resource.RLIMIT_NOFILE, limits["open_files"]),
                        (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))


def _guard(root: str, readable: tuple):
    """An audit hook refusing sockets, processes, signals, ctypes and writes outside `root`."""
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "os.kill", "os.killpg", "signal.", "ctypes.", "sys._getframe", "sys._current_frames", "gc.",
               "sys.setprofile", "sys.settrace", "os.setsid", "sqlite3.", "os.putenv", "os.unsetenv")
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
                   "os.truncate", "os.utime", "shutil.rmtree"}
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, places) -> bool:
        if isinstance(path, int):
            return True
        real = os.path.realpath(os.fsdecode(path))
        return any(real == p or real.startswith(p.rstrip("/") + "/") for p in places)

    def guard(event: str, args: tuple) -> None:
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & writing)
            if not inside(path, (root,) if writes else (root, *readable)):
                raise PermissionError(f"sandbox: no access to {path}")
        elif event in path_events and not all(inside(a, (root,)) for a in args if isinstance(a, (str, bytes))):
            raise PermissionError(f"sandbox: {event} outside the sandbox")

    return guard


if __name__ == "__main__":
    main()
