"""Holder ids: the thread that runs a piece of work, and whether it lives.

A claim on work (an email in the sent log, later a Zoho record) names its
holder: the host, the kernel's boot id, the process id with the process's
start time, and the thread. A later claimant can then tell a holder that
died (`kill -9`, OOM, a power cut) from one that is only slow or stopped,
and take over at once instead of after a long timeout. The start time and
boot id keep a reused pid from passing for the dead holder.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID_PATH.read_text().strip()[:8]
    except OSError:
        return "-"


def _start_time(pid: int) -> str | None:
    """Return the start time of process `pid` in clock ticks since boot, or
    None when there is no such process or it is a zombie (dead, not yet
    reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None

    # The command name in brackets may contain spaces, so count the fields
    # after its closing bracket: the state is field 3 of the line and the
    # start time field 22.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def current_holder() -> str:
    """Return the holder id of the calling thread."""
    pid = os.getpid()
    host = socket.gethostname().replace("|", "_")
    start = _start_time(pid) or "-"
    thread = threading.get_ident()
    return f"{host}|{_boot_id()}|{pid}|{start}|{thread}"


def holder_is_alive(holder: str) -> bool | None:
    """Tell whether the holder still runs: True or False, or None when this
    host cannot tell (the holder is on another host, or the id is foreign)."""
    try:
        host, boot, pid_text, start, thread_text = holder.split("|")
        pid, thread = int(pid_text), int(thread_text)
    except ValueError:
        return None

    if host != socket.gethostname().replace("|", "_") or start == "-":
        return None
    if boot != _boot_id():
        return False
    if _start_time(pid) != start:
        return False
    if pid != os.getpid():
        return True

    # The holder is a thread of this process.
    return any(t.ident == thread for t in threading.enumerate())
