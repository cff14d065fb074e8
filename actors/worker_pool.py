"""A pool of Ray actors that hands out chunks of work by load and survives workers that die or hang.

Ray restarts a dead actor (`max_restarts`). The pool notices (a call fails, the worker reports a
lost state, or it misses its deadline and is killed), waits for the restart, has the owner
re-install the worker's state (the current adapter), and runs the chunk again, so no sample is
dropped. Counters say how many restarts there were and how much work was redone.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

from pipeline.errors import RlpostError


class StaleWorker(RuntimeError):
    """Raised by a worker that lost its state (Ray restarted it): it must be revived before it serves."""


class WorkerLost(RlpostError):
    """A worker did not come back after dying (Ray's max_restarts used up), or failed one chunk too often."""


RECOVERABLE = (RayActorError, StaleWorker)


def get_each(refs: list) -> list:
    """ray.get of results from several actors, raising the first failure as soon as it happens (a plain ray.get
    waits for all: for data-parallel ranks blocked in a collective with the one that died, forever)."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(list(refs))


@dataclass
class PoolCounters:
    restarts: int = 0  # deaths, hangs and lost states noticed
    redone: int = 0  # items run again because their worker died or hung


@dataclass
class WorkerPool:
    name: str
    actors: list[Any]
    deadline_s: float
    revive: Callable[[Any], None] = lambda actor: None  # re-installs a restarted actor's state; may raise RECOVERABLE
    restart_timeout_s: float = 300.0
    max_attempts: int = 3
    counters: PoolCounters = field(default_factory=PoolCounters)

    def map(self, chunks: list[list], call: Callable[[Any, int, list], Any],
            on_hang: Callable[[list], Any] | None = None) -> list[Any]:
        """call(actor, chunk index, chunk) for every chunk; results in chunk order.

        A free worker takes the next chunk, so a slow worker holds back only its own. A chunk whose
        worker died is run again; one whose worker hung is run again too, unless `on_hang` gives its
        result (a reward function hung in native code is the completion's fault, not the worker's).
        """
        results: list[Any] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        todo, idle = deque(range(len(chunks))), deque(range(len(self.actors)))
        running: dict[Any, tuple[int, int, float]] = {}  # ref -> (worker, chunk, start)
        while todo or running:
            while todo and idle:
                w, c = idle.popleft(), todo.popleft()
                attempts[c] += 1
                running[call(self.actors[w], c, chunks[c])] = (w, c, time.monotonic())
            wait_s = min(start for _, _, start in running.values()) + self.deadline_s - time.monotonic()
            ready, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, wait_s))
            for ref in ready:
                w, c, _ = running.pop(ref)
                try:
                    results[c] = ray.get(ref)
                except RECOVERABLE as err:
                    self._recover(w, err)
                    self._redo(c, chunks[c], attempts[c], err, todo)
                idle.append(w)
            now = time.monotonic()
            for ref, (w, c, start) in list(running.items()):
                if now - start < self.deadline_s:
                    continue
                del running[ref]
                ray.kill(self.actors[w], no_restart=False)
                self._recover(w, TimeoutError(f"silent for {self.deadline_s:.0f}s"))
                if on_hang is None:
                    self._redo(c, chunks[c], attempts[c], TimeoutError("hung"), todo)
                else:
                    results[c] = on_hang(chunks[c])
                idle.append(w)
        return results

    def broadcast(self, call: Callable[[Any], Any], inputs: list | None = None) -> list[Any]:
        """call(actor) on every worker (a weight sync, say); a worker that died is revived and asked again.
        `inputs`: results of other actors the calls wait for (a learner's, for a weight sync), awaited first: their
        failure is raised as theirs, and the workers' deadline counts from when they are ready."""
        refs = [call(actor) for actor in self.actors]
        get_each(inputs or [])
        results = []
        for w, ref in enumerate(refs):
            for attempt in range(1, self.max_attempts + 1):
                try:
                    results.append(ray.get(ref, timeout=self.deadline_s))
                    break
                except (*RECOVERABLE, GetTimeoutError) as err:
                    if isinstance(err, GetTimeoutError):
                        ray.kill(self.actors[w], no_restart=False)
                    if attempt == self.max_attempts:
                        raise WorkerLost(f"{self.name} worker {w} failed {attempt} times: {err}") from err
                    self._recover(w, err)
                    ref = call(self.actors[w])
        return results

    def _redo(self, c: int, chunk: list, attempts: int, err: BaseException, todo: deque) -> None:
        if attempts >= self.max_attempts:
            raise WorkerLost(f"{self.name} work chunk {c} failed {attempts} times; last error: {err}") from err
        self.counters.redone += len(chunk)
        todo.appendleft(c)

    def _recover(self, w: int, err: BaseException) -> None:
        """Wait until Ray has restarted worker w, then re-install its state."""
        self.counters.restarts += 1
        print(f"[rlpost] {self.name} worker {w} lost ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
              "waiting for its restart", flush=True)
        give_up, died = time.monotonic() + self.restart_timeout_s, 0
        while True:
            try:
                ray.get(self.actors[w].__ray_ready__.remote(), timeout=max(1.0, give_up - time.monotonic()))
                self.revive(self.actors[w])
                return
            except (*RECOVERABLE, GetTimeoutError) as again:
                died = died + 1 if isinstance(again, ActorDiedError) else 0  # ActorUnavailableError: restarting
                if died >= 5 or time.monotonic() >= give_up:
                    raise WorkerLost(f"{self.name} worker {w} did not come back (its max_restarts may be used up): "
                                     f"{str(again).splitlines()[0]}") from err
                time.sleep(0.5)
