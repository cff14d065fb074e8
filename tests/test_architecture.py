"""The package layout shows the design: Ray lives in actors/ only, and imports never go in a circle."""
import ast
from pathlib import Path

import pytest

PACKAGES = ("pipeline", "actors", "rewards", "curricula")
ROOT = Path(__file__).resolve().parent.parent


def _imports() -> dict[str, set[str]]:
    """Every project module and the modules it imports (anywhere in the file, lazy imports too)."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            module = f"{package}.{path.stem}" if path.stem != "__init__" else package
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            graph[module] = found
    return graph


GRAPH = _imports()


@pytest.mark.parametrize("package", ["pipeline", "rewards", "curricula"])
def test_only_actors_touch_ray_and_vllm(package):
    offenders = {m: sorted(i for i in found if i.split(".")[0] in ("ray", "vllm"))
                 for m, found in GRAPH.items() if m.split(".")[0] == package}
    assert {m: i for m, i in offenders.items() if i} == {}


@pytest.mark.parametrize("package", ["rewards", "curricula"])
def test_rewards_and_curricula_are_leaves(package):
    """Plain scoring and sampling code: they import no other project package."""
    inward = {m: sorted(i for i in found if i.split(".")[0] in PACKAGES and i.split(".")[0] != package)
              for m, found in GRAPH.items() if m.split(".")[0] == package}
    assert {m: i for m, i in inward.items() if i} == {}


def test_the_module_import_graph_has_no_cycle():
    edges = {m: {i for i in found if i in GRAPH} for m, found in GRAPH.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for nxt in sorted(edges[module]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_actors_use_only_the_drivers_shared_definitions():
    """actors/ may read the config, records, errors and algorithm code of pipeline/, never the driver itself."""
    driver = {"pipeline.train", "pipeline.cli", "pipeline.step_batch", "pipeline.evaluation", "pipeline.checkpoint",
              "pipeline.tracking", "pipeline.advantages", "pipeline.export"}
    reach = {m: sorted(i for i in found if i in driver) for m, found in GRAPH.items() if m.startswith("actors")}
    assert {m: i for m, i in reach.items() if i} == {}
