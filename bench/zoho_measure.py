"""Measurements of the Zoho sync benchmark: the sandbox's requests by window,
and the resident memory of a consumer and its child processes.

Linux only: memory comes from /proc.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

# The sandbox logs one INFO record per request from this logger, with the
# method, path, status ("dropped" for a dropped connection), milliseconds
# and fault as its arguments (tshjobs/zoho/sandbox/app.py, log_request).
SANDBOX_LOGGER = "tshjobs.zoho.sandbox.app"
API_PREFIX = "/books/v3/"


@dataclass(frozen=True)
class ApiRequest:
    """One Books API request: arrival time (Unix) and HTTP status, or None
    for a dropped connection."""

    at: float
    status: int | None


class RequestLog(logging.Handler):
    """Collects the Books API requests that the sandbox logs in this process.

    The arrival time is the record's time less the request's duration, so a
    request counts in the window in which the sandbox's limits saw it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self._requests: list[ApiRequest] = []
        self._previous_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        _method, path, status, elapsed_ms, _fault = record.args
        if not str(path).startswith(API_PREFIX):
            return
        code = status if isinstance(status, int) else None
        self._requests.append(ApiRequest(record.created - elapsed_ms / 1000, code))

    def attach(self) -> None:
        logger = logging.getLogger(SANDBOX_LOGGER)
        self._previous_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def detach(self) -> None:
        logger = logging.getLogger(SANDBOX_LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._previous_level)

    def take(self) -> list[ApiRequest]:
        """Return the requests logged since the last call, oldest first."""
        with self.lock:
            requests, self._requests = self._requests, []
        return sorted(requests, key=lambda request: request.at)


def count_by_window(requests: list[ApiRequest], window_seconds: float) -> list[dict]:
    """Count requests and 429s in each window, from the first request's window
    to the last's, windows without a request included. Windows are the
    sandbox's: window n covers [n * window_seconds, (n + 1) * window_seconds)
    of Unix time."""
    if not requests:
        return []
    first = math.floor(requests[0].at / window_seconds)
    last = math.floor(requests[-1].at / window_seconds)
    windows = [
        {"start": (first + i) * window_seconds, "requests": 0, "rate_limited": 0}
        for i in range(last - first + 1)
    ]
    for request in requests:
        window = windows[math.floor(request.at / window_seconds) - first]
        window["requests"] += 1
        if request.status == 429:
            window["rate_limited"] += 1
    for window in windows:
        window["admitted"] = window["requests"] - window["rate_limited"]
    return windows


def summarize_windows(windows: list[dict], limit: int) -> dict:
    """Return the 429s after the first window, and the use of the limit in the
    full windows: every window after the first and before the last."""
    full = windows[1:-1]
    shares = [window["admitted"] / limit for window in full]
    return {
        "windows": len(windows),
        "full_windows": len(full),
        "mean_utilisation": sum(shares) / len(shares) if shares else None,
        "min_utilisation": min(shares) if shares else None,
        "max_admitted_in_a_window": max(
            (window["admitted"] for window in windows), default=0
        ),
        "rate_limited_first_window": windows[0]["rate_limited"] if windows else 0,
        "rate_limited_after_first_window": sum(w["rate_limited"] for w in windows[1:]),
    }


def read_rss_kib(pid: int) -> int:
    """Return the resident set size of process `pid` in KiB, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Return the ids of every process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name, in brackets, may contain spaces: the parent id
        # is the second field after its closing bracket.
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))

    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class RssSampler:
    """Samples the summed resident memory of a process and its descendants
    every `interval` seconds, in a thread, and keeps the peak."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.max_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler")

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        pids = [self.pid, *descendants(self.pid)]
        self.peak_kib = max(self.peak_kib, sum(read_rss_kib(pid) for pid in pids))
        self.max_processes = max(self.max_processes, len(pids))
        self.samples += 1

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()
        self.sample()
