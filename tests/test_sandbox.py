"""The code verifier's sandbox: a corpus of hostile completions, each a scored failure within its limits."""
import os
import time

import pytest

from rewards.sandbox import Limits, code_tests, extract_code, run_tests

LIMITS = Limits(timeout_s=3, cpu_s=3, memory_mb=256)
SOLUTION = "```python\ndef add(a, b):\n    return a + b\n```"


def test_passing_and_failing_tests_are_counted():
    assert code_tests([SOLUTION], [["assert add(1, 2) == 3", "assert add(2, 2) == 5"]]) == [0.5]
    assert code_tests([SOLUTION], [["assert add(1, 2) == 3", "assert add(2, 2) == 5"]], mode="all") == [0.0]
    assert code_tests([SOLUTION], ["assert add(1, 2) == 3"], mode="all") == [1.0]
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1\n"


def test_files_inside_the_sandbox_and_the_standard_library_work():
    code = "import json, math, collections\nopen('scratch.txt', 'w').write('hi')\nok = open('scratch.txt').read() == 'hi'"
    assert run_tests(code, ["assert ok and math.sqrt(4) == 2"], LIMITS).passed == 1


ATTACKS = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "memory bomb": "x = bytearray(2 * 1024**3)",
    "huge output": "import sys\nsys.stdout.write('x' * (64 * 1024**2))",
    "huge file": "open('big', 'w').write('x' * (64 * 1024**2))",
    "write outside": "open('/tmp/rlpost-sandbox-escape', 'w').write('x')",
    "delete outside": "import os\nos.remove(os.environ.get('TARGET', '/tmp/rlpost-victim'))",
    "read run files": "print(open('/work/main/pyproject.toml').read())",
    "read home": "import os\nprint(os.listdir(os.path.expanduser('~')))",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 8265), timeout=1)",
    "shell": "import subprocess\nsubprocess.run(['sh', '-c', 'touch /tmp/rlpost-sandbox-escape'])",
    "os.system": "import os\nos.system('touch /tmp/rlpost-sandbox-escape')",
    "signal parent": "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
    "ctypes": "import ctypes\nctypes.CDLL(None).system(b'touch /tmp/rlpost-sandbox-escape')",
    "forged result": "print('0' * 32 + ' 99')\nimport sys\nsys.stdout.flush()",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_ends_as_a_scored_failure_within_its_limits(name, tmp_path):
    victim = "/tmp/rlpost-victim"
    open(victim, "w").close()
    start = time.perf_counter()
    result = run_tests(ATTACKS[name], ["assert False"], LIMITS)  # only a forged result could count a pass
    assert result.passed == 0, name
    assert time.perf_counter() - start < LIMITS.timeout_s + 2
    assert not os.path.exists("/tmp/rlpost-sandbox-escape")
    assert os.path.exists(victim) and os.path.exists("pyproject.toml")


def test_secrets_in_the_environment_are_not_visible(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-token")
    assert run_tests("import os\nleak = os.environ.get('WANDB_API_KEY')", ["assert leak is None"], LIMITS).passed == 1


@pytest.mark.parametrize("name", ["huge output", "huge file", "memory bomb"])
def test_resource_attacks_stop_the_code_itself(name):
    # with a test that would pass, the attack must still end the run before the tests
    assert run_tests(ATTACKS[name], ["assert True"], LIMITS).passed == 0


def test_memory_limit_allows_modest_use():
    assert run_tests("x = bytearray(32 * 1024**2)", ["assert len(x) > 0"], LIMITS).passed == 1
