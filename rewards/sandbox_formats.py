"""The three test formats of `code_tests`, each as executions plus a judge that runs in the scorer.

- stdin/stdout (APPS / CodeContests): {"inputs": [...], "outputs": [...]}; one execution per
  case; the expected output never enters the sandbox; compared line by line, whitespace-normalised.
- call-based (TACO / LiveCodeBench): {"fn_name": f, "inputs": [[args], ...], "outputs": [...]};
  the sandbox returns each result as a JSON line (`plain` in the harness), parsed here with
  `json` under a size cap, never evaluated, so only plain data can match (an object with an
  overloaded `__eq__` cannot pass); JSON-normalised, TACO's [x]-for-x rule kept.
- assert strings: `assert <expr> == <literal>` becomes a probe like a call (the literal stays
  here, parsed from the row's own trusted text); a string of several asserts is one test per
  assert; any other assert runs in a fresh interpreter that must echo a nonce it is sent only
  after the code ran; code in that process can still forge it: the weaker format.
- HumanEval: {"check": "def check(candidate): ...", "entry_point": f} runs check(f) as one such
  statement; a statement that defines check() without calling it is refused.
Either dict may also come as a JSON string (the APPS `input_output` column). Results compare
type-strictly: bool is not int, a tuple not a list; int and float compare by value.
"""
from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewards.sandbox_exec import Outcome
from rewards.sandbox_harness import plain

LINE_CAP = 256 * 1024  # bytes of one result line: a longer one is not parsed (and fails)


@dataclass(frozen=True)
class Execution:
    job: dict[str, Any]  # what the harness runs, besides the code
    stdin: bytes
    judge: Callable[[Outcome], int]  # the tests it passed
    tests: int
    respond: Callable[[bytes], bytes | None] | None = None  # answers the harness's output lines on its stdin


def executions(tests: Any) -> list[Execution]:
    """The executions that score a row's `tests` column, in any of the three formats."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError:
            tests = [tests]
    if isinstance(tests, dict):
        if "check" in tests:
            return [_humaneval(tests["check"], tests["entry_point"])]
        if tests.get("fn_name"):
            return [_calls(tests["fn_name"], tests["inputs"], tests["outputs"])]
        return [_stdio(i, o) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)]
    return _asserts([str(t) for t in tests])


def _text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "\n".join(value)


def _tokens(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def _stdio(given: str | list[str], expected: str | list[str]) -> Execution:
    want = _tokens(_text(expected))

    def judge(outcome: Outcome) -> int:
        ok = outcome.status == "ok" and outcome.returncode == 0
        return int(ok and _tokens(outcome.output.decode(errors="replace")) == want)

    return Execution({"mode": "stdio"}, _text(given).encode(), judge, 1)


_MISSING = object()


def parse_line(line: bytes) -> Any:
    """One result line as JSON data (json.loads: linear time, no code, no hashing of attacker keys), or _MISSING."""
    if not line or len(line) > LINE_CAP:
        return _MISSING
    try:
        return json.loads(line)
    except (ValueError, RecursionError, MemoryError):
        return _MISSING


def _probes(probes: list[dict], expected: list[Any], same: Callable[[Any, Any], bool]) -> Execution:
    def judge(outcome: Outcome) -> int:
        got = [parse_line(line) for line in outcome.output.split(b"\n")[:len(expected)]]
        return sum(i < len(got) and got[i] is not _MISSING and same(got[i], want) for i, want in enumerate(expected))

    return Execution({"mode": "probes", "probes": probes}, b"", judge, len(expected))


def _calls(fn_name: str, inputs: list[list[Any]], outputs: list[Any]) -> Execution:
    if len(inputs) != len(outputs):
        raise ValueError(f"call-based tests need as many outputs as inputs ({len(inputs)} vs {len(outputs)})")
    return _probes([{"call": fn_name, "args": args} for args in inputs], outputs, _same_json)


def _same_json(got: Any, want: Any) -> bool:
    """A call's result against the row's JSON output: tuples as lists, dict keys as JSON makes them."""
    try:
        got = _as_json(got)
    except (ValueError, TypeError, RecursionError):  # not the harness's encoding
        return False
    return got is not _MISSING and (_same(got, want) or (isinstance(want, list) and len(want) == 1 and _same(got, want[0])))


def _as_json(value: Any) -> Any:
    """`plain` data as json.dumps would have written the value; _MISSING for sets, bytes, complex."""
    if type(value) is list:
        items = [_as_json(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    if type(value) is not dict:
        return value
    (tag, items), = value.items()
    if tag == "tuple":
        return _as_json(items)
    if tag != "dict":
        return _MISSING
    out = {}
    for key, item in items:
        key = key if type(key) is str else json.dumps(key) if type(key) in (int, float, bool) or key is None else None
        item = _as_json(item)
        if key is None or item is _MISSING:
            return _MISSING
        out[key] = item
    return out


def _same(got: Any, want: Any) -> bool:
    """Equality of JSON data, type-strict but for numbers (bool is not int; 2 == 2.0)."""
    if type(got) in (int, float) and type(want) in (int, float):
        return got == want
    if type(got) is not type(want):
        return False
    if type(got) is list:
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if type(got) is dict:
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return got == want


def _same_value(got: Any, want: Any) -> bool:
    """An assert operand (`plain` JSON from the sandbox) against the test's literal, encoded here the same way."""
    try:
        return _same(got, plain(want))
    except (TypeError, RecursionError):
        return False


def _asserts(tests: list[str]) -> list[Execution]:
    probes, expected, runs = [], [], []
    for test in (one for text in tests for one in _split(text)):
        split = _expr_and_literal(test)
        if split:
            probes.append({"expr": split[0]})
            expected.append(split[1])
        else:
            runs.append(_statement(test))
    return ([_probes(probes, expected, _same_value)] if probes else []) + runs


def _split(text: str) -> list[str]:
    """Several top-level asserts: one test each; anything else stays one test."""
    try:
        body = ast.parse(text).body
    except SyntaxError:
        return [text]
    if len(body) > 1 and all(isinstance(node, ast.Assert) for node in body):
        return [ast.get_source_segment(text, node) for node in body]
    if any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in body) and not any(
            isinstance(n, ast.Expr | ast.Assign | ast.Assert) and any(
                isinstance(c, ast.Call) and getattr(c.func, "id", None) == "check" for c in ast.walk(n)) for n in body):
        raise ValueError("an assert test defines check() but never calls it; give HumanEval-style tests as "
                         '{"check": ..., "entry_point": ...}')
    return [text]


def _humaneval(check: str, entry_point: str) -> Execution:
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a function name, got {entry_point!r}")
    return _statement(f"{check}\ncheck({entry_point})\n")


def _statement(test: str) -> Execution:
    """A statement the harness runs after the code; it is sent, with a fresh nonce, only once the code has run,
    and passes only by echoing that nonce."""
    nonce = secrets.token_hex(16)
    ran, passed = b'{"ran": true}', json.dumps({"passed": nonce}).encode()
    sent = []

    def respond(line: bytes) -> bytes | None:
        if line != ran or sent:
            return None
        sent.append(True)
        return json.dumps({"statement": test, "nonce": nonce}).encode() + b"\n"

    def judge(outcome: Outcome) -> int:
        return int(outcome.status == "ok" and outcome.returncode == 0 and outcome.output == ran + b"\n" + passed + b"\n")

    return Execution({"mode": "statement"}, b"", judge, 1, respond)


def _expr_and_literal(test: str) -> tuple[str, Any] | None:
    """`assert E == L` (or `L == E`) with L a literal (parsed from the row's trusted text): (E's source, L); else None."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    cmp = tree.body[0].test
    if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)):
        return None
    for expr, literal in ((cmp.left, cmp.comparators[0]), (cmp.comparators[0], cmp.left)):
        try:
            return ast.unparse(expr), ast.literal_eval(literal)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    return None
