"""Placement on the CPU with fake GPUs (the test Ray has two): which actor lands in which bundle."""
import re
import time

import pytest

from pipeline.config import ConfigError, load_config

TINY = ["rollout.backend=hf", "model.dtype=float32", "rollout.cpus_per_worker=1", "trainer.cpus_per_learner=1"]


def _where(actor) -> dict:
    """The placement group the actor runs in, and its GPU ids and GPU share."""
    import ray

    def inspect(_):
        import torch

        context = ray.get_runtime_context()
        return {"group": context.get_placement_group_id(), "gpus": context.get_accelerator_ids()["GPU"],
                "share": context.get_assigned_resources().get("GPU", 0.0), "threads": torch.get_num_threads()}

    return ray.get(actor.__ray_call__.remote(inspect))


def _workers(cfg, model_path):
    from actors.group import ActorGroup

    workers = ActorGroup(cfg, model_path)
    learner, rollout = _where(workers._learners[0]), [_where(a) for a in workers.rollout.actors]
    groups = [g.id.hex() for g in workers.placement.groups]
    workers.shutdown()
    return learner, rollout, groups


def test_colocate_puts_the_learner_and_the_rollout_worker_in_one_bundle_on_one_gpu(ray_session, tiny_model_path):
    cfg = load_config("configs/gsm8k_qwen0.5b_1gpu.yaml", [f"model.path={tiny_model_path}", *TINY, "reward.num_workers=1"])
    learner, (rollout,), (group,) = _workers(cfg, tiny_model_path)
    assert learner["group"] == rollout["group"] == group
    assert learner["gpus"] == rollout["gpus"] and len(learner["gpus"]) == 1
    assert (learner["share"], rollout["share"]) == (0.5, 0.5)
    assert learner["threads"] == rollout["threads"] == 2  # synchronous: each side uses both sides' CPUs in its turn


def test_a_synchronous_cpu_run_on_one_node_trains_and_generates_on_every_cpu_of_both_sides(ray_session, tiny_model_path):
    cfg = load_config("configs/debug_cpu.yaml", [f"model.path={tiny_model_path}", *TINY, "rollout.num_workers=2"])
    learner, rollout, _ = _workers(cfg, tiny_model_path)
    assert learner["threads"] == 3 and [r["threads"] for r in rollout] == [1, 1]  # 3 CPUs: 3 for one learner, 1.5 per worker


@pytest.mark.parametrize("overrides, one_node, expected", [
    ([], True, (2, 2, True)),  # synchronous, one node: each side's turn uses both CPUs
    ([], False, (1, 1, False)),  # a multi-node cpu run: the other side may be on another node
    (["rollout.async=true"], True, (1, 1, False)),  # both sides work at once
    (["placement.cpu_threads=own"], True, (1, 1, False)),
    (["trainer.cpus_per_learner=2", "rollout.num_workers=3", "rollout.cpus_per_worker=0.5"], True, (3, 1, True)),
    (["placement.mode=colocate", "trainer.gpus_per_learner=0.5", "rollout.gpus_per_worker=0.5"], False, (2, 2, True)),
    (["placement.mode=split", "trainer.gpus_per_learner=1", "rollout.gpus_per_worker=1"], True, (1, 1, False)),
    (["placement.autoscaling=true"], True, (1, 1, False)),  # nodes may come: nothing says the sides share one
])
def test_torch_threads_per_side(overrides, one_node, expected):
    from actors.placement import threads

    cfg = load_config("configs/debug_cpu.yaml", [*TINY, *overrides])
    assert threads(cfg, learners=1, one_node=one_node) == expected


def test_split_gives_rollout_and_learner_their_own_groups_and_gpus(ray_session, tiny_model_path):
    cfg = load_config("configs/debug_cpu.yaml", [*TINY, "placement.mode=split", "trainer.gpus_per_learner=1",
                                                 "rollout.gpus_per_worker=0.5", "rollout.num_workers=2"])
    learner, rollout, (learner_group, rollout_group) = _workers(cfg, tiny_model_path)
    assert learner["group"] == learner_group and [r["group"] for r in rollout] == [rollout_group] * 2
    assert learner["share"] == 1.0 and [r["share"] for r in rollout] == [0.5, 0.5]
    assert learner["threads"] == 1 and [r["threads"] for r in rollout] == [1, 1]  # split: the sides may sit on different nodes
    assert not set(learner["gpus"]) & {g for r in rollout for g in r["gpus"]}  # rollout GPUs apart from the learner's


def test_a_placement_the_cluster_cannot_grant_fails_fast_and_names_the_resources(ray_session, tiny_model_path):
    import ray

    from actors.placement import PlacementError
    from actors.group import ActorGroup

    split = [*TINY, "placement.mode=split", "trainer.gpus_per_learner=1", "rollout.gpus_per_worker=1", "placement.timeout_s=2"]
    with pytest.raises(PlacementError, match=r"cannot hold this run \(3 GPU asked in all, the cluster has 2\)"):
        ActorGroup(load_config("configs/debug_cpu.yaml", [*split, "rollout.num_workers=2"]), tiny_model_path)  # nothing reserved

    @ray.remote(num_gpus=1)
    class Squatter:  # another job's actor: it holds one of the two GPUs, so the reservation itself times out
        pass

    squatter = Squatter.remote()
    ray.get(squatter.__ray_ready__.remote())
    with pytest.raises(PlacementError, match=r"rollout placement group .*'GPU': 1.0.* within 2s"):
        ActorGroup(load_config("configs/debug_cpu.yaml", split), tiny_model_path)
    ray.kill(squatter)
    deadline = time.time() + 30  # the learner group it had reserved is given back (removal is asynchronous)
    while ray.available_resources().get("GPU") != 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("GPU") == 2


@pytest.mark.parametrize("overrides, message", [
    (["trainer.gpus_per_learner=1"], "placement.mode=cpu uses no GPUs"),
    (["placement.mode=colocate", "trainer.gpus_per_learner=0.6", "rollout.gpus_per_worker=0.5"], "sum 1.1"),
    (["placement.mode=colocate", "rollout.gpus_per_worker=0.5"], "each share > 0"),
])
def test_placement_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("configs/debug_cpu.yaml", overrides)
