"""Several replicas behind one client: the endpoint list, health-checked round-robin, and what is safe to retry.

A Kubernetes Service balances per TCP connection, and a long-lived gRPC (HTTP/2) connection stays on one pod,
so the client balances itself: across the endpoints it is given, or across every address a (headless
Service) name resolves to. Like a health-checked load balancer it sends only to replicas whose
``/v2/health/ready`` said yes within the last ``health_interval_s`` (a draining replica says no before it
stops). A request is retried only when it cannot have been answered: the connection was refused or reset,
HTTP 503, gRPC UNAVAILABLE. A client error (HTTP 4xx, INVALID_ARGUMENT) or a server error that may have run
the model (HTTP 500, INTERNAL) is never retried. Retries go to the next ready replica, a whole round of
failures waits with exponential backoff, and a request gives up after ``RetryPolicy.attempts``.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .errors import ServerError

RETRYABLE_HTTP = ("503",)
RETRYABLE_GRPC = ("StatusCode.UNAVAILABLE",)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries before it fails."""

    attempts: int = 8  # tries in all, over every endpoint
    backoff_s: float = 0.05  # pause after a whole round of endpoints failed; doubles each round, with jitter
    max_backoff_s: float = 1.0
    down_s: float = 1.0  # an endpoint that refused is tried last for this long
    health_interval_s: float = 0.25  # readiness answers are trusted this long

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.down_s < 0:
            raise ServerError(f"invalid retry policy {self}")

    def pause(self, round_index: int) -> float:
        """Seconds to wait before round ``round_index`` (0: none): exponential, full jitter."""
        if round_index <= 0:
            return 0.0
        return random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2 ** (round_index - 1)))


NO_RETRY = RetryPolicy(attempts=1)


def parse_endpoints(url: str | Sequence[str]) -> list[str]:
    """``"h1:8001,h2:8001"`` or ``["h1:8001", "h2:8001"]`` -> ``["h1:8001", "h2:8001"]`` (schemes dropped)."""
    parts = url.split(",") if isinstance(url, str) else [p for u in url for p in str(u).split(",")]
    endpoints = list(dict.fromkeys(re.sub(r"^\w+://", "", p.strip()).rstrip("/") for p in parts if p.strip()))
    if not endpoints:
        raise ServerError(f"no endpoint in url {url!r}: give host:port, or several separated by commas")
    return endpoints


def expand(endpoint: str) -> list[str]:
    """Every address a host name resolves to (a headless Service names one per pod); IPs and failures as given."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        return [endpoint]
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [endpoint]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return [endpoint]  # unresolvable now: connecting will say so
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if len(addresses) <= 1:
        return [endpoint]
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


RESET_BY_NAME = ("HTTPConnectionClosed",)  # geventhttpclient (tritonclient.http): the server closed the connection


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request may go to another replica: connection refused or reset (closed before an answer),
    HTTP 503, gRPC UNAVAILABLE. Inference has no side effects, so a reset request may run twice, never zero times."""
    if isinstance(exc, (ConnectionError, EOFError)) or type(exc).__name__ in RESET_BY_NAME:
        return True
    status = getattr(exc, "status", None)
    code = str(status() if callable(status) else status or "")
    return code in RETRYABLE_HTTP or code in RETRYABLE_GRPC


class EndpointPool:
    """Round-robin over endpoints, ready ones first; one that just failed is skipped for ``down_s``.

    ``probe(endpoint) -> bool`` asks a replica whether it is ready (its answer is kept ``health_interval_s``);
    without one every endpoint counts as ready until a request to it fails.
    """

    def __init__(self, endpoints: Sequence[str], policy: RetryPolicy,
                 probe: Callable[[str], bool] | None = None) -> None:
        self.endpoints = list(endpoints)
        self.policy = policy
        self.probe = probe
        self._next = itertools.count()
        self._down_until: dict[str, float] = {}
        self._ready: dict[str, tuple[bool, float]] = {}  # endpoint -> (answer, when)
        self._lock = threading.Lock()

    def _rotated(self, endpoints: list[str]) -> list[str]:
        """``endpoints`` starting at the next in turn (one turn per call: round-robin over calls)."""
        start = next(self._next) % len(endpoints)
        return endpoints[start:] + endpoints[:start]

    def usable(self, endpoint: str) -> bool:
        """Not failed within ``down_s`` and, with a probe, ready within ``health_interval_s``."""
        now = time.monotonic()
        with self._lock:
            if self._down_until.get(endpoint, 0.0) > now:
                return False
            answer = self._ready.get(endpoint)
        if self.probe is None or (answer is not None and now - answer[1] < self.policy.health_interval_s):
            return True if answer is None else answer[0]
        ready = bool(self.probe(endpoint))
        with self._lock:
            self._ready[endpoint] = (ready, time.monotonic())
        return ready

    def mark_down(self, endpoint: str) -> None:
        with self._lock:
            self._down_until[endpoint] = time.monotonic() + self.policy.down_s
            self._ready.pop(endpoint, None)

    def mark_up(self, endpoint: str) -> None:
        with self._lock:
            self._down_until.pop(endpoint, None)

    def attempts(self) -> Iterator[tuple[str, float]]:
        """(endpoint, pause before trying it) for one request, decided lazily: each round goes over the usable
        endpoints in turn (all of them when none is usable: replicas may be coming back), backing off between
        rounds, until ``policy.attempts`` tries were handed out."""
        tried = 0
        for round_index in itertools.count():
            candidates = [ep for ep in self.endpoints if self.usable(ep)] or list(self.endpoints)
            for position, endpoint in enumerate(self._rotated(candidates)):
                if tried >= self.policy.attempts:
                    return
                tried += 1
                yield endpoint, self.policy.pause(round_index) if position == 0 else 0.0
