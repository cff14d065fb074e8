"""The worker pool on plain Ray actors: load-based hand-out, redone chunks, hangs, give-up."""
import os
import time

import pytest

from actors.worker_pool import WorkerLost, WorkerPool


class Echo:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def run(self, chunk: list[int]) -> tuple[int, list[int]]:
        time.sleep(self.delay_s)
        if -1 in chunk:  # a poisoned item kills whichever worker runs it
            os._exit(1)
        return os.getpid(), [2 * x for x in chunk]


def _pool(ray_session, delays, deadline_s=60.0, max_restarts=3):
    import ray

    actors = [ray.remote(Echo).options(num_cpus=0.1, max_restarts=max_restarts).remote(d) for d in delays]
    ray.get([a.__ray_ready__.remote() for a in actors])
    return WorkerPool("test", actors, deadline_s)


def _shutdown(pool):
    import ray

    for actor in pool.actors:
        ray.kill(actor)


def test_a_slow_worker_holds_back_only_its_own_chunk(ray_session):
    import ray

    pool = _pool(ray_session, [1.5, 0.0])
    try:
        slow_pid = ray.get(pool.actors[0].run.remote([]))[0]
        results = pool.map([[i] for i in range(8)], lambda actor, c, chunk: actor.run.remote(chunk))
        assert [r[1] for r in results] == [[2 * i] for i in range(8)]  # in chunk order whoever ran them
        assert sum(pid == slow_pid for pid, _ in results) == 1  # the fast worker took every other chunk
    finally:
        _shutdown(pool)


def test_a_chunk_whose_worker_died_is_redone_on_the_restarted_worker(ray_session):
    import ray

    pool = _pool(ray_session, [0.0])
    try:
        os.kill(ray.get(pool.actors[0].run.remote([]))[0], 9)
        results = pool.map([[1, 2], [3]], lambda actor, c, chunk: actor.run.remote(chunk))
        assert [r[1] for r in results] == [[2, 4], [6]]
        assert pool.counters.restarts == 1 and pool.counters.redone == 2
    finally:
        _shutdown(pool)


def test_a_hung_chunk_is_killed_at_the_deadline_and_given_the_fallback(ray_session):
    pool = _pool(ray_session, [0.0, 3.0], deadline_s=1.0)
    try:
        results = pool.map([[1], [2]], lambda actor, c, chunk: actor.run.remote(chunk), on_hang=lambda chunk: "hung")
        assert results[0][1] == [2] and results[1] == "hung" and pool.counters.restarts == 1
    finally:
        _shutdown(pool)


def test_a_chunk_that_keeps_killing_workers_stops_with_a_clear_error(ray_session):
    pool = _pool(ray_session, [0.0], max_restarts=5)
    try:
        with pytest.raises(WorkerLost, match="chunk 0 failed 3 times"):
            pool.map([[-1]], lambda actor, c, chunk: actor.run.remote(chunk))
    finally:
        _shutdown(pool)



class Source:
    def value(self, die: bool, delay_s: float = 0.0) -> int:
        time.sleep(delay_s)
        if die:
            os._exit(1)
        return 21


class Twice(Echo):
    def double(self, x: int) -> int:
        return 2 * x


def _broadcast_pool(deadline_s: float):
    import ray

    actors = [ray.remote(Twice).options(num_cpus=0.1, max_restarts=3).remote() for _ in range(2)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    return WorkerPool("test", actors, deadline_s), ray.remote(Source).options(num_cpus=0.1, max_restarts=0).remote()


def test_a_broadcast_whose_input_died_raises_that_actor_s_death_without_blaming_the_workers(ray_session):
    """A weight sync takes the learner's weights as an input: the learner dying is not a rollout worker's fault,
    so no worker is restarted and the caller sees the learner's own ActorDiedError."""
    from ray.exceptions import ActorDiedError

    pool, source = _broadcast_pool(60.0)
    try:
        value = source.value.remote(False)
        assert pool.broadcast(lambda actor: actor.double.remote(value), [value]) == [42, 42]
        dead = source.value.remote(True)
        with pytest.raises(ActorDiedError) as err:
            pool.broadcast(lambda actor: actor.double.remote(dead), [dead])
        assert err.value.actor_id == source._actor_id.hex() and pool.counters.restarts == 0
    finally:
        _shutdown(pool)


def test_a_broadcast_s_deadline_counts_from_when_its_inputs_are_ready(ray_session):
    """A learner slower than the workers' deadline (a long update, a big model's state dict) is no worker's hang."""
    pool, source = _broadcast_pool(1.0)
    try:
        slow = source.value.remote(False, 2.5)
        assert pool.broadcast(lambda actor: actor.double.remote(slow), [slow]) == [42, 42]
        assert pool.counters.restarts == 0
    finally:
        _shutdown(pool)
