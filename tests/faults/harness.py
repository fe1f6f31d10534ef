"""A chaos harness: real consumers killed with SIGKILL while a workload runs.

`ChaosRun` starts a private redis-server, N `tshjobs consumer` processes and
an SMTP server (CaptureServer) on 127.0.0.1. It runs a `Workload`, which
enqueues tasks like the ERP does, and meanwhile a chaos thread kills a whole
consumer, or one worker process of it, at moments that a seeded RNG picks.
The harness starts a new consumer for each one that dies, so N stay up. Timed
events restart Redis or take the SMTP server down for a while. At the end it
waits until Redis has no more work, stops the consumers and returns a
`ChaosReport` computed from the audit log, Redis and the workload's effect
counter. The seed fixes the random draws (pauses, targets, hunts), but the
processes and phases they hit depend on timing, so two runs with one seed
differ.

Every kill first stops its target with SIGSTOP and reads, for each task in
the target's in-flight lists, how far the task had got: its phase
(DEQUEUED, RUNNING, ...). Only then does it send SIGKILL, so the phase is the
point at which the task's worker died. The loop can also hunt for a phase:
stop random targets and let them continue until one holds a task in that
phase. A workload may split RUNNING into its own phases, such as before and
after its side effect.

The harness only kills processes it started: its consumers and their child
processes, found through /proc.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

from redis.exceptions import RedisError

from tests.consumers import ConsumerProcess
from tests.services import RedisServer, free_port
from tshjobs.audit import FINAL_STATES
from tshjobs.mail.capture import CaptureServer
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings
from tshjobs.spool import spool_backlog

# Phases of a task at the moment its worker was killed. Workloads add their
# own phases in place of RUNNING.
DEQUEUED = "dequeued"  # in the worker's in-flight list, not started yet
RUNNING = "running"
RESCHEDULED = "rescheduled"  # the attempt failed, its retry is scheduled
FINISHED = "finished"  # in a final state, not yet removed from the list

# Audit events written after an attempt failed, as its retry is scheduled.
RETRY_EVENTS = ("error", "retrying", "scheduled")

PR_SET_CHILD_SUBREAPER = 36

# Seconds a killed worker's phase may still change through work that other
# processes finish for it, such as the SMTP server storing a message whose
# data it has received.
SETTLE_SECONDS = 0.3

# Seconds Redis must stay idle before tasks that are not final count as
# never finishing.
IDLE_SECONDS = 3.0

# Every report of this session, for the terminal summary (see conftest.py).
REPORTS: list[ChaosReport] = []


@dataclass
class Workload:
    """The tasks a chaos run enqueues and the effect each must have once.

        `enqueue(run)` runs on a thread of its own and enqueues through
        `run.call`. `expected` contains the effect keys that must each occur exactly
        once, for example recipients or ERP entity ids. `count_effects(run)`
        returns how often each key occurred (emails per recipient, records per
        entity). `count_repeats(run)`, where given, counts the effects that
    occurred again under the same idempotency key (an email resent with its
    Message-ID), which `count_effects` counts once. `key_of(task_id)` returns
    the key of a task, or None for a task
        the workload does not know. `running_phase(run, task_id)` returns the
        phase of a running task. A phase in `unsettled_phases` is read again
        SETTLE_SECONDS after the kill.
    """

    name: str
    enqueue: Callable[[ChaosRun], None]
    expected: Collection[Hashable]
    count_effects: Callable[[ChaosRun], Counter]
    key_of: Callable[[str], Hashable | None]
    running_phase: Callable[[ChaosRun, str], str] | None = None
    unsettled_phases: frozenset[str] = frozenset()
    count_repeats: Callable[[ChaosRun], int] | None = None


@dataclass
class ChaosPlan:
    """What a chaos run does and how hard.

    Kills happen at random pauses of `kill_pause` seconds (uniform) until
    `kill_for` seconds after the start, or earlier once the work is done.
    `hunt_share` of them hunt for one of `hunt_phases` in up to
    `hunt_attempts` tries. A hunt for DEQUEUED keeps each target stopped for
    `hunt_hold` seconds before it looks again. With process workers,
    `worker_kill_share` of the kills take one worker process and
    `scheduler_kill_share` the scheduler process, instead of the whole
    consumer. `events` are (seconds after the start, action) pairs, run in
    order on a thread of their own.
    """

    seed: int
    consumers: int = 3
    workers: int = 2
    worker_type: str = "thread"
    kill_pause: tuple[float, float] = (0.4, 1.6)
    kill_for: float = 60.0
    hunt_share: float = 0.5
    hunt_phases: tuple[str, ...] = (DEQUEUED,)
    hunt_attempts: int = 60
    hunt_hold: float = 0.05
    worker_kill_share: float = 0.6
    scheduler_kill_share: float = 0.0
    appendonly: bool = False
    events: tuple[tuple[float, Callable[[ChaosRun], None]], ...] = ()
    drain_timeout: float = 120.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Kill:
    """One SIGKILL: when, what, why, and the phase of each task it held."""

    at: float
    target: str  # "consumer", "worker" or "scheduler"
    trigger: str  # "random", "hunted", "trap" or "manual"
    pids: list[int]
    tasks: dict[str, str]


@dataclass
class ChaosReport:
    """The outcome of one chaos run."""

    scenario: str
    seed: int
    worker_type: str
    consumers: int
    workers: int
    seconds: float
    tasks: int
    states: dict[str, int]
    enqueue_calls: int
    enqueue_errors: int
    spooled: int
    kills: int
    kills_by_target: dict[str, int]
    kills_by_trigger: dict[str, int]
    hunts: dict[str, dict[str, int]]
    killed_phases: dict[str, int]
    outcomes_by_phase: dict[str, dict[str, int]]
    consumer_restarts: int
    worker_restarts: int
    redis_restarts: int
    smtp_outages: list[float]
    recovered: int
    expected_effects: int
    effects: int
    lost: list[str]
    duplicated: dict[str, int]
    repeats: int
    unexpected: list[str]
    failed: dict[str, list[str]]
    not_final: dict[str, list[str]]
    overwritten_by_recovery: list[str]
    lost_from_schedule: list[str]
    task_keys: dict[str, str]
    stranded: dict[str, str]
    unexpected_exits: list[str]
    kill_log: list[Kill]

    def summary(self) -> str:
        """Return the figures as a few lines of text."""
        failed = {reason: len(ids) for reason, ids in self.failed.items()}
        not_final = {state: len(ids) for state, ids in self.not_final.items()}
        title = (
            f"{self.scenario} (seed {self.seed}, {self.consumers} consumers x "
            f"{self.workers} {self.worker_type} workers, {self.seconds:.0f} s)"
        )
        lines = [title]

        lines.append(f"  tasks {self.tasks}, states {self.states}")
        lines.append(
            f"  enqueue calls {self.enqueue_calls}, failed and repeated "
            f"{self.enqueue_errors}, spooled while Redis was unreachable "
            f"{self.spooled}"
        )
        lines.append(
            f"  kills {self.kills} {self.kills_by_target} {self.kills_by_trigger}; "
            f"hunts {self.hunts}"
        )
        lines.append(
            f"  restarts: consumers {self.consumer_restarts}, worker processes "
            f"{self.worker_restarts}, redis {self.redis_restarts}; smtp outages "
            f"{self.smtp_outages}"
        )

        lines.append(f"  tasks held at kill, by phase: {self.killed_phases}")
        for phase, outcomes in sorted(self.outcomes_by_phase.items()):
            lines.append(f"    {phase}: {outcomes}")

        lines.append(
            f"  recovered {self.recovered}; effects {self.effects} of "
            f"{self.expected_effects} expected; lost {len(self.lost)}, duplicated "
            f"{len(self.duplicated)}, unexpected {len(self.unexpected)}; "
            f"repeated under the same idempotency key {self.repeats}"
        )
        lines.append(
            f"  failed {failed}; not final {not_final}, of which overwritten by "
            f"a late recovery {len(self.overwritten_by_recovery)} and lost from "
            f"the schedule {len(self.lost_from_schedule)}; stranded in flight "
            f"{len(self.stranded)}; unexpected consumer exits "
            f"{len(self.unexpected_exits)}"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def tasks_killed_in(self, *phases: str) -> set[str]:
        """Return the ids of tasks that a killed process held in one of
        `phases`."""
        return {
            task_id
            for kill in self.kill_log
            for task_id, phase in kill.tasks.items()
            if phase in phases
        }


@dataclass(frozen=True)
class _Target:
    kind: str
    consumer: ConsumerProcess
    worker_pid: int | None = None


# Processes, read from /proc.


def _stat_fields(path: str) -> list[str] | None:
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may contain spaces.
    return text.rsplit(")", 1)[1].split()


def process_state(pid: int) -> str | None:
    """Return the state letter of a process (R, S, T, Z, ...), None if gone."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    return fields[0] if fields else None


def is_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def children_of(pid: int) -> list[int]:
    """Return the pids of the living child processes of `pid`."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry}/stat")
        if fields and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            children.append(int(entry))
    return sorted(children)


def wait_until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of `pid` is stopped, or the process is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return
        states = [_stat_fields(f"/proc/{pid}/task/{tid}/stat") for tid in threads]
        if all(fields is None or fields[0] in "TtZX" for fields in states):
            return
        time.sleep(0.0005)
    raise TimeoutError(f"process {pid} did not stop within {timeout} s of SIGSTOP")


def set_child_subreaper(enabled: bool) -> None:
    """Make this process adopt orphaned descendants, as init does.

    A process worker whose consumer was killed becomes an orphan. Init reaps
    orphans on a normal host but not in every container, and a zombie's pid
    still looks alive to the storage's dead-worker check."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(
            errno, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(errno)}"
        )


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap(pids: Collection[int], timeout: float = 10.0) -> None:
    """Wait for adopted orphans among `pids` to exit, and reap them."""
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Not (or no longer) our child: its parent reaps it.
                if process_state(pid) in (None, "X"):
                    waiting.discard(pid)
                continue
            if reaped:
                waiting.discard(pid)
        time.sleep(0.005)


class ChaosRun:
    """Redis, SMTP and N consumers of a test's own, and the chaos on them.

    Use as a context manager, then call `run(workload)` once. `env` contains
    the settings the workload needs beyond the harness's own, such as
    TSHJOBS_ERP_DATABASE_URL. `smtp_class` may be a CaptureServer subclass.
    """

    def __init__(
        self,
        directory: Path,
        plan: ChaosPlan,
        scenario: str,
        env: dict[str, str],
        smtp_class: type[CaptureServer] = CaptureServer,
    ):
        self.directory = Path(directory)
        self.plan = plan
        self.scenario = scenario
        self.rng = random.Random(plan.seed)
        self.data_dir = self.directory / "data"
        self.logs_dir = self.directory / "logs"
        self.redis_server = RedisServer(
            self.directory / "redis", appendonly=plan.appendonly
        )
        self.smtp = smtp_class(
            self.directory / "mail", host="127.0.0.1", port=free_port()
        )
        self.env = {
            "TSHJOBS_ENV_FILE": "",
            "TSHJOBS_DATA_DIR": str(self.data_dir),
            "TSHJOBS_SECRET_KEY": secrets.token_hex(32),
            "TSHJOBS_REDIS_URL": self.redis_server.url,
            "TSHJOBS_SMTP_HOST": "127.0.0.1",
            "TSHJOBS_SMTP_PORT": str(self.smtp.requested_port),
            "TSHJOBS_SMTP_TIMEOUT": "5",
            "TSHJOBS_MAIL_FROM": "TSH Sales <sales@tsh.example>",
            "TSHJOBS_RETRY_DELAYS": "0.5,1,2",
            "TSHJOBS_WORKERS": str(plan.workers),
            "TSHJOBS_WORKER_TYPE": plan.worker_type,
            "TSHJOBS_TASK_MODULES": "tasks",
            **plan.env,
            **env,
        }
        self.huey = None
        self.workload: Workload | None = None
        self.task_ids: list[str] = []
        self.enqueue_calls = 0
        self.enqueue_errors = 0
        self.kills: list[Kill] = []
        self.hunts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.consumers: list[ConsumerProcess] = []
        self.consumer_starts = 0
        self.unexpected_exits: list[str] = []
        self.redis_restarts = 0
        self.smtp_outages: list[float] = []
        self.started = 0.0

        # Serialises SIGSTOP, SIGKILL, consumer starts and Redis restarts
        # between the chaos thread, the event thread and the SMTP server.
        self._lock = threading.RLock()
        # Processes stopped and waiting for a delayed SIGKILL; nothing may
        # let them continue.
        self._doomed: set[int] = set()
        # Kills skipped because Redis was restarting.
        self.chaos_redis_errors = 0
        self._stop_chaos = threading.Event()
        self._closing = threading.Event()
        # Set while no workload is enqueueing, so that idle() also works in
        # runs that a test drives by hand.
        self._workload_done = threading.Event()
        self._workload_done.set()
        self._events_done = threading.Event()
        self._errors: list[BaseException] = []
        self._idle_since: float | None = None
        self._timers: list[threading.Timer] = []

    # Set-up and tear-down.

    def __enter__(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        set_child_subreaper(True)
        self.redis_server.start()
        self.smtp.start()
        self.huey = get_huey(load_settings(self.env))
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop_chaos.set()
        self._closing.set()
        for timer in self._timers:
            timer.cancel()
        with self._lock:
            for pid in self._doomed:
                _signal(pid, signal.SIGKILL)
            for consumer in self.consumers:
                self._kill_consumer_now(consumer)
            self.consumers = []
        self.smtp.stop()
        self.redis_server.stop()
        set_child_subreaper(False)

    @property
    def audit(self):
        return self.huey.audit

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def call(self, task_function, *args, **kwargs) -> str:
        """Enqueue a task as the ERP does, by calling its task function; call
        again while Redis is unreachable. Return the task id."""
        deadline = time.monotonic() + 60
        while True:
            self.enqueue_calls += 1
            try:
                queued = task_function(*args, **kwargs)
            except RedisError:
                self.enqueue_errors += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            self.task_ids.append(queued.id)
            return queued.id

    # Events: Redis restarts and SMTP outages.

    def restart_redis(self) -> None:
        """Stop redis-server (SIGTERM: it writes its append-only file) and
        start it again on the same port and directory."""
        with self._lock:
            self.redis_server.stop()
            self.redis_server.start()
            self.redis_restarts += 1

    def smtp_outage(self, seconds: float) -> None:
        """Stop the SMTP server, closing its connections, for `seconds`, then
        start it again on the same port."""
        self.smtp.stop()
        time.sleep(seconds)
        self.smtp.start()
        self.smtp_outages.append(seconds)

    # Consumers.

    def start_consumer(self) -> ConsumerProcess:
        self.consumer_starts += 1
        log_path = self.logs_dir / f"consumer-{self.consumer_starts:03d}.log"
        consumer = ConsumerProcess(self.env, log_path).start()
        self.consumers.append(consumer)
        return consumer

    def _replace_dead_consumers(self) -> None:
        for consumer in list(self.consumers):
            if consumer.process is None:
                self.consumers.remove(consumer)
            elif consumer.process.poll() is not None:
                code = consumer.process.returncode
                consumer.log_file.close()
                tail = consumer.log()[-2000:]
                self.unexpected_exits.append(
                    f"{consumer.log_path.name} exited with {code}: {tail}"
                )
                self.consumers.remove(consumer)
        while len(self.consumers) < self.plan.consumers:
            self.start_consumer()

    def _kill_consumer_now(self, consumer: ConsumerProcess) -> None:
        if consumer.process is None:
            return
        children = children_of(consumer.process.pid)
        for pid in children:
            _signal(pid, signal.SIGKILL)
        consumer.kill()
        _reap(children)

    # Targets, their tasks and phases.

    def _is_doomed(self, consumer: ConsumerProcess) -> bool:
        if not self._doomed:
            return False
        pid = consumer.process.pid
        return bool(self._doomed & {pid, *children_of(pid)})

    def _pick_target(self, rng: random.Random) -> _Target | None:
        candidates = [
            consumer
            for consumer in self.consumers
            if consumer.process is not None
            and consumer.process.poll() is None
            and not self._is_doomed(consumer)
        ]
        if not candidates:
            return None
        consumer = rng.choice(candidates)
        if self.plan.worker_type != "process":
            return _Target("consumer", consumer)

        draw = rng.random()
        if draw >= self.plan.worker_kill_share + self.plan.scheduler_kill_share:
            return _Target("consumer", consumer)
        workers, others = self._children_by_role(consumer.process.pid)
        if draw < self.plan.worker_kill_share and workers:
            return _Target("worker", consumer, rng.choice(workers))
        if draw >= self.plan.worker_kill_share and others:
            return _Target("scheduler", consumer, rng.choice(others))
        return _Target("consumer", consumer)

    def _children_by_role(self, pid: int) -> tuple[list[int], list[int]]:
        """Split a consumer's child processes into workers, which beat a
        heartbeat in Redis, and the rest: the scheduler, or a worker that has
        not taken its first task yet."""
        beating = set()
        prefix = self.huey.storage.heartbeat_prefix
        for key in self.huey.storage.conn.scan_iter(match=prefix + "*"):
            owner = key.decode()[len(prefix) :]
            beating.add(int(owner.split(":")[1]))
        children = children_of(pid)
        workers = [child for child in children if child in beating]
        return workers, [child for child in children if child not in beating]

    def _stop_target(self, target: _Target) -> list[int] | None:
        """SIGSTOP the target's processes and return their pids, children
        first; None when the target is gone."""
        if target.worker_pid is not None:
            pids = [target.worker_pid]
        else:
            if target.consumer.process is None:
                return None
            consumer_pid = target.consumer.process.pid
            _signal(consumer_pid, signal.SIGSTOP)
            pids = [*children_of(consumer_pid), consumer_pid]
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        for pid in pids:
            wait_until_stopped(pid)
        if not is_alive(pids[-1]):
            self._continue(pids)
            return None
        return pids

    def _continue(self, pids: list[int]) -> None:
        for pid in pids:
            _signal(pid, signal.SIGCONT)

    def tasks_in_flight(self, pids: Collection[int] | None) -> list[tuple[str, int]]:
        """Return (task id, pid) for each task in the in-flight lists of
        `pids`, or of every process for None."""
        held = []
        for key, entries in self.huey.storage.inflight_items().items():
            pid = owner_pid(key)
            if pids is not None and pid not in pids:
                continue
            for data in entries:
                held.append((self.huey.serializer.deserialize(data).id, pid))
        return held

    def phase_of(self, task_id: str, pid: int) -> str:
        """Return how far a task held by the stopped process `pid` had got.

        It reads the audit events since the task's last `started` event, not
        the task's state, which a late `recovered` write can set back to
        queued while the task runs."""
        events = self.audit.events(task_id)
        starts = [i for i, event in enumerate(events) if event["event"] == "started"]
        if not starts or _started_pid(events[starts[-1]]) != pid:
            return DEQUEUED
        after = {event["event"] for event in events[starts[-1] + 1 :]}
        if after & set(FINAL_STATES):
            return FINISHED
        if after & set(RETRY_EVENTS):
            return RESCHEDULED
        if self.workload is not None and self.workload.running_phase:
            return self.workload.running_phase(self, task_id)
        return RUNNING

    def _phases(self, pids: list[int]) -> dict[str, str]:
        return {
            task_id: self.phase_of(task_id, pid)
            for task_id, pid in self.tasks_in_flight(pids)
        }

    # Kills.

    def _kill(self, target: _Target, pids: list[int], phases, trigger: str) -> Kill:
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        if target.kind == "consumer":
            target.consumer.kill()
            _reap(pids[:-1])
        kill = Kill(round(self.elapsed(), 2), target.kind, trigger, pids, phases)
        self.kills.append(kill)
        self._settle_later(kill)
        return kill

    def _settle_later(self, kill: Kill) -> None:
        """Read again, SETTLE_SECONDS after the kill, the phases that work
        outside the killed process could still change, such as the SMTP
        server storing a message whose data it had received."""
        unsettled = [
            task_id
            for task_id, phase in kill.tasks.items()
            if self.workload is not None and phase in self.workload.unsettled_phases
        ]
        if not unsettled:
            return

        def settle():
            for task_id in unsettled:
                kill.tasks[task_id] = self.workload.running_phase(self, task_id)

        timer = threading.Timer(SETTLE_SECONDS, settle)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def kill_random(self, rng: random.Random) -> Kill | None:
        """Kill a random target wherever its tasks are."""
        with self._lock:
            target = self._pick_target(rng)
            if target is None:
                return None
            pids = self._stop_target(target)
            if pids is None:
                return None
            try:
                phases = self._phases(pids)
            except BaseException:
                self._continue(pids)
                raise
            kill = self._kill(target, pids, phases, "random")
            self._replace_dead_consumers()
        return kill

    def hunt(self, rng: random.Random, target_phase: str) -> Kill | None:
        """Stop random targets until one has a task in `target_phase` in its
        in-flight lists, and kill that one. Let the others continue."""
        for _ in range(self.plan.hunt_attempts):
            if self._stop_chaos.is_set():
                return None
            with self._lock:
                target = self._pick_target(rng)
                pids = self._stop_target(target) if target else None
                if pids is not None:
                    try:
                        phases = self._phases(pids)
                        if target_phase == DEQUEUED and DEQUEUED not in phases.values():
                            # A worker stopped in BLMOVE is still blocked in
                            # Redis, which moves the next task into its list.
                            time.sleep(self.plan.hunt_hold)
                            phases = self._phases(pids)
                    except BaseException:
                        self._continue(pids)
                        raise
                    if target_phase in phases.values():
                        kill = self._kill(target, pids, phases, "hunted")
                        self._replace_dead_consumers()
                        self.hunts[target_phase][0] += 1
                        break
                    self._continue(pids)
            time.sleep(rng.uniform(0.002, 0.02))
        else:
            self.hunts[target_phase][1] += 1
            return None
        return kill

    def kill_consumer(
        self,
        consumer: ConsumerProcess,
        trigger: str,
        when: Callable[[dict[str, str]], bool] | None = None,
    ) -> Kill | None:
        """Stop a whole consumer and kill it, recording its tasks' phases.
        With `when`, kill it only if `when(phases)` is true, and otherwise
        let it continue and return None."""
        with self._lock:
            target = _Target("consumer", consumer)
            pids = self._stop_target(target)
            if pids is None:
                return None
            try:
                phases = self._phases(pids)
                chosen = when is None or when(phases)
            except BaseException:
                self._continue(pids)
                raise
            if not chosen:
                self._continue(pids)
                return None
            kill = self._kill(target, pids, phases, trigger)
            self._replace_dead_consumers()
            return kill

    def kill_task_holder(self, task_id: str, trigger: str, delay: float = 0.0) -> bool:
        """Stop the process running `task_id` now, and kill it now or after
        `delay` seconds, on a timer thread. Return False when the task does
        not run in one of this run's processes."""
        row = self.audit.get(task_id)
        if row is None or row["state"] != "running":
            return False
        pid = row["pid"]
        with self._lock:
            target = self._target_of(pid)
            if target is None or pid in self._doomed:
                return False
            pids = self._stop_target(target)
            if pids is None:
                return False
            try:
                phases = self._phases(pids)
            except BaseException:
                self._continue(pids)
                raise
            if not delay:
                self._kill(target, pids, phases, trigger)
                self._replace_dead_consumers()
                return True
            self._doomed.update(pids)

        def kill_later():
            with self._lock:
                self._doomed.difference_update(pids)
                self._kill(target, pids, phases, trigger)
                self._replace_dead_consumers()

        timer = threading.Timer(delay, kill_later)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return True

    def _target_of(self, pid: int) -> _Target | None:
        """Return the target for a process of this run: a consumer, or a
        worker process of one; None for any other process."""
        for consumer in self.consumers:
            if consumer.process is None or consumer.process.poll() is not None:
                continue
            if pid == consumer.process.pid:
                return _Target("consumer", consumer)
            if pid in children_of(consumer.process.pid):
                return _Target("worker", consumer, pid)
        return None

    # The run.

    def _thread(self, name: str, target: Callable[[], None], done=None):
        def body():
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - raised again by run()
                self._errors.append(exc)
            finally:
                if done is not None:
                    done.set()

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        return thread

    def _run_events(self) -> None:
        for at, action in sorted(self.plan.events, key=lambda event: event[0]):
            if self._closing.wait(max(0.0, at - self.elapsed())):
                return
            action(self)

    def _chaos(self) -> None:
        rng = random.Random(self.rng.random())
        while not self._stop_chaos.wait(rng.uniform(*self.plan.kill_pause)):
            if self.elapsed() > self.plan.kill_for:
                return
            try:
                if rng.random() < self.plan.hunt_share:
                    self.hunt(rng, rng.choice(self.plan.hunt_phases))
                else:
                    self.kill_random(rng)
            except RedisError:
                # Redis is restarting; the stopped processes were continued.
                self.chaos_redis_errors += 1

    def _raise_thread_errors(self) -> None:
        if self._errors:
            raise self._errors[0]

    def idle(self) -> bool:
        """Tell whether nothing left can change a task. The workload has
        enqueued everything, and the spool of tasks enqueued while Redis was
        unreachable, the queue and the schedule are empty. Every task still
        in an in-flight list belongs to a live process and is in a final
        state, so only its acknowledgement is left."""
        if not self._workload_done.is_set():
            return False
        if spool_backlog(self.huey.settings)["pending"]:
            return False
        storage = self.huey.storage
        try:
            if storage.queue_size() or storage.schedule_size():
                return False
            for key, entries in storage.inflight_items().items():
                if not is_alive(owner_pid(key)):
                    return False
                for data in entries:
                    row = self.audit.get(self.huey.serializer.deserialize(data).id)
                    if row is None or row["state"] not in FINAL_STATES:
                        return False
        except RedisError:
            return False
        return True

    def all_final(self) -> bool:
        """Tell whether every task is in the audit log, in a final state."""
        rows = self.audit.db.query("SELECT id, state FROM tasks")
        states = {row["id"]: row["state"] for row in rows}
        if any(state not in FINAL_STATES for state in states.values()):
            return False
        return all(task_id in states for task_id in self.task_ids)

    def done(self) -> bool:
        """Tell whether the work is done: Redis is idle and every task final,
        or Redis has stayed idle for IDLE_SECONDS, so that the tasks not
        final by then never will be."""
        if not self.idle():
            self._idle_since = None
            return False
        if self.all_final():
            return True
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        return time.monotonic() - self._idle_since >= IDLE_SECONDS

    def wait_until_done(self, timeout: float) -> bool:
        """Wait until `done()`; return False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_thread_errors()
            if self.done():
                return True
            time.sleep(0.5)
        return False

    def run(self, workload: Workload) -> ChaosReport:
        """Run `workload` under the plan's chaos and return the report."""
        self.workload = workload
        self.started = time.monotonic()
        self._workload_done.clear()
        with self._lock:
            self._replace_dead_consumers()

        workload_thread = self._thread(
            "workload", lambda: workload.enqueue(self), self._workload_done
        )
        events_thread = self._thread("events", self._run_events, self._events_done)
        chaos_thread = self._thread("chaos", self._chaos)
        while self.elapsed() < self.plan.kill_for:
            self._raise_thread_errors()
            if self._events_done.is_set() and self.done():
                break
            time.sleep(0.5)
        self._stop_chaos.set()
        chaos_thread.join()
        events_thread.join(timeout=self.plan.drain_timeout)
        workload_thread.join(timeout=self.plan.drain_timeout)
        self._join_timers()
        with self._lock:
            self._replace_dead_consumers()
        self.wait_until_done(self.plan.drain_timeout)
        self._raise_thread_errors()

        stranded = self._stop_consumers()
        self._join_timers()
        return self._report(stranded)

    def _join_timers(self) -> None:
        # A delayed kill's timer starts a settle timer, so join until none is
        # left running.
        while any(timer.is_alive() for timer in self._timers):
            for timer in list(self._timers):
                timer.join()

    def _stop_consumers(self) -> dict[str, str]:
        """Stop every consumer gracefully. Tasks still in flight then were
        never acknowledged by a live worker; one more consumer recovers and
        runs them. Return their ids and audit states before that."""
        with self._lock:
            for consumer in self.consumers:
                consumer.stop()
            self.consumers = []

        stranded = {}
        for task_id, _pid in self.tasks_in_flight(None):
            row = self.audit.get(task_id)
            stranded[task_id] = row["state"] if row else "missing"
        if stranded:
            consumer = self.start_consumer()
            self.wait_until_done(60)
            consumer.stop()
            self.consumers = []
        return stranded

    # The report.

    def _report(self, stranded: dict[str, str]) -> ChaosReport:
        workload = self.workload
        rows = list(self.audit.db.query("SELECT id, state, error FROM tasks"))
        states = Counter(row["state"] for row in rows)
        failed: dict[str, list[str]] = defaultdict(list)
        not_final: dict[str, list[str]] = defaultdict(list)
        by_id = {row["id"]: row for row in rows}
        for row in rows:
            if row["state"] == "failed":
                failed[failure_reason(row["error"])].append(row["id"])
            elif row["state"] not in FINAL_STATES:
                not_final[row["state"]].append(row["id"])
        for task_id in self.task_ids:
            if task_id not in by_id:
                not_final["missing"].append(task_id)

        effects = workload.count_effects(self)
        expected = set(workload.expected)
        outcomes: dict[str, Counter] = defaultdict(Counter)
        phases: Counter = Counter()
        for kill in self.kills:
            for task_id, phase in kill.tasks.items():
                phases[phase] += 1
                outcomes[phase][
                    self._outcome(by_id.get(task_id), effects, task_id)
                ] += 1

        restarts = sum(
            path.read_text(errors="replace").count("died, restarting")
            for path in self.logs_dir.glob("consumer-*.log")
        )
        report = ChaosReport(
            scenario=self.scenario,
            seed=self.plan.seed,
            worker_type=self.plan.worker_type,
            consumers=self.plan.consumers,
            workers=self.plan.workers,
            seconds=round(self.elapsed(), 1),
            tasks=len(rows),
            states=dict(sorted(states.items())),
            enqueue_calls=self.enqueue_calls,
            enqueue_errors=self.enqueue_errors,
            spooled=self._count_events("spooled"),
            kills=len(self.kills),
            kills_by_target=dict(Counter(kill.target for kill in self.kills)),
            kills_by_trigger=dict(Counter(kill.trigger for kill in self.kills)),
            hunts={
                phase: {"found": found, "missed": missed}
                for phase, (found, missed) in sorted(self.hunts.items())
            },
            killed_phases=dict(sorted(phases.items())),
            outcomes_by_phase={
                phase: dict(counts) for phase, counts in sorted(outcomes.items())
            },
            consumer_restarts=self.consumer_starts - self.plan.consumers,
            worker_restarts=restarts,
            redis_restarts=self.redis_restarts,
            smtp_outages=self.smtp_outages,
            recovered=self._count_events("recovered"),
            expected_effects=len(expected),
            effects=sum(effects.values()),
            lost=sorted(str(key) for key in expected if not effects.get(key)),
            duplicated={
                str(key): count for key, count in sorted(effects.items()) if count > 1
            },
            repeats=workload.count_repeats(self) if workload.count_repeats else 0,
            unexpected=sorted(str(key) for key in effects if key not in expected),
            failed=dict(failed),
            not_final=dict(not_final),
            overwritten_by_recovery=[
                task_id
                for ids in not_final.values()
                for task_id in ids
                if self._overwritten_by_recovery(task_id)
            ],
            lost_from_schedule=[
                task_id
                for task_id in not_final.get("retrying", [])
                if self._lost_from_schedule(task_id)
            ],
            task_keys={
                task_id: str(workload.key_of(task_id))
                for task_id in [
                    *(task_id for kill in self.kills for task_id in kill.tasks),
                    *(task_id for ids in not_final.values() for task_id in ids),
                ]
            },
            stranded=stranded,
            unexpected_exits=self.unexpected_exits,
            kill_log=self.kills,
        )
        REPORTS.append(report)
        (self.directory / "report.json").write_text(report.to_json())
        return report

    def _count_events(self, event: str) -> int:
        return self.audit.db.execute(
            "SELECT count(*) FROM task_events WHERE event = ?", [event]
        ).fetchone()[0]

    def _overwritten_by_recovery(self, task_id: str) -> bool:
        """Tell whether a task finished and then a `recovered` event, written
        by a consumer that had already put the task back on the queue, set
        its state to queued again."""
        row = self.audit.get(task_id)
        events = [event["event"] for event in self.audit.events(task_id)]
        if row is None or row["state"] != "queued" or "started" not in events:
            return False
        last_start = len(events) - 1 - events[::-1].index("started")
        after = events[last_start + 1 :]
        finished = any(event in FINAL_STATES for event in after)
        return finished and "recovered" in after

    def _lost_from_schedule(self, task_id: str) -> bool:
        """Tell whether a task waits for a retry that nothing will run: its
        last event put it on the schedule, and Redis has gone idle."""
        events = self.audit.events(task_id)
        return bool(events) and events[-1]["event"] == "scheduled" and self.idle()

    def _outcome(self, row, effects: Counter, task_id: str) -> str:
        if row is None:
            state = "missing"
        elif row["state"] == "failed":
            state = f"failed {failure_reason(row['error'])}"
        else:
            state = row["state"]
        key = self.workload.key_of(task_id)
        count = effects.get(key, 0) if key is not None else "?"
        return f"{state}, effects {count}"


def _started_pid(event: dict) -> int | None:
    """Return the pid in a `started` event's detail, "<host> pid <pid>
    <thread>"."""
    words = event["detail"].split()
    if "pid" not in words or words.index("pid") + 1 >= len(words):
        return None
    number = words[words.index("pid") + 1]
    return int(number) if number.isdigit() else None


def owner_pid(inflight_key: str) -> int:
    """Return the pid in an in-flight list's key,
    huey.inflight.<queue>|<host>:<pid>:<token>|<thread>."""
    owner = inflight_key.split("|", 2)[1]
    return int(owner.split(":")[1])


def failure_reason(error: str | None) -> str:
    """Return the class of a failed task's error, e.g. "DeliveryUnknown"."""
    if not error:
        return "(no error recorded)"
    return error.split(":", 1)[0].strip()
