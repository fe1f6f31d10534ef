"""Time N enqueue calls of one queue system, in a process of its own.

`bench.enqueue_latency` runs this module once per system:

    python -m bench.producers SYSTEM --redis-port PORT --calls N --warmup W \
        --output FILE

It writes the nanoseconds of each timed call, the process's memory readings
and the queue checks as JSON to FILE. Only standard-library modules are
imported before the first memory reading, so each system's imports count
toward its own row. The tshjobs systems read their settings from the TSHJOBS_*
environment variables that the parent sets.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REDIS_HOST = "127.0.0.1"

# Redis databases: Celery's broker and result backend use db 1, the other
# systems db 0.
DEFAULT_DB = 0
CELERY_DB = 1

# Calls timed with an enqueue function that does nothing, to estimate what the
# timing loop itself adds to each measured call.
TIMER_OVERHEAD_CALLS = 10_000

# Calls per serializer in the tshjobs child's serializer measurement.
SERIALIZER_CALLS = 10_000

GUARDED_SOCKET_EVENTS = (
    "socket.connect",
    "socket.sendto",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
)


@dataclass
class Producer:
    """One system's enqueue call and the checks run after the timed calls.

    `check_extra` receives the number of enqueue calls made, raises
    RuntimeError if the system's own records disagree, and returns what it
    counted.
    """

    enqueue: Callable[[int], object]
    count_queued: Callable[[], int]
    check_extra: Callable[[int], dict] = lambda calls_made: {}


class ConnectionGuard:
    """A `sys.addaudithook` hook that stops any connection but one address.

    The hook receives every socket connect and name lookup in the process,
    including ones a library makes on its own (such as Celery falling back to
    its default AMQP broker on localhost). A forbidden call raises
    RuntimeError, which client libraries do not retry as a connection error,
    and is recorded so the child fails even if a library swallows the error.
    """

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.connections = 0
        self.violations: list[str] = []

    def __call__(self, event: str, args: tuple) -> None:
        if not event.startswith("socket."):
            return
        if event not in GUARDED_SOCKET_EVENTS:
            return

        if event in ("socket.connect", "socket.sendto"):
            address = args[1]
            allowed = isinstance(address, tuple) and address[:2] == (
                self.host,
                self.port,
            )
            if allowed and event == "socket.connect":
                self.connections += 1
        else:
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode(errors="replace")
            address = host
            allowed = host == self.host

        if not allowed:
            message = f"{event} to {address!r}: only {self.host}:{self.port} is allowed"
            self.violations.append(message)
            raise RuntimeError(message)


def read_memory_kib() -> tuple[int, int]:
    """Return this process's resident set size and its peak so far, in KiB.

    Reads VmRSS and VmHWM from /proc/self/status, so it works on Linux only.
    """
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _unit = line.split()
                values[name.rstrip(":")] = int(value)
    return values["VmRSS"], values["VmHWM"]


def time_calls(enqueue: Callable[[int], object], first_id: int, count: int) -> array:
    """Call `enqueue(order_id)` `count` times and return each call's nanoseconds."""
    timings = array("q", bytes(8 * count))
    clock = time.perf_counter_ns
    for index in range(count):
        order_id = first_id + index
        start = clock()
        enqueue(order_id)
        timings[index] = clock() - start
    return timings


def measure_timer_overhead() -> int:
    """Return the median nanoseconds that `time_calls` measures for a no-op."""
    timings = sorted(time_calls(lambda order_id: None, 0, TIMER_OVERHEAD_CALLS))
    return timings[len(timings) // 2]


# Producers, one per system. Each imports its library when called, after the
# first memory reading.


def tshjobs_producer(port: int, audit: bool) -> Producer:
    from bench.tshjobs_tasks import confirm_order
    from tshjobs.queue import huey

    expected_url = f"redis://{REDIS_HOST}:{port}/{DEFAULT_DB}"
    if huey.settings.redis_url != expected_url:
        raise RuntimeError(
            f"TSHJOBS_REDIS_URL is {huey.settings.redis_url!r}, expected"
            f" {expected_url!r}: run this module through bench.enqueue_latency"
        )
    if not audit:
        disconnect_audit_handler(huey)

    def check_audit_rows(calls_made: int) -> dict:
        rows = huey.audit.db.execute("SELECT count(*) FROM tasks").fetchone()[0]
        expected = calls_made if audit else 0
        if rows != expected:
            raise RuntimeError(
                f"{rows} audit rows after {calls_made} enqueue calls, expected"
                f" {expected}"
            )
        return {"audit_rows": rows}

    return Producer(
        enqueue=confirm_order,
        count_queued=huey.pending_count,
        check_extra=check_audit_rows,
    )


def disconnect_audit_handler(huey) -> None:
    """Stop the tshjobs Huey from writing `queued` audit rows.

    `ApplianceHuey.enqueue` writes the row through `AuditLog.record_enqueued`
    after the task is in Redis; this replaces that method on the instance's
    audit log with one that does nothing, leaving the rest of the call as
    shipped.
    """
    audit = huey.audit
    if not callable(getattr(audit, "record_enqueued", None)):
        raise TypeError(
            "AuditLog.record_enqueued not found: update disconnect_audit_handler"
            " to the new wiring"
        )
    audit.record_enqueued = lambda *args, **kwargs: None


def measure_serializers() -> dict:
    """Time tshjobs' signed serializer and Huey's plain pickle serializer.

    Both serialize the message of one benchmark task, as `Huey.enqueue` does.
    Returns the mean nanoseconds per call and the message sizes in bytes.
    """
    from huey.serializer import Serializer

    from bench.tshjobs_tasks import confirm_order
    from tshjobs.queue import huey

    message = huey._registry.create_message(confirm_order.s(123_456))
    serializers = {"signed": huey.serializer, "pickle": Serializer()}
    measured = {}
    for name, serializer in serializers.items():
        start = time.perf_counter_ns()
        for _ in range(SERIALIZER_CALLS):
            serializer.serialize(message)
        elapsed = time.perf_counter_ns() - start
        measured[f"{name}_serialize_ns"] = elapsed // SERIALIZER_CALLS
        measured[f"{name}_message_bytes"] = len(serializer.serialize(message))
    return measured


def huey_producer(port: int, results: bool) -> Producer:
    from huey import RedisHuey

    from bench import jobs

    huey = RedisHuey(
        "bench", results=results, url=f"redis://{REDIS_HOST}:{port}/{DEFAULT_DB}"
    )
    confirm_order = huey.task()(jobs.confirm_order)
    return Producer(enqueue=confirm_order, count_queued=huey.pending_count)


def celery_producer(port: int, results: bool) -> Producer:
    import redis
    from celery import Celery

    from bench import jobs

    url = f"redis://{REDIS_HOST}:{port}/{CELERY_DB}"
    app = Celery("bench", broker=url, backend=url if results else None)
    # Celery lets CELERY_BROKER_URL and CELERY_RESULT_BACKEND override the
    # arguments above. The parent removes them from the environment, and this
    # check catches any other source of configuration.
    expected_backend = url if results else None
    if app.conf.broker_url != url or app.conf.result_backend != expected_backend:
        raise RuntimeError(
            f"Celery is configured with broker {app.conf.broker_url!r} and result"
            f" backend {app.conf.result_backend!r}, expected {url!r} and"
            f" {expected_backend!r}"
        )

    confirm_order = app.task(name="bench.jobs.confirm_order")(jobs.confirm_order)
    client = redis.Redis(host=REDIS_HOST, port=port, db=CELERY_DB)
    queue_name = app.conf.task_default_queue
    return Producer(
        enqueue=confirm_order.delay,
        count_queued=lambda: client.llen(queue_name),
    )


def rq_producer(port: int) -> Producer:
    import redis
    from rq import Queue

    from bench import jobs

    connection = redis.Redis(host=REDIS_HOST, port=port, db=DEFAULT_DB)
    queue = Queue("bench", connection=connection)
    return Producer(
        enqueue=functools.partial(queue.enqueue, jobs.confirm_order),
        count_queued=lambda: queue.count,
    )


PRODUCERS: dict[str, Callable[[int], Producer]] = {
    "tshjobs": functools.partial(tshjobs_producer, audit=True),
    "tshjobs-no-audit": functools.partial(tshjobs_producer, audit=False),
    "huey": functools.partial(huey_producer, results=False),
    "huey-results": functools.partial(huey_producer, results=True),
    "celery": functools.partial(celery_producer, results=False),
    "celery-results": functools.partial(celery_producer, results=True),
    "rq": rq_producer,
}


def run(system: str, port: int, calls: int, warmup: int) -> dict:
    """Set up `system`, warm it up, time `calls` enqueue calls and check them."""
    guard = ConnectionGuard(REDIS_HOST, port)
    sys.addaudithook(guard)
    timer_overhead_ns = measure_timer_overhead()
    rss_start_kib, _ = read_memory_kib()

    producer = PRODUCERS[system](port)
    first_call = time_calls(producer.enqueue, 1, 1)
    time_calls(producer.enqueue, 2, warmup - 1)
    _, peak_before_calls_kib = read_memory_kib()

    started = time.perf_counter_ns()
    timings = time_calls(producer.enqueue, warmup + 1, calls)
    wall_ns = time.perf_counter_ns() - started
    rss_end_kib, peak_end_kib = read_memory_kib()

    queued = producer.count_queued()
    expected = warmup + calls
    if queued != expected:
        raise RuntimeError(
            f"{system}: {queued} messages in the queue after {expected} enqueue"
            " calls, so some were lost"
        )
    if guard.violations:
        raise RuntimeError(f"{system}: forbidden network access: {guard.violations}")

    result = {
        "system": system,
        "timings_ns": timings.tolist(),
        "wall_ns": wall_ns,
        "first_call_ns": first_call[0],
        "timer_overhead_ns": timer_overhead_ns,
        "rss_start_kib": rss_start_kib,
        "peak_rss_before_calls_kib": peak_before_calls_kib,
        "rss_end_kib": rss_end_kib,
        "peak_rss_kib": peak_end_kib,
        "queued": queued,
        "connections": guard.connections,
    }
    result.update(producer.check_extra(expected))
    if system == "tshjobs":
        result["serializers"] = measure_serializers()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.producers",
        description="Time enqueue calls of one system (run by bench.enqueue_latency).",
    )
    parser.add_argument("system", choices=sorted(PRODUCERS))
    parser.add_argument(
        "--redis-port", type=int, required=True, help="Port of Redis on 127.0.0.1."
    )
    parser.add_argument("--calls", type=int, required=True, help="Timed calls.")
    parser.add_argument(
        "--warmup", type=int, required=True, help="Untimed calls before, at least 1."
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="JSON file to write."
    )
    parser.add_argument(
        "--cpu", type=int, help="CPU number to pin this process to (default: none)."
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 1:
        parser.error("--calls and --warmup must be at least 1")

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = run(args.system, args.redis_port, args.calls, args.warmup)
    args.output.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
