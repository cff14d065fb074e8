"""What runs inside the sandbox: read the job, limit the process, run the completion's code.

Run as `python -I -S -c <this source> JOB_FD`; it imports nothing from rlpost. It holds no
secret and no expected answer: stdin/stdout programs print to the parent's pipe, probes (calls
and assert operands) write one JSON line each (`plain`: exact builtin types only, tagged and
canonically ordered), which the parent parses and compares. Only `statement` jobs (assert tests
of other shapes) decide pass/fail in here, which is why they are the weaker format: they get the
statement and a fresh nonce on stdin only after reporting that the code ran, and must echo the
nonce. The audit hook is defence in depth; the OS sandbox is the barrier.
"""
import json
import os
import resource
import sys

_TAGGED = {tuple: "tuple", set: "set", frozenset: "frozenset"}


def main() -> None:
    job_fd = int(sys.argv[1])
    with os.fdopen(job_fd, "rb") as job_file:
        job = json.loads(job_file.read())
    if job["seccomp"]:
        _seccomp(bytes.fromhex(job["seccomp"]))
    if job["user"] is not None:  # started as root (no user namespace): become the sandbox uid, which drops all capabilities
        _keep_imports()
        os.setgroups([])
        os.setresgid(job["user"], job["user"], job["user"])
        os.setresuid(job["user"], job["user"], job["user"])
    _limit(job["limits"])
    if job["mode"] == "isolation":  # probe(): what this process is, as the completion code would be
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        os.write(1, json.dumps([os.getpid(), os.readlink("/proc/self/ns/net"), os.getuid(), status["Seccomp"].strip(),
                                status["NoNewPrivs"].strip()]).encode() + b"\n")
        os._exit(0)
    results, write, read, dumps, loads = os.dup(1), os.write, os.read, json.dumps, json.loads
    if job["mode"] != "stdio":  # the program's own prints must not mix with the results
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.addaudithook(_guard(job["root"], tuple(job["readable"])))
    namespace = {"__name__": "__main__"}
    status = 1
    try:
        exec(compile(job["code"], "<completion>", "exec"), namespace)
        if job["mode"] == "probes":
            for probe in job["probes"]:
                write(results, (_probe(namespace, probe) + "\n").encode())
        elif job["mode"] == "statement":
            write(results, b'{"ran": true}\n')
            line = b""
            while not line.endswith(b"\n") and (chunk := read(0, 65536)):
                line += chunk
            test = loads(line)
            exec(compile(test["statement"], "<test>", "exec"), namespace)
            write(results, (dumps({"passed": test["nonce"]}) + "\n").encode())
        status = 0
    except BaseException:
        pass
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os._exit(status)


def plain(value):
    """`value` as canonical JSON data (exact builtin types only, else TypeError); the parent encodes its
    expected literals the same way and compares the JSON, so nothing here needs to be trusted."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [plain(v) for v in value]
    if kind is tuple:
        return {"tuple": [plain(v) for v in value]}
    if kind in (set, frozenset):
        return {_TAGGED[kind]: sorted((plain(v) for v in value), key=_order)}
    if kind is dict:
        return {"dict": sorted(([plain(k), plain(v)] for k, v in value.items()), key=lambda kv: _order(kv[0]))}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    if kind is bytes:
        return {"bytes": value.hex()}
    raise TypeError(f"not plain data: {kind.__name__}")


def _order(value) -> str:
    return json.dumps(value, sort_keys=True)


def _probe(namespace: dict, probe: dict) -> str:
    """The value as one JSON line (see `plain`); empty when it raised or is not plain data."""
    try:
        if "expr" in probe:
            value = eval(compile(probe["expr"], "<test>", "eval"), namespace)
        else:
            name = probe["call"]
            fn = namespace[name] if name in namespace else getattr(namespace["Solution"](), name)
            value = fn(*probe["args"])
        return json.dumps(plain(value))
    except Exception:
        return ""


def _seccomp(program: bytes) -> None:
    """Install the parent's BPF program (rewards/sandbox_seccomp.py) on this process and all it starts."""
    import ctypes

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = Program(len(program) // 8, program)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS; SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def _keep_imports() -> None:
    """Before dropping root: reach the standard library through directory fds, so imports still work where
    its parents are closed to other users (without bwrap, e.g. a Python under /root)."""
    moved = {}
    for i, path in enumerate(sys.path):
        if os.path.isdir(path):
            moved[path] = sys.path[i] = f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
    for module in list(sys.modules.values()):  # packages already imported find their submodules by __path__
        paths = getattr(module, "__path__", None)
        if isinstance(paths, list):
            paths[:] = [next((fd + p[len(d):] for d, fd in moved.items() if p.startswith(d + "/")), p) for p in paths]


def _limit(limits: dict) -> None:
    mb = 1024 * 1024
    for kind, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb), (resource.RLIMIT_NOFILE, limits["open_files"]),
                        (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))


def _guard(root: str, readable: tuple):
    """An audit hook refusing sockets, processes, signals, ctypes and writes outside `root`."""
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "os.kill", "os.killpg", "signal.", "ctypes.", "sys._current_frames", "gc.",
               "sys.setprofile", "sys.settrace", "os.setsid", "sqlite3.", "os.putenv", "os.unsetenv", "sys.addaudithook")
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
