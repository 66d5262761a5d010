"""The live page with a large fleet: what its stream costs and whether a browser keeps up.

Starts a nats-server, N simulated nodes (`tools.simfleet`: 5-20 models each) beating every
`--heartbeat` seconds, and the router, all in this process; then measures:

  snapshot   the first event's size and the time to build it (O(fleet), once per viewer)
  stream     bytes and events per second a viewer receives while the fleet beats and
             requests flow (only changed rows, the heard batch, the requests)
  browser    Debian's chromium under Playwright: navigation to the first rows drawn, a
             filter typed to its one row shown, a page flip, the rows in the DOM, JS heap

Printed, never asserted. Usage: python ops/bench/page_bench.py [--nodes 1000]
[--heartbeat 1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.config import RouterSettings
from router.service import RouterService
from services.nats_server import NatsServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS, browser_missing
from tools.simfleet import SimulatedFleet, random_nodes


async def watch_stream(url: str, seconds: float) -> dict[str, float]:
    """Read the event stream for `seconds`: bytes and events, after the snapshot."""
    events = 0
    streamed = 0
    snapshot_bytes = 0
    first_at = 0.0
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(timeout=None) as http,
        http.stream("GET", url) as response,
    ):
        stop_at: float | None = None
        async for line in response.aiter_lines():
            now = time.perf_counter()
            if line.startswith("data: "):
                if snapshot_bytes == 0 and '"nodes"' in line and '"local_node"' in line:
                    snapshot_bytes = len(line)
                    first_at = now - started
                    stop_at = now + seconds
                    continue
                if stop_at is not None:
                    events += 1
                    streamed += len(line)
            if stop_at is not None and now >= stop_at:
                break
    return {
        "snapshot_bytes": snapshot_bytes,
        "first_event_s": first_at,
        "events_per_s": events / seconds,
        "bytes_per_s": streamed / seconds,
    }


async def load(url: str, seconds: float, models: list[str]) -> int:
    """Requests at c=4 for `seconds`, so rows' in-flight counts and the recent list move."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            body = {"model": random.choice(models), "messages": [{"role": "user", "content": "x"}]}
            await http.post(f"{url}/v1/chat/completions", json=body)
            done += 1

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(one(http) for _ in range(4)))
    return done


async def browse(url: str, node: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        started = time.perf_counter()
        await page.goto(url)
        await page.locator("#nodes tbody tr[data-node]").first.wait_for(timeout=60_000)
        first_rows_s = time.perf_counter() - started
        await page.wait_for_timeout(2000)
        rows_in_dom = await page.locator("#nodes tbody tr[data-node]").count()
        pages_text = await page.locator("#page").text_content()
        started = time.perf_counter()
        await page.fill("#filter-node", node)
        await expect(page.locator(f'#nodes tr[data-node="{node}"]')).to_be_visible()
        await expect(page.locator("#nodes tbody tr[data-node]")).to_have_count(1)
        filter_s = time.perf_counter() - started
        await page.fill("#filter-node", "")
        await page.wait_for_timeout(500)
        started = time.perf_counter()
        await page.click("#next")
        await expect(page.locator("#page")).to_contain_text("page 2 of")
        flip_s = time.perf_counter() - started
        heap = await page.evaluate(
            "() => performance.memory ? performance.memory.usedJSHeapSize : null"
        )
        await page.screenshot(path="/tmp/inferbus-page-bench.png")
        await browser.close()
    return {
        "first_rows_s": first_rows_s,
        "rows_in_dom": rows_in_dom,
        "pages": pages_text,
        "filter_s": filter_s,
        "page_flip_s": flip_s,
        "js_heap_mb": heap / 1e6 if heap else None,
    }


async def main(nodes: int, heartbeat_s: float, seconds: float) -> None:
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        fleet_nodes = random_nodes("bench", nodes, random.Random(7))
        models = sorted({m.name for node in fleet_nodes for m in node.models if m.type == "llm"})
        settings = RouterSettings(nats_url=[server.url], http={"host": "127.0.0.1", "port": 0})
        async with (
            SimulatedFleet(nc, fleet_nodes, heartbeat_s=heartbeat_s),
            RouterService(settings) as router,
        ):
            while True:
                if len(router.fleet.nodes) >= nodes:
                    break
                await asyncio.sleep(0.1)
            built = time.perf_counter()
            snapshot = router.live.snapshot()
            build_ms = (time.perf_counter() - built) * 1000
            stream, served = await asyncio.gather(
                watch_stream(f"{router.url}/ui/events", seconds),
                load(router.url, seconds + 2, models),
            )
            print(f"nodes {nodes}, heartbeat {heartbeat_s} s, {served} requests during the watch")
            print(
                f"snapshot: {len(json.dumps(snapshot)) / 1e3:.0f} kB, built in {build_ms:.1f} ms;"
                f" first event after {stream['first_event_s']:.2f} s"
            )
            print(
                f"stream: {stream['events_per_s']:.1f} events/s, "
                f"{stream['bytes_per_s'] / 1e3:.1f} kB/s"
            )
            missing = browser_missing()
            if missing is not None:
                print(f"browser: skipped ({missing})")
                return
            seen = await browse(f"{router.url}/ui/", fleet_nodes[nodes // 2].node_id)
            print(
                f"browser: first rows {seen['first_rows_s']:.2f} s after navigation; "
                f"{seen['rows_in_dom']} rows in the DOM ({seen['pages']}); filter to one node "
                f"{seen['filter_s'] * 1000:.0f} ms; page flip {seen['page_flip_s'] * 1000:.0f} ms;"
                f" JS heap {seen['js_heap_mb']:.1f} MB"
            )
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.heartbeat, args.seconds))
