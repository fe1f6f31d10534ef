"""Faults that tests and staging runs switch on: error replies, requests that
hang and drop, and storms of 429."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

FAULTS = ("500", "429", "timeout", "commit_then_timeout")
METHODS = ("GET", "POST", "PUT", "DELETE")
# Path prefix of the accounts server; other fault paths are Books API paths.
OAUTH_PREFIX = "/oauth/"


@dataclass
class Fault:
    """One injected fault and the requests it still hits."""

    kind: str
    remaining: int
    path: str | None
    method: str | None

    def matches(self, path: str, method: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.path is None:
            return not path.startswith(OAUTH_PREFIX)
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")

    def as_dict(self) -> dict:
        return {
            "fault": self.kind,
            "remaining": self.remaining,
            "path": self.path,
            "method": self.method,
        }


class FaultPlan:
    """The faults waiting to hit requests, in the order they were injected."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._storm_until = 0.0

    def inject(
        self,
        fault: str,
        count: int = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Make the next `count` matching requests fail with `fault`.

        path is a Books API path such as "/contacts" (it also matches
        "/contacts/123"), or "/oauth/v2/token" for the accounts server; None
        matches every Books API path.
        """
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {fault!r}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a whole number from 1, not {count!r}")
        if method is not None:
            method = method.upper()
            if method not in METHODS:
                raise ValueError(f"method must be one of {', '.join(METHODS)}")
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path must start with /, not {path!r}")

        with self._lock:
            self._faults.append(Fault(fault, count, path, method))

    def take(self, path: str, method: str) -> str | None:
        """Return the fault that hits this request, using up one of its
        count, or None."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(path, method):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault.kind
            return None

    def storm(self, seconds: float) -> None:
        """Reply 429 to every Books API request for `seconds`."""
        if seconds < 0:
            raise ValueError(f"seconds must be 0 or more, not {seconds!r}")
        with self._lock:
            self._storm_until = self.clock() + seconds

    def storming(self) -> bool:
        with self._lock:
            return self.clock() < self._storm_until

    def pending(self) -> list[dict]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._storm_until = 0.0
