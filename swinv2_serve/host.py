"""What the embedded server needs from this host: free ports, its processes, and the interpreter's libpython."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from .errors import ServerError


def ensure_libpython_path() -> None:
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH for tritonserver and its python stubs.

    With a pyenv (or any non-system) Python the stub otherwise loads the system libpython and dies with
    ``'_thread.RLock' object has no attribute '_recursion_count'``. tritonserver inherits our environment,
    so setting it here, before PyTriton starts the server, is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(pid: int) -> bool:
    """SIGKILL ``pid`` if it still runs; whether it did."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def check_ports_free(ports: Mapping[str, int], host: str) -> None:
    """A port already taken becomes one line naming it and the flag (``ports``' key) that changes it."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ServerError(f"{flag} {port} is the same as {seen[port]}: give each endpoint its own port")
        seen[port] = flag
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as servers bind: connections of a previous run in TIME_WAIT do not block a restart, a listener does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ServerError(
                    f"port {port} on {host} is already in use ({exc.strerror}): "
                    f"stop what is listening there or choose another with {flag}"
                ) from None
