"""Chaos: steady mixed load through the router over three worker processes while
one is SIGKILLed, one SIGSTOPped for 5 s, nats-server restarted, and one runtime answers
500s for a while, then recovers.

Asserted: every request gets one typed answer; none outlives its budget by more than the
never-hang bound; after the kill the dead node gets no attempt once it is out of
rotation; the recovered runtime serves again. The figures (worst overshoot past the
budget, time to out of rotation, time back in rotation) are printed (`pytest -s`) and
quoted in ops/offload_routing.md; timings are not asserted beyond the bounds named here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats

from services.bus import wait_for_worker
from services.errors import ErrorCode
from services.nats_server import NatsServer
from tests.conftest import RouterFactory
from tests.jobs import llm, until
from tests.test_router_e2e import worker_config, worker_process
from tools.simulator import Fault, SimModel, Simulator

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m:1b"
BUDGET_MS = 4000
NEVER_HANG_S = 1.0  # the bound asserted past the budget (the figure printed is far lower)
# Runs measure 0.03-0.82 s; one run in about ten on a loaded box saw 1.19 s
# (ops/bench/RESULTS.md, "Chaos"): the bound leaves that margin.
OUT_OF_ROTATION_S = 2.0
CODES = {code.value for code in ErrorCode}


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int
    code: str  # "ok" or the error code
    nodes: tuple[str, ...]  # every node attempted
    served_by: str | None
    streamed: bool


async def one_request(http: httpx.AsyncClient, i: int) -> Answer:
    body: dict[str, Any] = {"prompt": f"job {i}", "model": MODEL, "timeout_ms": BUDGET_MS}
    headers = {"Idempotency-Key": f"chaos-{i}"} if i % 2 else {}
    started = time.monotonic()
    if i % 3 == 0:
        body["stream"] = True
        async with http.stream("POST", "/infer", json=body, headers=headers) as response:
            lines = [line async for line in response.aiter_lines()]
        final = json.loads(lines[-1])
        status = response.status_code
    else:
        response = await http.post("/infer", json=body, headers=headers)
        final, status = response.json(), response.status_code
    ended = time.monotonic()
    route = final.get("route", {})
    code = final["error"]["code"] if final.get("error") else "ok"
    nodes = tuple(a["node"] for a in route.get("attempts", []) if a.get("node"))
    return Answer(started, ended, status, code, nodes, route.get("node"), "stream" in body)


async def test_chaos(
    tmp_path: Path, start_router: RouterFactory, private_nats: NatsServer, node_id: str
) -> None:
    nats_server = private_nats
    names = [f"{node_id}-{x}" for x in ("kill", "stop", "err")]
    sims = [
        Simulator(models=[SimModel(MODEL)], latency_ms=50, tokens=8, token_interval_ms=10)
        for _ in names
    ]
    for sim in sims:
        await sim.start()
    workers = [
        await worker_process(
            worker_config(tmp_path / f"{name}.toml", name, nats_server.url, sim.url)
        )
        for name, sim in zip(names, sims, strict=True)
    ]
    answers: list[Answer] = []
    events: dict[str, float] = {}
    try:
        probe = await nats.connect(nats_server.url)
        for name in names:
            await wait_for_worker(probe, llm(name))
        await probe.close()
        async with (
            start_router(nats_url=[nats_server.url], breakers={"open_s": 3}) as router,
            httpx.AsyncClient(base_url=router.url, timeout=BUDGET_MS / 1000 + 5) as http,
        ):
            await until(lambda: all(name in router.fleet.nodes for name in names))
            stop = asyncio.Event()
            counter = iter(range(1_000_000))

            async def load() -> None:
                while not stop.is_set():
                    answers.append(await one_request(http, next(counter)))

            loaders = [asyncio.create_task(load()) for _ in range(6)]
            await asyncio.sleep(1.5)
            events["kill"] = time.monotonic()
            workers[0].send_signal(signal.SIGKILL)
            await asyncio.sleep(1.5)
            events["stop"] = time.monotonic()
            workers[1].send_signal(signal.SIGSTOP)
            await asyncio.sleep(5)
            workers[1].send_signal(signal.SIGCONT)
            await asyncio.sleep(1)
            events["nats_restart"] = time.monotonic()
            await nats_server.stop()
            await nats_server.start()
            await asyncio.sleep(2)
            sims[2].set_fault(MODEL, Fault("error"))
            await asyncio.sleep(2)
            sims[2].clear_faults()
            events["recovered"] = time.monotonic()
            await asyncio.sleep(6)
            stop.set()
            await asyncio.gather(*loaders)
    finally:
        for process in workers:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.wait()
        for sim in sims:
            await sim.stop()

    kill, recovered = events["kill"], events["recovered"]
    overshoot = max(a.ended - a.started for a in answers) - BUDGET_MS / 1000
    last_on_killed = max((a.started for a in answers if names[0] in a.nodes), default=kill)
    back = min(
        (a.ended for a in answers if a.served_by == names[2] and a.started > recovered),
        default=None,
    )
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer.code] = counts.get(answer.code, 0) + 1
    print(
        f"\nchaos: {len(answers)} requests, outcomes {counts}; worst end past budget "
        f"{overshoot * 1000:+.0f} ms; killed node last attempted {last_on_killed - kill:+.3f} s "
        f"after the kill; recovered runtime serving again "
        f"{(back - recovered) if back else float('nan'):.3f} s after its fault cleared"
    )
    assert answers
    assert all(a.code == "ok" or a.code in CODES for a in answers)
    # A whole answer's status says its code; a stream that began is 200 whatever its end.
    assert all((a.code == "ok") == (a.status == 200) for a in answers if not a.streamed)
    assert overshoot <= NEVER_HANG_S
    assert last_on_killed - kill <= OUT_OF_ROTATION_S  # out of rotation (printed above)
    assert back is not None  # the recovered runtime is back in rotation
    late = [a for a in answers if a.started > recovered + 3]
    assert late
    assert all(a.code == "ok" for a in late)
