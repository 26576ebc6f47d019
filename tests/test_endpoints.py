"""Several endpoints behind one client: parsing, health-checked round-robin, and what is retried (no server)."""

from __future__ import annotations

import itertools
import socket

import pytest
from tritonclient.utils import InferenceServerException

from swinv2_serve.endpoints import EndpointPool, RetryPolicy, expand, is_retryable, parse_endpoints
from swinv2_serve.errors import ServerError


def test_parse_endpoints_forms() -> None:
    assert parse_endpoints("h1:8001") == ["h1:8001"]
    assert parse_endpoints("h1:8001, h2:8001,h1:8001") == ["h1:8001", "h2:8001"]  # order kept, repeats dropped
    assert parse_endpoints(["http://h1:8000/", "h2:8000,h3:8000"]) == ["h1:8000", "h2:8000", "h3:8000"]
    with pytest.raises(ServerError, match="no endpoint"):
        parse_endpoints(" , ")


def test_expand_keeps_addresses_and_resolves_names() -> None:
    assert expand("127.0.0.1:8001") == ["127.0.0.1:8001"]
    assert expand("[::1]:8001") == ["[::1]:8001"]
    assert expand("no-such-host.invalid:8001") == ["no-such-host.invalid:8001"]  # connecting will say why
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)}
    expected = ["localhost:8001"] if len(addresses) <= 1 else sorted(
        f"[{a}]:8001" if ":" in a else f"{a}:8001" for a in addresses)
    assert sorted(expand("localhost:8001")) == sorted(expected)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (InferenceServerException("Server is stopping", status="StatusCode.UNAVAILABLE"), True),
        (InferenceServerException("unavailable", status="503"), True),
        (InferenceServerException("bad image", status="400"), False),
        (InferenceServerException("bad image", status="StatusCode.INVALID_ARGUMENT"), False),
        (InferenceServerException("model crashed", status="500"), False),
        (InferenceServerException("model crashed", status="StatusCode.INTERNAL"), False),
        (InferenceServerException("unknown model", status="StatusCode.NOT_FOUND"), False),
        (TimeoutError(), False),
        (ValueError("bug"), False),
    ],
)
def test_only_what_cannot_have_been_answered_is_retried(error: BaseException, retry: bool) -> None:
    assert is_retryable(error) is retry


def test_connection_closed_by_the_server_is_a_reset() -> None:
    from geventhttpclient.response import HTTPConnectionClosed  # what tritonclient.http raises then

    assert is_retryable(HTTPConnectionClosed("connection closed."))


def test_round_robin_skips_endpoints_that_are_down_or_not_ready() -> None:
    ready = {"a": True, "b": True, "c": True}
    probes: list[str] = []

    def probe(endpoint: str) -> bool:
        probes.append(endpoint)
        return ready[endpoint]

    pool = EndpointPool(["a", "b", "c"], RetryPolicy(attempts=3, backoff_s=0.0, health_interval_s=60.0), probe)
    firsts = [next(pool.attempts())[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert sorted(set(probes)) == ["a", "b", "c"] and len(probes) == 3  # answers are kept health_interval_s
    pool.mark_down("b")
    assert [next(pool.attempts())[0] for _ in range(4)] == ["a", "c", "a", "c"]  # b is skipped while it is down
    pool.mark_up("b")
    assert {next(pool.attempts())[0] for _ in range(4)} == {"a", "b", "c"}
    ready["c"] = False  # c drains: once its cached answer is older than health_interval_s it is skipped
    fresh = EndpointPool(["a", "b", "c"], RetryPolicy(attempts=3, backoff_s=0.0, health_interval_s=0.0), probe)
    assert {next(fresh.attempts())[0] for _ in range(6)} == {"a", "b"}


def test_attempts_are_bounded_and_back_off_between_rounds() -> None:
    policy = RetryPolicy(attempts=7, backoff_s=0.1, max_backoff_s=0.15)
    plan = list(EndpointPool(["a", "b", "c"], policy).attempts())
    assert [ep for ep, _ in plan] == ["a", "b", "c", "b", "c", "a", "c"]  # rounds rotate like single requests
    pauses = [pause for _, pause in plan]
    assert pauses[0] == 0.0 and pauses[1:3] == [0.0, 0.0]  # no pause inside the first round
    assert 0.0 <= pauses[3] <= 0.1 and 0.0 <= pauses[6] <= 0.15  # full jitter, capped
    assert all(p == 0.0 for i, p in enumerate(pauses) if i % 3)


def test_nothing_ready_still_tries_everyone() -> None:
    pool = EndpointPool(["a", "b"], RetryPolicy(attempts=4, backoff_s=0.0), lambda _: False)
    assert [ep for ep, _ in itertools.islice(pool.attempts(), 4)] == ["a", "b", "b", "a"]


def test_policy_validation() -> None:
    with pytest.raises(ServerError):
        RetryPolicy(attempts=0)
