"""Whatever arrives on a worker's subjects, each message gets exactly one structured reply."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.wire import JobResponse
from tests.conftest import WorkerFactory, backend
from tests.jobs import llm, until, vision
from tools.simulator import Simulator

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
job_like = st.fixed_dictionaries(
    {},
    optional={
        "job_id": st.text(max_size=12) | st.integers(),
        "prompt": st.text(max_size=30) | st.integers() | st.none(),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", 7])},
                optional={"content": st.text(max_size=20) | json_values},
            ),
            max_size=3,
        )
        | json_values,
        "model": st.sampled_from(["llama3:8b", "llava:7b", "nope", ""]) | json_values,
        "params": st.fixed_dictionaries(
            {}, optional={"max_tokens": st.integers(-2, 5), "temperature": json_values}
        ),
        "timeout_ms": st.integers(-10, 5_000) | json_values,
        "images": st.lists(st.text(max_size=8), max_size=2),
        "stream": st.booleans() | json_values,
    },
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    job_like.map(lambda job: json.dumps(job).encode()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(st.tuples(st.booleans(), payloads), min_size=1, max_size=12))
async def test_every_message_gets_exactly_one_structured_reply(
    nc: NatsClient,
    simulator: Simulator,
    start_worker: WorkerFactory,
    node_id: str,
    batch: list[tuple[bool, bytes]],
) -> None:
    replies: list[Msg] = []  # final answers; a valid `stream: true` job also sends chunks
    enough = asyncio.Event()
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        if _is_chunk(msg.data):
            return
        replies.append(msg)
        if len(replies) >= len(batch) + 1:
            enough.set()

    subscription = await nc.subscribe(inbox, cb=collect)
    try:
        async with start_worker(backends=[backend(simulator.url)]):
            for to_vision, data in batch:
                subject = vision(node_id) if to_vision else llm(node_id)
                await nc.publish(subject, data, reply=inbox)
            await nc.flush()
            await until(lambda: len(replies) >= len(batch), timeout_s=20)
            # A last bad request is answered after everything before it settled:
            # by then a second reply to any earlier message would have shown up.
            await nc.publish(llm(node_id), b"sentinel", reply=inbox)
            async with asyncio.timeout(10):
                await enough.wait()
            await nc.flush()
            await asyncio.sleep(0.05)
    finally:
        await subscription.unsubscribe()

    assert len(replies) == len(batch) + 1
    for msg in replies:
        response = JobResponse.model_validate_json(msg.data)
        parsed: dict[str, Any] = json.loads(msg.data)
        assert response.status in {"ok", "error"}
        if response.status == "error":
            assert response.error is not None
            assert parsed["error"]["code"] == response.error.code
        else:
            assert response.result is not None


def _is_chunk(data: bytes) -> bool:
    """A stream chunk (`{"job_id", "seq", "delta"}`): not a final answer."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "seq" in parsed and "status" not in parsed
