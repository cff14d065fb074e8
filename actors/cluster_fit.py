"""Whether a cluster can ever hold a run: what the run asks for against what the nodes have, checked
before any actor starts, so a run that cannot be scheduled stops at once and says why instead of
waiting on an actor Ray will never place. Plain Python (no Ray), so the comparison is testable alone.

Only necessary conditions are checked, so a run that fits is never refused: each request's bundles
must find room on the nodes by themselves (one node each, all on one node for STRICT_PACK, distinct
nodes for STRICT_SPREAD), and all requests together must fit the cluster's totals. Resources are
compared in Ray's own fixed-point units (1/10000), so fractional CPUs that exactly fill a node fit.
"""
from __future__ import annotations

from dataclasses import dataclass

UNIT = 10_000  # Ray accounts resources in units of 1/10000
RESOURCES = ("CPU", "GPU")


@dataclass(frozen=True)
class Request:
    """`count` plain actors of one size (strategy None), or a placement group of `count` equal bundles;
    a bundle asks for some CPU or GPU (every actor of a run does)."""

    name: str
    bundle: dict[str, float]
    count: int = 1
    strategy: str | None = None


def units(amount: float) -> int:
    """Ray's fixed-point rounding of a resource amount."""
    return int(amount * UNIT + 0.5)


def total(requests: list[Request], resource: str) -> float:
    """How much of `resource` the requests take in all (exact to Ray's unit)."""
    return sum(units(r.bundle.get(resource, 0.0)) * r.count for r in requests) / UNIT


def problems(requests: list[Request], nodes: dict[str, dict[str, float]]) -> list[str]:
    """Why the nodes (name -> resources) can never hold the requests; empty when they may."""
    found = []
    for resource in RESOURCES:
        asked, have = total(requests, resource), _held(nodes, resource)
        if asked > have:
            found.append(f"{_amount(asked)} {resource} asked in all, the cluster has {_amount(have)}")
    for r in requests:
        slots = [_slots(r.bundle, node) for node in nodes.values()]  # copies of its bundle each node can hold
        spread = sum(1 for s in slots if s)
        if r.strategy == "STRICT_PACK" and max(slots, default=0) < r.count:
            found.append(f"{r.name}: STRICT_PACK needs one node with {_size(r.bundle, r.count)}; none has it")
        elif r.strategy == "STRICT_SPREAD" and spread < r.count:
            found.append(f"{r.name}: STRICT_SPREAD needs {r.count} nodes with {_size(r.bundle)} each; {spread} have it")
        elif not spread:
            found.append(f"{r.name}: no node has {_size(r.bundle)}")
        elif sum(slots) < r.count:
            found.append(f"{r.name}: the nodes have room for {sum(slots)} of {r.count} ({_size(r.bundle)} each, on one node)")
    return found


def describe(requests: list[Request], nodes: dict[str, dict[str, float]]) -> str:
    """Each request and the cluster's totals and nodes, on one line: what an error shows."""
    asked = "; ".join(label(r) for r in requests)
    totals = {res: _held(nodes, res) for res in RESOURCES}
    per_node = "; ".join(f"{name}: {_size(resources)}" for name, resources in nodes.items())
    return f"the run asks for {asked}; the cluster has {_size(totals, keep_zero=True)} in all ({per_node or 'no nodes'})"


def _held(nodes: dict[str, dict[str, float]], resource: str) -> float:
    return sum(units(n.get(resource, 0.0)) for n in nodes.values()) / UNIT


def label(r: Request) -> str:
    """`reward worker: 0.25 CPU`, `rollout group ×2 (SPREAD): 1 CPU + 1 GPU each`."""
    many = f" ×{r.count}" if r.count > 1 else ""
    strategy = f" ({r.strategy})" if r.strategy else ""
    return f"{r.name}{many}{strategy}: {_size(r.bundle)}{' each' if many else ''}"


def _slots(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many copies of the bundle the node can hold."""
    needs = {res: max(1, units(amount)) for res, amount in bundle.items() if amount > 0}  # Ray's smallest unit at least
    return min(units(node.get(res, 0.0)) // need for res, need in needs.items())


def _size(resources: dict[str, float], times: int = 1, keep_zero: bool = False) -> str:
    shown = [f"{_amount(resources.get(res, 0.0) * times)} {res}" for res in RESOURCES
             if keep_zero or units(resources.get(res, 0.0))]
    return " + ".join(shown) or "nothing"


def _amount(value: float) -> str:
    return f"{units(value) / UNIT:g}"
