"""A cluster that cannot hold the run stops it before any actor starts, with one message saying why:
the pure comparison on made-up clusters, then a real 2-CPU Ray (in a subprocess, apart from the
suite's own Ray): the debug config at that size, and an actor Ray cannot place because others hold the room."""
import json
import subprocess
import sys
import textwrap

import pytest

from actors.cluster_fit import Request, describe, problems
from actors.placement import demands
from pipeline.config import load_config

GPU_SHARES = ["placement.mode=colocate", "trainer.gpus_per_learner=0.5", "rollout.gpus_per_worker=0.5"]


def _demands(*overrides: str) -> list[Request]:
    cfg = load_config("configs/debug_cpu.yaml", list(overrides))
    return demands(cfg, cfg.trainer.num_learners)


def test_the_debug_config_on_two_cpus_names_the_reward_worker_and_the_cluster():
    requests, nodes = _demands(), {"10.0.0.1:6380": {"CPU": 2.0, "memory": 1e9}}
    assert problems(requests, nodes) == ["2.25 CPU asked in all, the cluster has 2"]
    assert describe(requests, nodes) == ("the run asks for learner: 1 CPU; rollout worker: 1 CPU; reward worker: 0.25 CPU; "
                                         "the cluster has 2 CPU + 0 GPU in all (10.0.0.1:6380: 2 CPU)")
    assert problems(requests, {"10.0.0.1:6380": {"CPU": 2.25}}) == []


def test_colocate_needs_one_node_with_the_gpu_and_all_the_cpus():
    requests = _demands(*GPU_SHARES)
    assert [r.bundle for r in requests if r.strategy] == [{"GPU": 1.0, "CPU": 2.0}]
    assert problems(requests, {"a": {"CPU": 16.0}}) == [
        "1 GPU asked in all, the cluster has 0", "colocate group (learners and rollout workers): no node has 2 CPU + 1 GPU"]
    split_up = {"gpu": {"CPU": 1.0, "GPU": 1.0}, "cpu": {"CPU": 16.0}}  # enough in all, but not on the GPU's node
    assert problems(requests, split_up) == ["colocate group (learners and rollout workers): no node has 2 CPU + 1 GPU"]
    assert problems(requests, {"gpu": {"CPU": 2.0, "GPU": 1.0}, "cpu": {"CPU": 1.0}}) == []


def test_totals_that_suffice_do_not_help_an_actor_no_single_node_can_hold():
    nodes = {"a": {"CPU": 2.5}, "b": {"CPU": 2.5}}
    assert problems([Request("learner", {"CPU": 3.0})], nodes) == ["learner: no node has 3 CPU"]
    assert problems([Request("rollout worker", {"CPU": 1.5}, count=3)], nodes) == [
        "rollout worker: the nodes have room for 2 of 3 (1.5 CPU each, on one node)"]


def test_strict_strategies_need_one_node_or_distinct_nodes():
    nodes = {"a": {"CPU": 8.0, "GPU": 4.0}, "b": {"CPU": 8.0, "GPU": 4.0}}
    spread = Request("rollout group", {"CPU": 1.0, "GPU": 1.0}, count=3, strategy="STRICT_SPREAD")
    assert problems([spread], nodes) == ["rollout group: STRICT_SPREAD needs 3 nodes with 1 CPU + 1 GPU each; 2 have it"]
    packed = Request("learner group", {"CPU": 1.0, "GPU": 1.0}, count=5, strategy="STRICT_PACK")
    assert problems([packed], nodes) == ["learner group: STRICT_PACK needs one node with 5 CPU + 5 GPU; none has it"]
    assert problems([Request("rollout group", {"GPU": 1.0}, count=8, strategy="PACK")], nodes) == []  # soft: may span nodes


def test_fractional_cpus_that_exactly_fill_a_node_fit():
    # 10 × 0.1 + 1 is 1.9999999999999998 in floats, 3 × 0.1 / 0.1 floors to 2: Ray's 1/10000 units are exact
    assert problems([Request("reward worker", {"CPU": 0.1}, count=10), Request("learner", {"CPU": 1.0})], {"a": {"CPU": 2.0}}) == []
    assert problems([Request("reward worker", {"CPU": 0.1}, count=3)], {"a": {"CPU": 0.3}}) == []
    assert problems([Request("reward worker", {"CPU": 0.1001}, count=10), Request("learner", {"CPU": 1.0})],
                    {"a": {"CPU": 2.0}}) == ["2.001 CPU asked in all, the cluster has 2"]


SCRIPT = textwrap.dedent("""
    import json, sys, time
    import ray
    from ray._private import state
    from actors.group import ActorGroup
    from actors.placement import PlacementError
    from pipeline.config import load_config
    from pipeline.train import train

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    out = {}
    start = time.monotonic()
    try:
        train(load_config("configs/debug_cpu.yaml", [f"run.dir={sys.argv[1]}", "tracking.wandb=disabled"]))
    except PlacementError as err:
        out["too_small"] = {"error": str(err), "seconds": time.monotonic() - start, "actors": len(state.actors())}

    @ray.remote(num_cpus=1)
    class Squatter:  # another job's actor: the run fits the cluster's totals, not what is left of it
        pass

    squatter = Squatter.remote()
    ray.get(squatter.__ray_ready__.remote())
    cfg = load_config("configs/debug_cpu.yaml", ["rollout.cpus_per_worker=0.5", "placement.timeout_s=2"])
    start = time.monotonic()
    try:
        ActorGroup(cfg, sys.argv[2])
    except PlacementError as err:
        time.sleep(1)
        alive = [a for a in state.actors().values() if a["State"] != "DEAD"]
        out["held"] = {"error": str(err), "seconds": time.monotonic() - start, "actors": len(alive)}
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def two_cpu_ray(tiny_model_path, tmp_path_factory):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path_factory.mktemp("run")), tiny_model_path],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, (result.stdout + result.stderr)[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_the_debug_config_on_a_two_cpu_ray_stops_before_any_actor_starts(two_cpu_ray):
    found = two_cpu_ray["too_small"]
    assert "2.25 CPU asked in all, the cluster has 2" in found["error"]
    assert "reward worker: 0.25 CPU" in found["error"] and "the cluster has 2 CPU + 0 GPU in all" in found["error"]
    assert found["actors"] == 0 and found["seconds"] < 20  # the tiny model and data load first; no actor, no wait


@pytest.mark.slow
def test_an_actor_ray_cannot_place_is_reported_with_the_resources_not_as_lost(two_cpu_ray):
    found = two_cpu_ray["held"]
    assert "Ray has not placed" in found["error"] and "within 2s" in found["error"] and "unmet demand" in found["error"]
    assert "reward worker: 0.25 CPU" in found["error"] and "free now 0 CPU" in found["error"]
    assert found["actors"] == 1 and found["seconds"] < 15  # only the squatter is left
