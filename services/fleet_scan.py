"""Ask the fleet who is there: a scatter-gather on `ncs.discover` (DESIGN §2).

Shared by the router (its start-up view of the fleet) and `inferbus nodes` (the table):
every worker answers with its capabilities record, so what comes back is what the nodes
say this second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.bus import flush_interest
from services.capabilities import Capabilities, decode_capabilities
from services.subjects import Subjects

_NO_RESPONDERS_STATUS = "503"


async def collect_fleet(
    nc: NatsClient, subjects: Subjects, *, wait_s: float = 1.0, quiet_s: float = 0.25
) -> list[Capabilities]:
    """The records of every node that answers `ncs.discover`, one per node, by node id.

    Waits for replies until `quiet_s` passes without one after the first reply, or
    `wait_s` in all, so a healthy fleet answers in about `quiet_s` and a silent one
    costs `wait_s`. When nothing at all listens, the server says so at once (a 503
    status) and the wait ends there. Replies that are not records are ignored; a node
    that answers twice counts once, with its newest record (highest `seq`).
    """
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        replies.put_nowait(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        # The server must know the inbox before any worker can answer to it.
        await flush_interest(nc)
        await nc.publish(subjects.discover(), b"", reply=inbox)
        gathered = await _gather_replies(replies, wait_s=wait_s, quiet_s=quiet_s)
    finally:
        await sub.unsubscribe()
    return newest_records(msg.data for msg in gathered)


def newest_records(payloads: Iterable[bytes]) -> list[Capabilities]:
    """One record per node (the highest `seq`), sorted by node id; non-records dropped."""
    newest: dict[str, Capabilities] = {}
    for payload in payloads:
        record = decode_capabilities(payload)
        if record is None:
            continue
        held = newest.get(record.node_id)
        if held is None or record.seq > held.seq:
            newest[record.node_id] = record
    return [newest[node_id] for node_id in sorted(newest)]


async def _gather_replies(
    replies: asyncio.Queue[Msg], *, wait_s: float, quiet_s: float
) -> list[Msg]:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait_s
    gathered: list[Msg] = []
    while (remaining := give_up_at - loop.time()) > 0:
        patience = min(remaining, quiet_s) if gathered else remaining
        try:
            async with asyncio.timeout(patience):
                msg = await replies.get()
        except TimeoutError:
            break
        if not gathered and _is_no_responders(msg):
            break
        gathered.append(msg)
    return gathered


def _is_no_responders(msg: Msg) -> bool:
    return msg.headers is not None and msg.headers.get("Status") == _NO_RESPONDERS_STATUS
