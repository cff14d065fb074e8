"""The three test formats of `code_tests`, each as executions plus a judge that runs in the scorer.

- stdin/stdout (APPS / CodeContests): {"inputs": [...], "outputs": [...]}; one execution per
  case; the expected output never enters the sandbox; compared line by line, whitespace-normalised.
- call-based (TACO / LiveCodeBench): {"fn_name": f, "inputs": [[args], ...], "outputs": [...]};
  the sandbox returns each result's repr, parsed here as plain data (ast.literal_eval), so an
  object with an overloaded `__eq__` cannot pass; JSON-normalised, TACO's [x]-for-x rule kept.
- assert strings: `assert <expr> == <literal>` becomes a probe like a call (the literal stays
  here); any other assert runs in a fresh interpreter and passes by exit status, which code in
  that process can forge: the weaker format.
Either dict may also come as a JSON string (the APPS `input_output` column).
"""
from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewards.sandbox_exec import Outcome


@dataclass(frozen=True)
class Execution:
    job: dict[str, Any]  # what the harness runs, besides the code
    stdin: bytes
    judge: Callable[[Outcome], int]  # the tests it passed
    tests: int


def executions(tests: Any) -> list[Execution]:
    """The executions that score a row's `tests` column, in any of the three formats."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError:
            tests = [tests]
    if isinstance(tests, dict):
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


def _values(output: bytes) -> list[Any]:
    """The probes' results as plain data, one per line; _MISSING where a line is not a literal."""
    values = []
    for line in output.decode(errors="replace").split("\n"):
        try:
            values.append(ast.literal_eval(line))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            values.append(_MISSING)
    return values


def _probes(probes: list[dict], expected: list[Any], same: Callable[[Any, Any], bool]) -> Execution:
    def judge(outcome: Outcome) -> int:
        got = _values(outcome.output)
        return sum(i < len(got) and got[i] is not _MISSING and same(got[i], want) for i, want in enumerate(expected))

    return Execution({"mode": "probes", "probes": probes}, b"", judge, len(expected))


def _calls(fn_name: str, inputs: list[list[Any]], outputs: list[Any]) -> Execution:
    if len(inputs) != len(outputs):
        raise ValueError(f"call-based tests need as many outputs as inputs ({len(inputs)} vs {len(outputs)})")
    return _probes([{"call": fn_name, "args": args} for args in inputs], outputs, _same_json)


def _same_json(got: Any, want: Any) -> bool:
    try:
        got = json.loads(json.dumps(got))  # tuples become lists; sets and other types fail
    except (TypeError, ValueError):
        return False
    return got == want or (isinstance(want, list) and len(want) == 1 and got == want[0])


def _asserts(tests: list[str]) -> list[Execution]:
    probes, expected, runs = [], [], []
    for test in tests:
        split = _expr_and_literal(test)
        if split:
            probes.append({"expr": split[0]})
            expected.append(split[1])
        else:
            runs.append(Execution({"mode": "statement", "statement": test}, b"", _statement_passed, 1))
    return ([_probes(probes, expected, _same_value)] if probes else []) + runs


def _same_value(got: Any, want: Any) -> bool:
    return type(got) is type(want) and got == want or (_number(got) and _number(want) and got == want)


def _number(value: Any) -> bool:
    return type(value) in (int, float, complex)


def _statement_passed(outcome: Outcome) -> int:
    return int(outcome.status == "ok" and outcome.returncode == 0 and outcome.output == b"True\n")


def _expr_and_literal(test: str) -> tuple[str, Any] | None:
    """`assert E == L` (or `L == E`) with L a literal: (E's source, L); else None."""
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
