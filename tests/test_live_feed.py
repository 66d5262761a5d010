"""The live page's pieces without a browser: sessions and rows (pure, by tables), the feed's
snapshot and deltas over a fleet view fed records on a hand-moved clock, and the page's
routes on a real router (keys, cookies, the event stream, `GET /` for browsers only)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from router.attempts.route import Attempt, Route
from router.fleet.view import FleetView
from router.http.live.feed import LiveFeed
from router.http.live.rows import RequestFacts, queue_summary, request_row
from router.http.live.session import new_session, session_tenant
from services.capabilities import Capabilities, RuntimeStatus
from services.capabilities import encode_capabilities as encode_record
from services.errors import ErrorCode, InferbusError
from services.subjects import Subjects
from services.wire import JobResponse, Result, Usage
from tests.conftest import RouterFactory
from tests.test_fleet_index import LLAMA, record

SECRET = b"s" * 32
SCOPES = {"team-a": "t1", "team-b": "t2"}


@pytest.mark.parametrize(
    ("name", "made_with", "checked_at", "scopes", "valid"),
    [
        pytest.param("team-a", "t1", 100, SCOPES, True, id="live-session"),
        pytest.param("team-b", "t2", 100, SCOPES, True, id="another-tenant"),
        pytest.param("team-a", "t1", 100 + 12 * 3600, SCOPES, False, id="expired"),
        pytest.param("team-a", "t1", 100, {"team-b": "t2"}, False, id="tenant-removed"),
        pytest.param("team-a", "t1", 100, {"team-a": "t9"}, False, id="key-changed"),
        pytest.param("team-a", "t2", 100, SCOPES, False, id="made-with-another-key"),
    ],
)
def test_sessions_live_until_expiry_and_only_while_the_tenants_key_stands(
    name: str, made_with: str, checked_at: float, scopes: dict[str, str], valid: bool
) -> None:
    value = new_session(SECRET, name, made_with, now=0)
    found = session_tenant(SECRET, value, scopes.get, now=checked_at)
    assert found == (name if valid else None)
    assert made_with not in value.split(".")[1]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "nonsense",
        "123",
        "abc.def.ghi",
        "99999999999.dGVhbS1h." + "0" * 64,
        "99999999999.!!!." + "0" * 64,
        "1.dGVhbS1h." + "z" * 63,
    ],
)
def test_forged_or_malformed_sessions_are_refused(value: str) -> None:
    assert session_tenant(SECRET, value, SCOPES.get, now=0) is None


def test_a_session_from_another_router_is_refused() -> None:
    value = new_session(b"o" * 32, "team-a", "t1", now=0)
    assert session_tenant(SECRET, value, SCOPES.get, now=1) is None


def test_request_rows_name_where_it_went_and_never_the_content() -> None:
    route = Route(
        via="remote",
        node="gpu-b",
        model="llama3:8b",
        attempts=[
            Attempt(via="remote", node="gpu-a", model="llama3:8b", outcome="BUSY", ms=1.234),
            Attempt(via="remote", node="gpu-b", model="llama3:8b", outcome="ok", ms=40.06),
        ],
    )
    answer = JobResponse(
        job_id="j",
        status="ok",
        result=Result(text="the secret answer", usage=Usage(prompt_tokens=5, completion_tokens=7)),
    )
    facts = RequestFacts("openai", 1000.0, 0.0421, stream=True, ttft_s=0.0123)
    row = request_row(facts, answer, route)
    assert row["status"] == "ok"
    assert (row["via"], row["node"], row["model"]) == ("remote", "gpu-b", "llama3:8b")
    assert row["tokens"] == [5, 7]
    assert (row["ms"], row["ttft_ms"]) == (42.1, 12.3)
    assert [(a["where"], a["outcome"]) for a in row["attempts"]] == [
        ("gpu-a", "BUSY"),
        ("gpu-b", "ok"),
    ]
    assert "secret" not in json.dumps(row)


def test_a_refused_request_row_carries_its_code() -> None:
    refused = JobResponse.failure("", InferbusError(ErrorCode.BAD_REQUEST, "no"))
    row = request_row(RequestFacts("infer", 1.0, 0.001), refused, Route())
    assert (row["status"], row["via"], row["attempts"]) == ("BAD_REQUEST", "none", [])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed_over(
    clock: Clock, breakers: dict[str, dict[str, str]] | None = None
) -> tuple[FleetView, LiveFeed]:
    view = FleetView(NatsClient(), Subjects(""), clock=clock, local_node="a")
    known = breakers if breakers is not None else {}
    feed = LiveFeed(
        view,
        breakers=lambda node, _now: dict(known.get(node, {})),
        providers=lambda: {"providers": []},
        unix_clock=lambda: 1_000_000.0 + clock.now,
    )
    return view, feed


def heartbeat(view: FleetView, rec: Capabilities) -> None:
    view.take_message(f"ncs.capabilities.{rec.node_id}", encode_record(rec))


def test_a_viewer_gets_the_snapshot_then_only_what_changed() -> None:
    clock = Clock()
    view, feed = feed_over(clock)
    heartbeat(view, record("a", LLAMA, ttl_s=3))
    heartbeat(view, record("b", LLAMA, ttl_s=3))
    feed.watch()
    snapshot = feed.snapshot()
    assert [row["id"] for row in snapshot["nodes"]] == ["a", "b"]
    assert snapshot["heard"] == {"a": 1_000_000.0, "b": 1_000_000.0}
    assert snapshot["nodes"][0]["local"] is True

    clock.now = 1.0
    heartbeat(view, record("a", LLAMA, seq=2, ttl_s=3))  # nothing but the heartbeat moved
    delta = feed.delta()
    assert delta is not None
    assert delta["nodes"] == []
    assert delta["heard"] == {"a": 1_000_001.0}

    heartbeat(view, record("b", LLAMA, seq=2, ttl_s=3, llm=(3, 4)))  # its load moved
    delta = feed.delta()
    assert delta is not None
    assert [(row["id"], row["load"]["llm"]) for row in delta["nodes"]] == [("b", [3, 4])]

    assert feed.delta() is None  # nothing happened: nothing is sent


def test_stale_and_forgotten_nodes_are_sent_as_they_happen() -> None:
    clock = Clock()
    view, feed = feed_over(clock)
    heartbeat(view, record("a", LLAMA, ttl_s=2))
    heartbeat(view, record("b", LLAMA, ttl_s=2))
    feed.watch()
    feed.snapshot()
    clock.now = 1.5
    heartbeat(view, record("b", LLAMA, seq=2, ttl_s=2))
    feed.delta()
    clock.now = 2.5  # a is past its ttl, b is not
    view.sweep()
    delta = feed.delta()
    assert delta is not None
    assert [(row["id"], row["stale"]) for row in delta["nodes"]] == [("a", True)]
    clock.now = 21.0  # a silent for 10 ttls (forgotten), b for less (stale)
    view.sweep()
    view.sweep()
    delta = feed.delta()
    assert delta is not None
    assert delta["gone"] == ["a"]
    assert "a" not in feed.snapshot()["heard"]


def test_an_answered_request_is_sent_with_the_nodes_it_touched() -> None:
    clock = Clock()
    breakers: dict[str, dict[str, str]] = {}
    view, feed = feed_over(clock, breakers)
    heartbeat(view, record("a", LLAMA))
    feed.watch()
    feed.snapshot()
    breakers["a"] = {"llm": "open"}  # the attempt below opened it
    attempt = Attempt(via="remote", node="a", model="llama3:8b", outcome="INTERNAL", ms=3)
    route = Route(attempts=[attempt])
    failed = JobResponse.failure("j", InferbusError(ErrorCode.NO_ROUTE, "nothing"))
    feed.answered(RequestFacts("openai", 5.0, 0.003), failed, route)
    delta = feed.delta()
    assert delta is not None
    assert [row["status"] for row in delta["requests"]] == ["NO_ROUTE"]
    assert [row["breakers"] for row in delta["nodes"]] == [{"llm": "open"}]


def test_without_viewers_nothing_is_kept_but_the_recent_requests() -> None:
    clock = Clock()
    view, feed = feed_over(clock)
    heartbeat(view, record("a", LLAMA))
    feed.answered(RequestFacts("infer", 1.0, 0.001), None, Route())
    feed.flush()
    viewer = feed.watch()
    assert feed.viewers == 1
    snapshot = feed.snapshot()
    assert len(snapshot["requests"]) == 1
    feed.leave(viewer)
    assert feed.viewers == 0


def test_runtime_urls_lose_their_passwords() -> None:
    clock = Clock()
    view, feed = feed_over(clock)
    runtime = RuntimeStatus(
        kind="openai",
        url="https://user:hunter2@gpu-a:8000",
        state="unhealthy",
        last_error="HTTP 401 for Bearer sk-abcdefghijklmnopqrstuvwx",
    )
    heartbeat(view, record("a", LLAMA).model_copy(update={"runtimes": (runtime,)}))
    feed.watch()
    text = json.dumps(feed.snapshot())
    assert "hunter2" not in text
    assert "sk-abcdefghijklmnopqrstuvwx" not in text


async def first_events(http: httpx.AsyncClient, url: str, **headers: str) -> list[dict[str, Any]]:
    """The stream's first two events (hello, snapshot), parsed."""
    found: list[dict[str, Any]] = []
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                found.append({"event": name, **json.loads(line[6:])})
                if len(found) == 2:
                    break
    return found


async def test_the_page_and_its_stream_answer_without_keys(start_router: RouterFactory) -> None:
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        page = await http.get("/ui/")
        assert page.status_code == 200
        assert 'src="app.js"' in page.text  # relative: works under a path prefix
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert (await http.get("/ui/app.js")).status_code == 200
        assert (await http.get("/ui/style.css")).status_code == 200
        assert (await http.get("/ui/../pyproject.toml")).status_code == 404
        assert (await http.get("/ui/secrets.txt")).status_code == 404
        hello, snapshot = await first_events(http, "/ui/events")
        assert hello == {"event": "hello", "login": False}
        assert snapshot["event"] == "snapshot"
        assert "nodes" in snapshot


async def test_get_root_sends_browsers_to_the_page_and_nobody_else(
    start_router: RouterFactory,
) -> None:
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        browser = await http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert (browser.status_code, browser.headers["location"]) == (303, "ui/")
        client = await http.get("/")  # an Ollama client's probe
        assert client.status_code != 303
        bare = await http.get("/ui")
        assert (bare.status_code, bare.headers["location"]) == (303, "ui/")


async def test_with_keys_the_stream_needs_a_key_or_a_session(start_router: RouterFactory) -> None:
    key = "k-" + uuid.uuid4().hex
    http_settings = {"host": "127.0.0.1", "port": 0, "api_keys": [key]}
    async with (
        start_router(http=http_settings) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        assert (await http.get("/ui/events")).status_code == 401
        login_redirect = await http.get("/ui/")
        assert (login_redirect.status_code, login_redirect.headers["location"]) == (303, "login")
        assert (await http.get("/ui/login")).status_code == 200
        hello, _ = await first_events(http, "/ui/events", Authorization=f"Bearer {key}")
        assert hello["login"] is True

        wrong = await http.post("/ui/login", data={"key": "nope"})
        assert wrong.status_code == 401
        assert "inferbus_session" not in wrong.cookies
        right = await http.post("/ui/login", data={"key": key})
        assert right.status_code == 303
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert key not in cookie
        assert (await http.get("/ui/")).status_code == 200  # the session cookie
        await first_events(http, "/ui/events")
        # The session opens the page only, never the API.
        assert (await http.get("/nodes")).status_code == 401
        await http.post("/ui/logout")
        assert (await http.get("/ui/events")).status_code == 401


def test_a_second_viewer_joining_leaves_the_first_one_up_to_date() -> None:
    clock = Clock()
    breakers: dict[str, dict[str, str]] = {}
    view, feed = feed_over(clock, breakers)
    heartbeat(view, record("a", LLAMA))
    first = feed.watch()
    breakers["a"] = {"llm": "half_open"}  # moved with time alone: no event marks it
    second = feed.watch()  # its snapshot has it; the first viewer must get it too
    assert feed.viewers == 2
    delta = feed.delta()
    assert delta is not None
    assert [row["breakers"] for row in delta["nodes"]] == [{"llm": "half_open"}]
    feed.leave(second)
    feed.leave(first)
    assert feed.viewers == 0


def test_the_queue_is_shown_as_its_depth_per_tenant_and_class() -> None:
    waiting = [
        {"tenant": "team-a", "class": "batch", "model": "m", "type": "llm", "age_ms": 40.0},
        {"tenant": "team-a", "class": "batch", "model": "m", "type": "llm", "age_ms": 12.5},
        {"tenant": "team-b", "class": "interactive", "model": "m", "type": "llm", "age_ms": 3.0},
    ]
    assert queue_summary(waiting) == {
        "total": 3,
        "by": [
            {"tenant": "team-a", "class": "batch", "waiting": 2, "oldest_ms": 40.0},
            {"tenant": "team-b", "class": "interactive", "waiting": 1, "oldest_ms": 3.0},
        ],
    }
    assert queue_summary([]) == {"total": 0, "by": []}


def test_the_queue_goes_in_the_snapshot_and_in_a_delta_when_it_changes() -> None:
    clock = Clock()
    view = FleetView(NatsClient(), Subjects(""), clock=clock)
    line: list[dict[str, Any]] = []
    feed = LiveFeed(
        view,
        breakers=lambda _node, _now: {},
        providers=lambda: {"providers": []},
        queue=lambda: queue_summary(line),
    )
    feed.watch()
    assert feed.snapshot()["queue"] == {"total": 0, "by": []}
    assert feed.delta() is None
    line.append({"tenant": "t", "class": "batch", "age_ms": 5.0})
    delta = feed.delta()
    assert delta is not None
    assert delta["queue"]["total"] == 1
    assert feed.delta() is None


def test_health_changes_reach_the_next_delta() -> None:
    clock = Clock()
    breakers: dict[str, dict[str, str]] = {}
    providers: dict[str, Any] = {"providers": []}
    view = FleetView(NatsClient(), Subjects(""), clock=clock)
    feed = LiveFeed(
        view,
        breakers=lambda node, _now: dict(breakers.get(node, {})),
        providers=lambda: dict(providers),
    )
    heartbeat(view, record("a", LLAMA))
    feed.watch()
    feed.delta()  # the first flush: nothing
    breakers["a"] = {"llm": "open"}
    feed.health_changed("breaker", "a")
    providers["providers"] = [{"provider": "p", "keys": [], "models": [], "usage": []}]
    feed.health_changed("key", "p")
    delta = feed.delta()
    assert delta is not None
    assert [row["breakers"] for row in delta["nodes"]] == [{"llm": "open"}]
    assert delta["providers"] == providers
