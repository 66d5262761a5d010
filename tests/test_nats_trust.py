"""One worker's credentials, in an attacker's hands, cannot reach another node's jobs.

With gpu-a's credentials (password or creds file), a second connection tries to
read the jobs sent to gpu-b and to publish forged chunks and answers into the reply and
stream inboxes of a job gpu-b is serving. The committed setups (accounts.conf and the
operator-mode one from make_jwt_fleet.py) must refuse both: the server answers with a
permissions violation and the caller sees only gpu-b's own messages. Workers answer
through allow_responses, so their replies still reach today's router inboxes and the
per-node ones (`_INBOX.<node>.<random>`) that branch i9 brings.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.bus import wait_for_worker
from services.nats_server import NatsServer
from services.settings import NatsAuth
from services.wire import Chunk, JobResponse, decode_response, encode
from tests.conftest import WorkerFactory, backend
from tests.fleets import (
    Fleet,
    connect_error,
    fleet_server,
    make_jwt_setup,
    render,
    render_cluster,
)
from tests.jobs import llm, until
from tools.simulator import DEFAULT_MODELS, Simulator

LONG_STREAM_TOKENS = 2_000


class Client:
    """A connection that keeps the server's asynchronous errors (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.nc = NatsClient()

    async def connect(self, url: str, auth: NatsAuth) -> NatsClient:
        async def remember(error: Exception) -> None:
            self.errors.append(error)

        await self.nc.connect(url, error_cb=remember, **auth.connect_options())
        return self.nc

    def violations(self) -> list[str]:
        return [str(e) for e in self.errors if "permissions violation" in str(e).lower()]


async def client_of_url(url: str, auth: NatsAuth) -> Client:
    client = Client()
    await client.connect(url, auth)
    return client


async def client_of(fleet: Fleet, user: str) -> Client:
    return await client_of_url(fleet.url, fleet.auth(user))


def today_inbox(nc: NatsClient, node: str) -> str:
    """The router's inbox today: nats-py's new_inbox() (sequential, guessable)."""
    return nc.new_inbox()


def per_node_inbox(nc: NatsClient, node: str) -> str:
    """The inbox of branch i9: the target node's id, then 128 random bits."""
    return f"_INBOX.{node}.{secrets.token_hex(16)}"


INBOXES = [pytest.param(today_inbox, id="new_inbox"), pytest.param(per_node_inbox, id="per-node")]


async def send(nc: NatsClient, subject: str, job: dict[str, object], inbox: str) -> list[Msg]:
    """Publish a job with `inbox` as its reply subject; every message that arrives there."""
    arrived: list[Msg] = []

    async def keep(msg: Msg) -> None:
        arrived.append(msg)

    await nc.subscribe(inbox, cb=keep)
    await nc.flush()
    await nc.publish(subject, json.dumps(job).encode(), reply=inbox)
    return arrived


def final_of(arrived: list[Msg]) -> JobResponse | None:
    for msg in arrived:
        if b'"status"' in msg.data:
            return decode_response(msg.data)
    return None


@pytest.mark.parametrize(
    "wanted", ["node.gpu-b.llm.request", "node.gpu-b.>", "node.*.llm.request", ">", "_INBOX.>"]
)
async def test_gpu_a_credentials_cannot_read_jobs_sent_to_gpu_b_nor_its_answers(
    fleet: Fleet, start_worker: WorkerFactory, simulator: Simulator, wanted: str
) -> None:
    async with start_worker(
        node_id="gpu-b", nats_url=[fleet.url], nats=fleet.auth("gpu-b"),
        backends=[backend(simulator.url)],
    ):  # fmt: skip
        attacker, router = await client_of(fleet, "gpu-a"), await client_of(fleet, "router")
        seen = await attacker.nc.subscribe(wanted)
        await until(lambda: bool(attacker.violations()))
        answers = [
            decode_response(
                (await router.nc.request(llm("gpu-b"), b'{"prompt": "secret"}', timeout=10)).data
            )
            for _ in range(5)
        ]
        await attacker.nc.flush()
        stolen = seen.pending_msgs
        await attacker.nc.close()
        await router.nc.close()

    assert [answer.node_id for answer in answers] == ["gpu-b"] * 5
    assert all(answer.status == "ok" for answer in answers)
    assert stolen == 0
    assert wanted.lower() in attacker.violations()[0]  # nats-py lowercases the text


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("inbox_of", INBOXES)
async def test_gpu_a_credentials_cannot_answer_for_a_job_gpu_b_serves(
    fleet: Fleet, start_worker: WorkerFactory, streamed: bool, inbox_of: object
) -> None:
    assert callable(inbox_of)
    async with (
        Simulator(models=list(DEFAULT_MODELS), tokens=20, token_interval_ms=20) as slow,
        start_worker(
            node_id="gpu-b", nats_url=[fleet.url], nats=fleet.auth("gpu-b"),
            backends=[backend(slow.url)],
        ),
    ):  # fmt: skip
        attacker, router = await client_of(fleet, "gpu-a"), await client_of(fleet, "router")
        inbox = inbox_of(router.nc, "gpu-b")
        job = {"job_id": "job-1", "prompt": "hi", "stream": streamed, "model": "llama3.2:3b"}
        arrived = await send(router.nc, llm("gpu-b"), job, inbox)
        # The attacker knows the inbox (today's are guessable) and answers first.
        forged_chunk = Chunk(job_id="job-1", seq=1, delta="FORGED")
        forged_final = JobResponse(job_id="job-1", status="ok", node_id="gpu-b", done=True)
        await attacker.nc.publish(inbox, encode(forged_chunk))
        await attacker.nc.publish(inbox, encode(forged_final))
        await until(lambda: final_of(arrived) is not None, timeout_s=10)
        await until(lambda: len(attacker.violations()) == 2)
        await attacker.nc.close()
        await router.nc.close()

    final = final_of(arrived)
    assert final is not None
    assert final.status == "ok", final.error
    assert final.result is not None  # gpu-b's own answer, not the forged empty one
    assert all(b"FORGED" not in msg.data for msg in arrived)
    assert all(inbox.lower() in violation for violation in attacker.violations())  # lowercased
    if streamed:
        assert len(arrived) == 20 + 1  # gpu-b's chunks, one per token, and its final answer


async def test_a_long_stream_fits_within_the_workers_response_allowance(
    fleet: Fleet, start_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """One message per token plus the final answer, every one published through
    allow_responses: a long answer must not run into the allowance's `max`."""
    async with (
        Simulator(models=list(DEFAULT_MODELS), tokens=LONG_STREAM_TOKENS) as runtime,
        start_worker(
            node_id="gpu-a", nats_url=[fleet.url], nats=fleet.auth("gpu-a"),
            backends=[backend(runtime.url)],
        ),
    ):  # fmt: skip
        router = await client_of(fleet, "router")
        job = {"prompt": "tell me everything", "stream": True, "model": "llama3.2:3b"}
        arrived = await send(router.nc, llm("gpu-a"), job, per_node_inbox(router.nc, "gpu-a"))
        await until(lambda: final_of(arrived) is not None, timeout_s=30)
        await router.nc.close()

    final = final_of(arrived)
    assert final is not None
    assert final.status == "ok", final.error
    assert len(arrived) == LONG_STREAM_TOKENS + 1
    assert "permissions violation" not in caplog.text.lower()


async def test_a_worker_still_answers_discovery_and_its_caps_within_its_allowance(
    fleet: Fleet, start_worker: WorkerFactory, simulator: Simulator
) -> None:
    async with start_worker(
        node_id="gpu-a", nats_url=[fleet.url], nats=fleet.auth("gpu-a"),
        backends=[backend(simulator.url)],
    ):  # fmt: skip
        router = await client_of(fleet, "router")
        caps = await router.nc.request("node.gpu-a.caps", b"", timeout=5)
        discovered: list[Msg] = await send(router.nc, "ncs.discover", {}, router.nc.new_inbox())
        await until(lambda: bool(discovered))
        await router.nc.close()
    assert b'"gpu-a"' in caps.data
    assert b'"gpu-a"' in discovered[0].data
    assert not router.violations()


async def test_creds_signed_by_another_operator_are_refused(tmp_path: Path) -> None:
    """A user JWT signed by a key the server does not trust does not get in."""
    async with fleet_server("jwt", tmp_path / "ours") as ours:
        make_jwt_setup(tmp_path / "theirs")
        error = await connect_error(
            ours.url, **NatsAuth(creds_file=tmp_path / "theirs/creds/gpu-a.creds").connect_options()
        )
        own = await connect_error_or_none(ours.url, ours.auth("gpu-a"))
    assert "authorization violation" in str(error).lower()
    assert own is None


async def connect_error_or_none(url: str, auth: NatsAuth) -> Exception | None:
    try:
        client = await client_of_url(url, auth)
    except (OSError, nats.errors.Error) as error:
        return error
    await client.nc.close()
    return None


async def test_the_operator_setup_included_in_single_conf_serves_a_worker(
    tmp_path: Path, start_worker: WorkerFactory, simulator: Simulator
) -> None:
    """As the README says to deploy it: single.conf (JetStream on) with operator.conf
    included instead of accounts.conf."""
    make_jwt_setup(tmp_path)
    config = render(
        "single.conf",
        tmp_path,
        {
            "http_port: 8222": "http_port: -1",
            '"/var/lib/nats"': f'"{tmp_path}/store"',
            "# include ./accounts.conf": "include ./operator.conf",
        },
    )
    async with (
        NatsServer(config_file=config) as server,
        start_worker(
            node_id="gpu-a", nats_url=[server.url],
            nats=NatsAuth(creds_file=tmp_path / "creds/gpu-a.creds"),
            backends=[backend(simulator.url)],
        ),
    ):  # fmt: skip
        router = await client_of_url(
            server.url, NatsAuth(creds_file=tmp_path / "creds/router.creds")
        )
        answer = decode_response(
            (await router.nc.request(llm("gpu-a"), b'{"prompt": "hi"}', timeout=10)).data
        )
        await router.nc.close()
    assert answer.status == "ok", answer.error
    assert answer.node_id == "gpu-a"


async def test_across_a_cluster_a_worker_answers_through_its_allowance_and_no_other(
    tmp_path: Path, start_worker: WorkerFactory, simulator: Simulator
) -> None:
    """cluster-a/b/c.conf with accounts.conf included, as the README says: the worker on
    server A streams to a router on C through allow_responses (the allowance is kept by
    A, where the request was delivered), and gpu-b's credentials on B cannot inject."""
    async with contextlib.AsyncExitStack() as stack:
        on_a, on_b, on_c = [
            Fleet("accounts", await stack.enter_async_context(NatsServer(config_file=config)))
            for config in render_cluster(tmp_path, with_accounts=True)
        ]
        await stack.enter_async_context(
            start_worker(
                node_id="gpu-a", nats_url=[on_a.url], nats=on_a.auth("gpu-a"),
                backends=[backend(simulator.url)],
            )
        )  # fmt: skip
        router, attacker = await client_of(on_c, "router"), await client_of(on_b, "gpu-b")
        await wait_for_worker(router.nc, llm("gpu-a"))  # gpu-a's interest crossed the routes
        job = {"job_id": "job-1", "prompt": "hi", "stream": True, "model": "llama3:8b"}
        inbox = per_node_inbox(router.nc, "gpu-a")
        arrived = await send(router.nc, llm("gpu-a"), job, inbox)
        await attacker.nc.publish(inbox, encode(Chunk(job_id="job-1", seq=1, delta="FORGED")))
        await until(lambda: final_of(arrived) is not None, timeout_s=10)
        await until(lambda: bool(attacker.violations()))
        await router.nc.close()
        await attacker.nc.close()

    final = final_of(arrived)
    assert final is not None
    assert final.status == "ok", final.error
    assert final.node_id == "gpu-a"
    assert all(b"FORGED" not in msg.data for msg in arrived)
    assert len(arrived) > 2  # chunks, one per token, then the final answer
