"""A Ray cluster of several nodes on this one machine (ray.cluster_utils.Cluster, in a subprocess so
that it does not meet the suite's own Ray): the split placement puts learners and rollout workers
on different nodes, the two learners train over gloo across nodes, and every synced adapter reaches
(and is verified on) every rollout worker."""
import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.config import load_config
    from pipeline.train import train

    run_dir = sys.argv[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 1}})
    for _ in range(4):  # four one-GPU nodes (fake GPUs): two for the learners, two for rollout workers
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        train(load_config("configs/debug_cpu.yaml", [
            f"run.ray_address={cluster.address}", f"run.dir={run_dir}", "placement.mode=split", "placement.strategy=SPREAD",
            "trainer.num_learners=2", "trainer.gpus_per_learner=1", "rollout.num_workers=2", "rollout.gpus_per_worker=1",
            "rollout.cpus_per_worker=1", "trainer.cpus_per_learner=1", "reward.num_workers=2", "trainer.steps=3",
            "trainer.prompts_per_step=8", "rollout.n=4", "eval.before=false", "eval.after=false", "tracking.wandb=disabled"]))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_split_placement_on_a_four_node_cluster(tiny_model_path, tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    places = json.loads((tmp_path / "placement.json").read_text())
    nodes = {(p["role"], p["index"]): p["node_id"] for p in places}
    assert len(set(nodes.values())) == 4  # every learner rank and rollout worker on its own node
    assert all(len(p["gpus"]) == 1 for p in places)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["train/logprob_gap_max"] < 1e-3 for r in rows)  # both rollout workers sampled from the learners' policy
