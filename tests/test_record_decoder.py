"""Heartbeat decoding: reusing the previous record gives exactly what full validation gives."""

from __future__ import annotations

import json

from router.fleet.records import RecordDecoder
from services.capabilities import (
    BackendStats,
    RunningModel,
    RuntimeStatus,
    decode_capabilities,
    encode_capabilities,
)
from tests.test_fleet_index import LLAMA, QWEN, record


def decode(decoder: RecordDecoder, data: bytes) -> tuple[object, bool] | None:
    raw = decoder.parse(data)
    assert raw is not None
    decoded = decoder.decode("a", raw)
    if decoded is None:
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
    assert decoder.parse(b"not json") is None
    assert decoder.parse(b"[1, 2]") is None
