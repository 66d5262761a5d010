"""The live page in a real browser (chromium under Playwright) against a real router, NATS,
worker processes and the simulator.

Three worker processes: `ok` and `doomed` serve llama3:8b, `broken` serves a model whose
runtime fails every call. The page lists them; a request shows up in the recent list with
the route the API answered; the broken node's breaker opening shows on its row; the
doomed worker, killed with SIGKILL, turns stale on the page within its heartbeat ttl.
A second router with `http.api_keys` sends a browser without a key to the login form,
refuses a wrong key, and lets the right one in on an HttpOnly session cookie; behind a
reverse proxy serving it under a path prefix, the login, the page and its stream all work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.config import RouterSettings
from router.service import RouterService
from services.nats_server import NatsServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS, artifact, browser_missing, worker_config
from tests.browser import worker_process as start_worker_process
from tests.conftest import RouterFactory, WorkerFactory
from tests.jobs import until
from tests.prefix_proxy import PrefixProxy
from tools.simulator import Fault, SimModel, Simulator

missing = browser_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=f"browser tests: {missing}")

if missing is None:
    from playwright.async_api import Browser, Page, async_playwright, expect

DOOMED_HEARTBEAT_S = 0.5  # its ttl is three heartbeats
QUIET_HEARTBEAT_S = 30  # no second record during the test: a breaker stays as it was left
BROKEN_MODEL = "broken:1b"
KEY = "page-key-" + uuid.uuid4().hex


@dataclass
class Stage:
    router: RouterService
    nodes: dict[str, str]  # role -> node id
    doomed: asyncio.subprocess.Process

    @property
    def page_url(self) -> str:
        return f"{self.router.url}/ui/"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
async def stage(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stage]:
    tmp = tmp_path_factory.mktemp("page")
    run = uuid.uuid4().hex[:6]
    nodes = {role: f"page-{role}-{run}" for role in ("ok", "broken", "doomed")}
    healthy = Simulator(models=[SimModel("llama3:8b")], tokens=6)
    broken = Simulator(models=[SimModel(BROKEN_MODEL)], tokens=6)
    async with healthy, broken:
        broken.set_fault("*", Fault("error"))

        def config(role: str, url: str, heartbeat_s: float) -> Path:
            return worker_config(
                tmp / f"{role}.toml",
                node_id=nodes[role],
                nats_url=nats_server.url,
                runtime_url=url,
                heartbeat_s=heartbeat_s,
            )

        settings = RouterSettings(
            nats_url=[nats_server.url],
            http={"host": "127.0.0.1", "port": 0},
            breakers={"failures_to_open": 1, "open_s": 600},
        )
        async with (
            start_worker_process(config("ok", healthy.url, QUIET_HEARTBEAT_S)),
            start_worker_process(config("broken", broken.url, QUIET_HEARTBEAT_S)),
            start_worker_process(config("doomed", healthy.url, DOOMED_HEARTBEAT_S)) as doomed,
            RouterService(settings) as router,
        ):
            await until(lambda: all(n in router.fleet.nodes for n in nodes.values()), 60)
            yield Stage(router, nodes, doomed)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


def row(page: Page, node: str) -> Any:
    return page.locator(f'#nodes tr[data-node="{node}"]')


async def test_the_page_lists_every_node(stage: Stage, page: Page) -> None:
    await page.goto(stage.page_url)
    await expect(page.locator("#link")).to_have_text("live", timeout=15_000)
    # The fleet of the session's NATS may hold other tests' nodes: filter to this stage's.
    await page.fill("#filter-node", "page-")
    for node in stage.nodes.values():
        await expect(row(page, node)).to_be_visible(timeout=15_000)
    await expect(row(page, stage.nodes["ok"]).locator("td.state")).to_have_text("ok")
    await page.screenshot(path=artifact("page-nodes.png"), full_page=True)


async def test_a_request_appears_with_its_route(stage: Stage, page: Page) -> None:
    await page.goto(stage.page_url)
    await expect(page.locator("#link")).to_have_text("live", timeout=15_000)
    async with httpx.AsyncClient(base_url=stage.router.url, timeout=30) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.status_code == 200, answer.text
    node = answer.json()["route"]["node"]
    assert node in (stage.nodes["ok"], stage.nodes["doomed"])
    shown = page.locator(f'#requests tr[data-route="remote · {node}"][data-status="ok"]')
    await expect(shown.first).to_be_visible(timeout=15_000)
    await expect(shown.first).to_contain_text("llama3:8b")
    # The page never carries content: the prompt is nowhere in it.
    assert '"hi"' not in await page.content()
    await page.screenshot(path=artifact("page-request.png"), full_page=True)


async def test_a_breaker_opening_shows_on_the_node(stage: Stage, page: Page) -> None:
    await page.goto(stage.page_url)
    await page.fill("#filter-node", stage.nodes["broken"])
    broken_row = row(page, stage.nodes["broken"])
    await expect(broken_row).to_be_visible(timeout=15_000)
    async with httpx.AsyncClient(base_url=stage.router.url, timeout=30) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": BROKEN_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.status_code >= 500
    await expect(broken_row.locator("td.breakers")).to_contain_text("llm open", timeout=15_000)
    await broken_row.click()  # its details: the runtime behind it and its models
    details = page.locator(f'#nodes tr[data-details="{stage.nodes["broken"]}"]')
    await expect(details).to_contain_text(BROKEN_MODEL)
    await expect(details).to_contain_text("ollama http://127.0.0.1:")
    failed = page.locator('#requests tr[data-status="NO_ROUTE"], #requests tr.failed')
    await expect(failed.first).to_be_visible()
    await page.screenshot(path=artifact("page-breaker.png"), full_page=True)


async def test_a_killed_worker_turns_stale_within_its_ttl(stage: Stage, page: Page) -> None:
    await page.goto(stage.page_url)
    await page.fill("#filter-node", stage.nodes["doomed"])
    doomed = row(page, stage.nodes["doomed"])
    await expect(doomed).to_be_visible(timeout=15_000)
    await expect(doomed).not_to_have_class("stale")
    killed_at = time.monotonic()
    stage.doomed.kill()
    await stage.doomed.wait()
    ttl_s = 3 * DOOMED_HEARTBEAT_S
    # The bound is generous for a loaded box; the time it took is printed.
    await expect(doomed).to_have_class("stale", timeout=15_000 + ttl_s * 1000)
    took = time.monotonic() - killed_at
    print(f"killed worker shown stale after {took:.2f} s (ttl {ttl_s:.1f} s)")
    await expect(doomed.locator("td.state")).to_have_text("stale")
    await page.screenshot(path=artifact("page-stale.png"), full_page=True)


@pytest.fixture
async def keyed_router(start_router: RouterFactory) -> AsyncIterator[RouterService]:
    async with start_router(http={"host": "127.0.0.1", "port": 0, "api_keys": [KEY]}) as router:
        yield router


async def test_with_keys_no_key_gets_the_login_and_a_wrong_key_is_refused(
    keyed_router: RouterService, page: Page, stage: Stage
) -> None:
    await page.goto(f"{keyed_router.url}/ui/")
    assert page.url.endswith("/ui/login")
    await expect(page.locator("input[name=key]")).to_be_visible()

    await page.fill("input[name=key]", "not-the-key")
    async with page.expect_response(lambda r: r.request.method == "POST") as refused:
        await page.click("button[type=submit]")
    assert (await refused.value).status == 401
    await expect(page.locator("#message")).to_have_text("Wrong key.")
    await page.screenshot(path=artifact("page-login-refused.png"))

    await page.fill("input[name=key]", KEY)
    await page.click("button[type=submit]")
    await expect(page.locator("#link")).to_have_text("live", timeout=15_000)
    await expect(page.locator("#logout")).to_be_visible()
    cookies = await page.context.cookies()
    session = [cookie for cookie in cookies if cookie["name"] == "inferbus_session"]
    assert session
    assert session[0]["httpOnly"]
    assert KEY not in session[0]["value"]
    assert KEY not in await page.content()


async def test_behind_a_proxy_path_prefix_login_page_and_stream_stay_under_it(
    keyed_router: RouterService, page: Page, stage: Stage
) -> None:
    async with PrefixProxy(keyed_router.url, "/fleet") as proxy:
        await page.goto(f"{proxy.url}/fleet/")  # a browser's GET / of the router
        assert page.url == f"{proxy.url}/fleet/ui/login"
        await page.fill("input[name=key]", KEY)
        await page.click("button[type=submit]")
        await expect(page.locator("#link")).to_have_text("live", timeout=15_000)
        assert page.url == f"{proxy.url}/fleet/ui/"
        await page.fill("#filter-node", stage.nodes["ok"])
        await expect(row(page, stage.nodes["ok"])).to_be_visible(timeout=15_000)
        await page.screenshot(path=artifact("page-behind-prefix.png"), full_page=True)
        await page.goto("about:blank")  # its stream ends before the proxy does
    # Everything the browser asked for (page, script, styles, login, stream) went through
    # the prefix: the proxy serves nothing else, so nothing was refused or lost.
    assert {path.removeprefix("/fleet/") for path in proxy.paths} >= {
        "",
        "ui/",
        "ui/login",
        "ui/app.js",
        "ui/style.css",
        "ui/events",
    }


async def test_calls_waiting_in_line_show_per_tenant(
    start_worker: WorkerFactory, start_router: RouterFactory, page: Page
) -> None:
    async with (
        Simulator(models=[SimModel("slow:1b")], latency_ms=1500, tokens=2) as slow,
        start_worker(
            backends=[{"kind": "ollama", "url": slow.url}],
            limits={"llm_concurrency": 1},
            heartbeat_s=30,
        ),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await page.goto(f"{router.url}/ui/")
        await expect(page.locator("#link")).to_have_text("live", timeout=15_000)
        body = {"model": "slow:1b", "messages": [{"role": "user", "content": "hi"}]}
        calls = asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(3)))
        waiting = page.locator('#queue tr[data-tenant="anonymous"]')
        await expect(waiting).to_be_visible(timeout=15_000)
        await page.screenshot(path=artifact("page-queue.png"), full_page=True)
        answers = await calls
        assert [answer.status_code for answer in answers] == [200] * 3
        # Once they ran, the line is empty again and the page says so.
        await expect(page.locator("#queue-total")).to_have_text("0", timeout=15_000)
