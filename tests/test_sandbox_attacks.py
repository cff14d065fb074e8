"""The code sandbox under attack: a corpus by class, each scored against a scorer in its own process.

After every attack: reward 0, the scorer still alive and answering, no process left behind, no
file created or changed outside the sandbox, no connection made. Attacks that would need a
secret guess at `ANSWER`, which only the scorer holds.
"""
import json
import os
import secrets
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import sandbox_isolation
from rewards.sandbox_isolation import SANDBOX_UID, UID_POOL, probe

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 2.0
ANSWER = "zq-4471"  # the expected answer of every forging attack's tests
FORGE = {
    "assert": [f"assert answer() == {ANSWER!r}"],
    "call": {"fn_name": "answer", "inputs": [[]], "outputs": [ANSWER]},
    "stdio": {"inputs": [""], "outputs": [ANSWER]},
    "statement": [f"assert answer().startswith('zq-') and answer()[3:] == {ANSWER[3:]!r}"],  # not `E == literal`
}
HONEST = f"def answer():\n    return {ANSWER!r}\nprint(answer())"
LEAK = "@LEAK@"  # stdio tests whose expected output is the scorer's secret: leaking it is scoring
LEFT_BEHIND = "rlpost-left-behind"

# fork+exec through the helper behind subprocess, which raises no audit event
SPAWN = """
import _posixsubprocess, os, sys
def spawn(*argv, setsid=True):
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec([os.fsencode(a) for a in argv], [os.fsencode(argv[0])], True, (), None, None,
        -1, -1, -1, -1, -1, -1, r, w, False, setsid, -1, None, None, None, -1, None, False)
    os.close(r); os.close(w)
    return pid
"""
FRAMES = """
import sys
def frames():
    try:
        raise RuntimeError
    except RuntimeError as err:
        frame = err.__traceback__.tb_frame
    while frame:
        yield frame
        frame = frame.f_back
"""

ATTACKS: dict[str, tuple[str, object]] = {
    # reaching the harness's state: frames through tracebacks, hook closures, shared builtins, locals
    "frames: forge a result line from harness locals": (FRAMES + """
for f in list(frames()):
    for v in list(f.f_locals.values()):
        if isinstance(v, str) and len(v) == 32:
            sys.__stdout__.write("\\n%s 99\\n" % v)
            sys.__stdout__.flush()
            import os
            os._exit(0)
""", FORGE["assert"]),
    "closures: switch the audit hook off": (FRAMES + """
for f in list(frames()):
    for v in list(f.f_locals.values()) + list(f.f_globals.values()):
        for cell in getattr(v, "__closure__", None) or ():
            try:
                c = cell.cell_contents
            except ValueError:
                continue
            if isinstance(c, tuple):
                cell.cell_contents = ("/",)
            elif isinstance(c, str):
                cell.cell_contents = "/"
open("/tmp/rlpost-escape-closure", "w").write("x")
print(open("@HOME@/secret.txt").read())
""", LEAK),
    "builtins: patch what the checks call": ("""
import builtins
builtins.any = lambda *a: True
builtins.isinstance = lambda *a: True
open("/tmp/rlpost-escape-builtins", "w").write("x")
print(open("@HOME@/secret.txt").read())
""", LEAK),
    "harness globals: replace its functions": ("""
import __main__
for name, value in list(vars(__main__).items()):
    if callable(value) and not isinstance(value, type):
        setattr(__main__, name, lambda *a, **k: "True")
""", FORGE["assert"]),
    "code objects: read the expected value from the caller": (FRAMES + """
def answer():
    found = [c for f in list(frames())[1:] for c in f.f_code.co_consts if isinstance(c, str)]
    found += [v for f in list(frames())[1:] for v in f.f_locals.values() if isinstance(v, str)]
    return next((s for s in reversed(found) if s.startswith("zq-")), None)
""", FORGE["assert"]),
    # comparison: objects that claim equality
    "always-equal object (assert)": ("""
class Anything:
    __eq__ = lambda self, other: True
    __ne__ = lambda self, other: False
    __hash__ = object.__hash__
def answer():
    return Anything()
""", FORGE["assert"]),
    "always-equal object (call-based)": ("""
class Anything:
    __eq__ = lambda self, other: True
def answer():
    return Anything()
""", FORGE["call"]),
    "str subclass that equals everything": ("""
class S(str):
    __eq__ = lambda self, other: True
    __hash__ = str.__hash__
def answer():
    return S("no")
""", FORGE["call"]),
    "early exit with success": ("import os\nos._exit(0)", FORGE["assert"]),
    "sys.exit(0) before the tests": ("import sys\nsys.exit(0)", FORGE["assert"]),
    # process and signal primitives without audit events
    "fork_exec a daemon that outlives the group kill": (SPAWN + f"""
spawn(sys.executable, "-c", "open('/tmp/rlpost-escape-daemon', 'w'); import time; time.sleep(30)  # {LEFT_BEHIND}")
import time; time.sleep(0.5)
""", FORGE["assert"]),
    "pidfd SIGKILL of the scorer": ("""
import os, signal
signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)
""", FORGE["assert"]),
    "fork bomb through fork_exec": (SPAWN + f"""
import time
end = time.time() + 10
while time.time() < end:
    try:
        spawn(sys.executable, "-c", "import time; time.sleep(30)  # {LEFT_BEHIND}", setsid=False)
    except OSError:
        time.sleep(0.01)
""", FORGE["assert"]),
    "scorer environment through /proc": (SPAWN + """
spawn("/bin/sh", "-c", "cat /proc/*/environ | tr '\\\\0' '\\\\n' | sed -n 's/^RLPOST_SCORER_SECRET=//p' | head -1")
import time; time.sleep(1)
""", LEAK),
    "scorer files through /proc/<pid>/cwd": (SPAWN + """
spawn("/bin/sh", "-c", "cat /proc/*/cwd/secret.txt 2>/dev/null | head -1")
import time; time.sleep(1)
""", LEAK),
    "scorer file by path from a child": (SPAWN + """
spawn("/bin/cat", "@HOME@/secret.txt")
import time; time.sleep(1)
""", LEAK),
    "connect from a child without the hook": (SPAWN + """
spawn(sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', @PORT@), timeout=1)")
import time; time.sleep(1)
""", FORGE["assert"]),
    # paths: directory fds, symlinks, the destination of rename / link / symlink, sqlite, mkfifo
    "dir fd outside, relative name": ("""
import os, sys
for prefix in {sys.prefix, sys.base_prefix, "/tmp"}:
    try:
        fd = os.open(prefix, os.O_RDONLY)
        os.close(os.open("rlpost-escape-dirfd", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.symlink("x", "rlpost-escape-symlink", dir_fd=fd)
    except OSError:
        pass
""", FORGE["assert"]),
    "rename destination outside": ("""
import os
open("f", "w").write("x")
for dst in ("/tmp/rlpost-escape-rename", "@VICTIM@/victim.txt"):
    try:
        os.rename("f", dst)
    except OSError:
        pass
""", FORGE["assert"]),
    "link and symlink destination outside": ("""
import os
open("f", "w").write("x")
os.symlink("f", "/tmp/rlpost-escape-symlink2")
os.link("f", "/tmp/rlpost-escape-link")
""", FORGE["assert"]),
    "sqlite creates a file outside": ("""
import sqlite3
sqlite3.connect("/tmp/rlpost-escape.db").execute("create table t (x)")
""", FORGE["assert"]),
    "mkfifo outside": ("import os\nos.mkfifo('/tmp/rlpost-escape-fifo')", FORGE["assert"]),
    # the result channel: replace what the parent reads
    "FIFOs in place of every file in the work dir": ("""
import os
for name in os.listdir("."):
    try:
        os.remove(name)
        os.mkfifo(name)
    except OSError:
        pass
os.mkfifo(".stdout") if not os.path.exists(".stdout") else None
""", FORGE["assert"]),
    # resources
    "infinite loop": ("while True:\n    pass", FORGE["assert"]),
    "sleep past the budget": ("import time\ntime.sleep(60)", FORGE["assert"]),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", FORGE["assert"]),
    "memory bomb": ("x = bytearray(2 * 1024**3)", FORGE["assert"]),
    "huge output": ("import sys\nsys.stdout.write('x' * (64 * 1024**2))", FORGE["stdio"]),
    "endless output": ("while True:\n    print('x' * 4096)", FORGE["stdio"]),
    "huge file": ("open('big', 'w').write('x' * (64 * 1024**2))", FORGE["assert"]),
    "many files fill the disk": ("for i in range(100):\n    open(f'f{i}', 'w').write('x' * 1024**2)", FORGE["assert"]),
    # the earlier corpus
    "write outside": ("open('/tmp/rlpost-escape-write', 'w').write('x')", FORGE["assert"]),
    "delete outside": ("import os\nos.remove('@VICTIM@/victim.txt')", FORGE["assert"]),
    "read scorer files": ("print(open('@HOME@/secret.txt').read())", LEAK),
    "scorer environment": ("import os\nprint(os.environ.get('RLPOST_SCORER_SECRET'))", LEAK),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=1)", FORGE["assert"]),
    "shell": ("import subprocess\nsubprocess.run(['sh', '-c', 'touch /tmp/rlpost-escape-shell'])", FORGE["assert"]),
    "os.system": ("import os\nos.system('touch /tmp/rlpost-escape-system')", FORGE["assert"]),
    "signal parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", FORGE["assert"]),
    "ctypes": ("import ctypes\nctypes.CDLL(None).system(b'touch /tmp/rlpost-escape-ctypes')", FORGE["assert"]),
    "forged result line": ("print('0' * 32 + ' 99')\nimport sys\nsys.stdout.flush()", FORGE["assert"]),
    # the result channel of statement asserts, the weaker format: the one-liner that forged it
    "statement assert: write True on the result fd and exit 0": ("""
import os
for fd in range(3, 10):
    try:
        os.write(fd, b"True\\n")
    except OSError:
        pass
os._exit(0)
""", FORGE["statement"]),
    # the scorer's parser: a literal of ints that all hash alike (minutes of literal_eval holding the GIL)
    "result line of colliding hashes": ("""
import os
line = ("{" + ",".join(str(k * (2**61 - 1)) for k in range(1, 35000)) + "}\\n").encode()
for fd in range(3, 10):
    try:
        os.write(fd, line)
    except OSError:
        pass
os._exit(0)
""", FORGE["assert"]),
    # namespaces inside the sandbox: a user namespace mounts a tmpfs outside RLIMIT_AS and the disk cap
    "unshare -Urm and mount a tmpfs": (SPAWN + """
spawn("/bin/sh", "-c", "unshare -Urm /bin/sh -c 'mount -t tmpfs none /work && echo @ANSWER@'", setsid=False)
import time; time.sleep(1)
""", FORGE["stdio"]),
    "kernel keyring: add_key outlives the execution": (SPAWN + """
spawn(sys.executable, "-c", "import ctypes, platform; nr = {'x86_64': 248, 'aarch64': 217}[platform.machine()]; "
      "ok = ctypes.CDLL(None).syscall(nr, b'user', b'rlpost', b'x', 1, -4) >= 0; print('@ANSWER@' if ok else '')",
      setsid=False)
import time; time.sleep(1)
""", FORGE["stdio"]),
}


def serve(sandbox: str = "strict") -> None:
    """The scorer under attack: one JSON request per line in, one score per line out (best_effort: without bwrap)."""
    from rewards.sandbox import code_tests

    if sandbox == "best_effort":
        sandbox_isolation.probe = lambda: (None, "the test turned bwrap off")
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(code_tests([request["completion"]], [request["tests"]], timeout_s=TIMEOUT_S, sandbox=sandbox)[0]),
              flush=True)


class ScorerProcess:
    def __init__(self, home: Path, env: dict[str, str], sandbox: str = "strict"):
        self.home, self.env, self.sandbox = home, env, sandbox
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", f"from tests.test_sandbox_attacks import serve; serve({self.sandbox!r})"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.home, env=self.env)

    def ask(self, completion: str, tests: object, wait: float = TIMEOUT_S + 5) -> float | None:
        """The score, or None when the scorer died or did not answer in time (then it is restarted)."""
        try:
            self.proc.stdin.write(json.dumps({"completion": completion, "tests": tests}) + "\n")
            self.proc.stdin.flush()
            if select.select([self.proc.stdout], [], [], wait)[0]:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
        except (BrokenPipeError, ValueError):
            pass
        self.close()
        self.proc = self._start()
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    binary, reason = probe()
    if binary is None:
        pytest.skip(f"the OS sandbox cannot start here: {reason}")
    home, victim = tmp_path_factory.mktemp("scorer-home"), tmp_path_factory.mktemp("victim")
    secret = secrets.token_hex(8)
    (home / "secret.txt").write_text(secret)
    (victim / "victim.txt").write_text("keep me")
    env = {**os.environ, "RLPOST_SCORER_SECRET": secret, "PYTHONPATH": str(REPO)}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    scorer = ScorerProcess(home, env)
    yield {"scorer": scorer, "home": home, "victim": victim, "secret": secret, "listener": listener}
    scorer.close()
    listener.close()


def _outside(world) -> dict[str, tuple[int, int]]:
    """(mtime, size) of everything an attack might create or change outside its sandbox."""
    paths = [*Path("/tmp").glob("rlpost-escape*"), *world["home"].rglob("*"), *world["victim"].rglob("*")]
    for prefix in {sys.prefix, sys.base_prefix}:
        paths += Path(prefix).iterdir()
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in paths}


def _leftovers() -> list[str]:
    """Processes of a sandbox user, or marked by an attack (zombies excepted: dead, awaiting their reaper)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "")
        if "\nState:\tZ" in status:
            continue
        if uid.isdigit() and (int(uid) == SANDBOX_UID or int(uid) in UID_POOL) or LEFT_BEHIND in cmdline:
            found.append(f"{entry.name}: {cmdline[:80]}")
    return found


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_zero_and_leaves_no_trace(name, world):
    code, tests = ATTACKS[name]
    for token, value in (("@HOME@", world["home"]), ("@VICTIM@", world["victim"]),
                         ("@PORT@", world["listener"].getsockname()[1]), ("@ANSWER@", ANSWER)):
        code = code.replace(token, str(value))
    tests = {"inputs": [""], "outputs": [world["secret"]]} if tests == LEAK else tests
    before = _outside(world)
    assert world["scorer"].ask(code, tests) == 0.0
    assert world["scorer"].ask(HONEST, FORGE["assert"]) == 1.0, "the scorer is alive and answering"
    assert _leftovers() == []
    assert _outside(world) == before
    with pytest.raises(BlockingIOError):
        world["listener"].accept()


def test_concurrent_executions_do_not_share_a_process_limit(world):
    """RLIMIT_NPROC counts per uid: a completion holding all its processes must not starve another's threads."""
    hog = SPAWN + """
import time
for _ in range(64):
    try:
        spawn("/bin/sleep", "30", setsid=False)
    except OSError:
        break
time.sleep(30)
"""
    threads = f"""
import threading, time
time.sleep(0.5)
parts = []
workers = [threading.Thread(target=parts.append, args=(c,)) for c in {ANSWER!r}]
for w in workers:
    w.start()
    w.join()
def answer():
    return "".join(parts)
"""
    from rewards.sandbox import code_tests

    assert code_tests([hog, threads], [FORGE["assert"]] * 2, timeout_s=TIMEOUT_S) == [0.0, 1.0]
    assert _leftovers() == []


def test_probe_refuses_a_bwrap_that_does_not_isolate(tmp_path, monkeypatch):
    """A `bwrap` that only runs the command (prints the probe's 'ok' too) is not the OS layer."""
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nargs = sys.argv[1:]\n"
                    f"i = next(i for i, a in enumerate(args) if a == {sandbox_isolation.interpreter()!r} and args[i + 1] == '-I')\n"
                    "os.execv(args[i], args[i:])\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox_isolation, "_find_bwrap", lambda: str(fake))
    sandbox_isolation.probe.cache_clear()
    try:
        binary, reason = sandbox_isolation.probe()
    finally:
        sandbox_isolation.probe.cache_clear()
    assert binary is None and "pid namespace" in reason and "network namespace" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid switch without bwrap needs root")
def test_best_effort_without_bwrap_runs_code_as_a_sandbox_uid(world):
    """Without bwrap the code must not run as root: no reading the scorer's private files, nothing left running."""
    scorer = ScorerProcess(world["home"], world["scorer"].env, sandbox="best_effort")
    try:
        leak = SPAWN + f"""
spawn("/bin/cat", "{world['home']}/secret.txt", setsid=False)
spawn("/bin/sh", "-c", "sleep 30  # {LEFT_BEHIND}")
import time; time.sleep(0.5)
"""
        assert scorer.ask(leak, {"inputs": [""], "outputs": [world["secret"]]}) == 0.0
        assert scorer.ask(HONEST + "\nimport math, collections.abc", FORGE["assert"]) == 1.0
        assert scorer.ask(HONEST, FORGE["statement"]) == 1.0
    finally:
        scorer.close()
    assert _leftovers() == []
