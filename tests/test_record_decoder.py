"""Heartbeat decoding: reusing the previous record gives exactly what full validation gives."""

from __future__ import annotations

import json

import pytest

from router.fleet.records import RecordDecoder, Refused, parse_object
from services.capabilities import (
    BackendStats,
    RunningModel,
    RuntimeStatus,
    decode_capabilities,
    encode_capabilities,
)
from tests.test_fleet_index import LLAMA, QWEN, record


def decode(decoder: RecordDecoder, data: bytes) -> tuple[object, bool] | None:
    decoded = decoder.decode("a", data)
    if isinstance(decoded, Refused):
        return None
    decoder.keep("a", decoded)
    return decoded.record, decoded.reused


def test_a_load_only_heartbeat_reuses_the_record_and_equals_full_validation() -> None:
    decoder = RecordDecoder()
    decode(decoder, encode_capabilities(record("a", LLAMA, QWEN)))
    beat = encode_capabilities(record("a", LLAMA, QWEN, seq=2, llm=(3, 4), ts=5.0, instance="r2"))
    got = decode(decoder, beat)
    assert got == (decode_capabilities(beat), True)


def runtime(invocations: int, latency_ms: float) -> RuntimeStatus:
    return RuntimeStatus(
        kind="ollama",
        url="http://127.0.0.1:11434",
        state="healthy",
        latency_ms=latency_ms,
        models=2,
        stats=BackendStats(invocations=invocations, tokens_out=7 * invocations),
    )


def test_a_slot_freed_by_a_finished_job_reuses_the_record() -> None:
    """A real worker's announcement after a job: its runtime's counters and probe latency
    and Ollama's expiry of the running model moved, its models did not."""
    decoder = RecordDecoder()
    first = record("a", LLAMA, QWEN).model_copy(update={"runtimes": (runtime(3, 1.5),)})
    decode(decoder, encode_capabilities(first))
    after_job = first.model_copy(
        update={
            "seq": 2,
            "runtimes": (runtime(4, 2.25),),
            "running_models": (RunningModel(name=LLAMA.name, expires_at="2026-12-07T21:00:00Z"),),
        }
    )
    beat = encode_capabilities(after_job)
    assert decode(decoder, beat) == (decode_capabilities(beat), True)


def test_bad_runtimes_in_a_heartbeat_are_not_a_record() -> None:
    decoder = RecordDecoder()
    first = json.loads(encode_capabilities(record("a", LLAMA)))
    decode(decoder, json.dumps(first).encode())
    bad_state = {**first, "runtimes": [{"kind": "ollama", "url": "u", "state": "on fire"}]}
    assert decode(decoder, json.dumps(bad_state).encode()) is None
    assert decode(decoder, json.dumps({**first, "running_models": [{}]}).encode()) is None


def test_changed_models_are_validated_in_full() -> None:
    decoder = RecordDecoder()
    decode(decoder, encode_capabilities(record("a", LLAMA)))
    changed = encode_capabilities(record("a", QWEN, seq=2))
    assert decode(decoder, changed) == (decode_capabilities(changed), False)


def test_bad_moving_fields_or_bytes_are_not_a_record() -> None:
    decoder = RecordDecoder()
    first = json.loads(encode_capabilities(record("a", LLAMA)))
    decode(decoder, json.dumps(first).encode())
    assert decode(decoder, json.dumps({**first, "seq": "two"}).encode()) is None
    assert (
        decode(decoder, json.dumps({**first, "load": {"llm": {"inflight": -1}}}).encode()) is None
    )
    assert parse_object(b"not json") is None
    assert parse_object(b"[1, 2]") is None


def test_a_record_in_wire_order_gives_its_steady_bytes_and_any_order_still_reuses() -> None:
    decoder = RecordDecoder()
    first = decoder.decode("a", encode_capabilities(record("a", LLAMA, QWEN)))
    assert not isinstance(first, Refused)
    assert first.prefix is not None
    assert first.prefix.startswith(b'{"node_id":"a"')
    assert b'"seq"' not in first.prefix
    shuffled = json.dumps(json.loads(encode_capabilities(record("b", LLAMA))), sort_keys=True)
    other = decoder.decode("b", shuffled.encode())
    assert not isinstance(other, Refused)
    assert other.prefix is None  # not in wire order: compared as parsed JSON instead
    decoder.keep("b", other)
    beat = json.dumps(json.loads(encode_capabilities(record("b", LLAMA, seq=2))), sort_keys=True)
    assert decode_b(decoder, beat.encode()) == (decode_capabilities(beat.encode()), True)


def decode_b(decoder: RecordDecoder, data: bytes) -> tuple[object, bool] | None:
    decoded = decoder.decode("b", data)
    return None if isinstance(decoded, Refused) else (decoded.record, decoded.reused)


FIRST = encode_capabilities(record("a", LLAMA, QWEN))
STEADY = FIRST[: FIRST.index(b',"instance":') + 1]


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        pytest.param(b'"seq":2,"ts":3.5}', "reused", id="load-only"),
        pytest.param(
            b'"seq":2,"ts":3.5,"load":{"llm":{"inflight":4,"capacity":4}}}',
            "reused",
            id="slot-taken",
        ),
        pytest.param(b'"seq":2,"ts":3.5,"node_id":"b"}', "forged", id="node-id-after"),
        pytest.param(b'"seq":2,"ts":3.5,"served_models":[]}', "full", id="models-after"),
        pytest.param(b'"seq":2,"ts":3.5,"ttl_s":1e9}', "refused", id="ttl-after"),
        pytest.param(b'"seq":"two","ts":3.5}', "refused", id="bad-seq"),
        pytest.param(b'"ts":3.5}', "refused", id="no-seq"),
        pytest.param(b"}", "refused", id="trailing-comma"),
        pytest.param(b'"seq":2,"ts":3.5}, "x": 1}', "refused", id="extra-data"),
        pytest.param(b'"seq":2,"ts":3.5,"load":{"llm":{"inflight":-1}}}', "refused", id="bad-load"),
    ],
)
def test_the_rest_after_known_steady_bytes_is_judged_as_full_parsing_would(
    rest: bytes, expected: str
) -> None:
    """Whatever follows the node's steady bytes, the outcome is the full decoding's."""
    decoder = RecordDecoder()
    first = decoder.decode("a", FIRST)
    assert not isinstance(first, Refused)
    decoder.keep("a", first)
    data = STEADY + rest
    decoded = decoder.decode("a", data)
    full = decode_capabilities(data)
    if expected == "forged":
        assert isinstance(decoded, Refused)
        assert decoded.reason == "forged"
    elif expected == "refused":
        assert isinstance(decoded, Refused)
        assert full is None
    else:
        assert not isinstance(decoded, Refused)
        assert decoded.record == full
        assert decoded.reused is (expected == "reused")
