"""The bcrypt gate: the one thread that runs bcrypt for credentials the cache does not know.

A wrong guess costs ~50 ms of CPU (bcrypt cost 10) and arrives for free, so what an
unauthenticated client can make the exporter do must be bounded, and Prometheus must still get
its turn during a flood, even before its credential is cached (at start):

- one bcrypt at a time, on one thread: a flood costs at most one core. The interpreter never
  exits while that thread is inside bcrypt's native code (a daemon thread killed there at exit
  aborted the process: "FATAL: exception not rethrown"): `stop()` joins it, and runs at exit
  (atexit, before daemon threads are killed) if nobody called it;
- single flight: a credential already queued or running is not queued again, its requests wait
  for the one answer (200 simultaneous scrapes cost one bcrypt);
- bounded: at most PER_CLIENT checks queued per client address and TOTAL in all. Past that the
  request is shed at once, 429 for a client over its share, 503 when everything is full,
  instead of holding a connection and memory for seconds;
- fair: the next check is from the address served longest ago (never served: first), so
  flooding addresses take turns among themselves while a newcomer, such as Prometheus at
  start-up, gets the very next turn; and when the queue is full a client with fewer checks
  queued displaces the newest check of the greediest one. A flood from other addresses
  therefore delays a new client's first check by about one bcrypt (the one running), however
  many addresses flood.
A flood from Prometheus's own address (a shared NAT, a proxy) cannot be told apart before
bcrypt has run: then Prometheus's check waits in that address's share like any other.
"""

from __future__ import annotations

import atexit
import enum
import functools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.web.auth import BasicAuth, Pending

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    SHED_CLIENT = "shed_client"  # this address has PER_CLIENT checks waiting: 429
    SHED = "shed"  # the whole queue is full: 503


SERVED_MEMORY = 4096  # addresses whose last turn is remembered (a forgotten one counts as new)
Done = Callable[[Outcome], None]
Post = Callable[[Callable[[], None]], None]


@dataclass
class _Job:
    auth: BasicAuth
    pending: Pending
    client: str
    waiters: list[Done] = field(default_factory=list)


class Gate:
    # Small on purpose: a queued check waits up to TOTAL bcrypt runs (~0.8 s at cost 10), and a
    # new client's first check at most one turn per client already queued (TOTAL at most).
    PER_CLIENT = 2
    TOTAL = 16

    def __init__(self, post: Post) -> None:
        """`post` hands a callable to the serving thread (answers are delivered there)."""
        self._post = post
        self._cond = threading.Condition()
        self._queues: dict[str, deque[bytes]] = {}  # by client, in order of arrival
        self._served: OrderedDict[str, int] = OrderedDict()  # client -> turn it was last served
        self._turn = 0
        self._jobs: dict[bytes, _Job] = {}  # queued or running, by cache key
        self._queued = 0
        self._stopping = False
        self.shed = 0  # checks refused so far (logged by the server)
        self._thread = threading.Thread(target=self._run, name="bcrypt", daemon=True)

    def start(self) -> None:
        atexit.register(self.stop)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """No new checks; wait for the running bcrypt (tens of ms at the usual costs)."""
        atexit.unregister(self.stop)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def submit(self, auth: BasicAuth, pending: Pending, client: str,
               done: Done) -> Outcome | None:
        """Queue a check; None means `done` will be called (on the serving thread) later."""
        with self._cond:
            job = self._jobs.get(pending.key)
            if job is not None:
                job.waiters.append(done)
                return None
            queue = self._queues.get(client)
            mine = len(queue) if queue else 0
            if self._stopping:
                return Outcome.SHED
            if mine >= self.PER_CLIENT:
                self.shed += 1
                return Outcome.SHED_CLIENT
            if self._queued >= self.TOTAL and not self._displace(mine):
                self.shed += 1
                return Outcome.SHED
            self._jobs[pending.key] = _Job(auth, pending, client, [done])
            self._queues.setdefault(client, deque()).append(pending.key)
            self._queued += 1
            self._cond.notify()
        return None

    def _displace(self, mine: int) -> bool:
        """Full: drop the newest check of the client with the most queued, if it has more than
        the newcomer's client. Called with the lock held."""
        greedy = max(self._queues, key=lambda c: len(self._queues[c]))
        if len(self._queues[greedy]) <= mine:
            return False
        job = self._jobs.pop(self._queues[greedy].pop())
        if not self._queues[greedy]:
            del self._queues[greedy]
        self._queued -= 1
        self.shed += 1
        self._answer(job, Outcome.SHED)
        return True

    def _answer(self, job: _Job, outcome: Outcome) -> None:
        for done in job.waiters:
            self._post(functools.partial(done, outcome))

    def _next(self) -> tuple[bytes, _Job] | None:
        with self._cond:
            while not self._stopping and not self._queues:
                self._cond.wait()
            if self._stopping:
                return None
            # Served longest ago first; never served is -1; ties keep the order of arrival.
            client = min(self._queues, key=lambda c: self._served.get(c, -1))
            queue = self._queues[client]
            key = queue.popleft()
            if not queue:
                del self._queues[client]
            self._queued -= 1
            self._turn += 1
            self._served[client] = self._turn
            self._served.move_to_end(client)
            if len(self._served) > SERVED_MEMORY:
                self._served.popitem(last=False)
            return key, self._jobs[key]

    def _run(self) -> None:
        while (item := self._next()) is not None:
            key, job = item
            try:
                ok = job.auth.verify(job.pending)
            except Exception:  # a bug: refuse this credential, keep the gate running
                log.error("basic auth check failed", exc_info=True)
                ok = False
            with self._cond:
                del self._jobs[key]
            self._answer(job, Outcome.ALLOW if ok else Outcome.DENY)
