"""The pure rules behind one runtime call per key, by tables: claims, scopes, sameness."""

from __future__ import annotations

import asyncio
import base64

import pytest

from router.admission.idempotency import (
    IdempotencyGate,
    Kept,
    KeptAnswers,
    KeyedJob,
    scoped_key,
)
from router.admission.sealing import SealedRecords
from router.admission.tenants import SHARED_SCOPE, tenant_of
from router.attempts.route import Route
from router.serving.call import Call, Calls
from services.errors import ErrorCode, InferbusError
from services.keystore import (
    ROUTER_SPACE,
    Found,
    Next,
    Record,
    decide_claim,
    kv_key,
    worker_space,
)
from services.wire import JobRequest, JobResponse, Result
from tests.jobs import until

NOW = 1_000_000.0


def running(lease_until: float) -> Found:
    record = Record(
        state="running", job="j", model="m", owner="a/1", lease_until_unix_ms=lease_until
    )
    return Found(record, revision=7)


DONE = Found(
    Record(state="done", job="j", model="m", response=JobResponse(job_id="x", status="ok")), 9
)


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (None, Next.TAKE),
        (running(NOW + 1), Next.WAIT),
        (running(NOW), Next.TAKE),  # the lease ran out this very millisecond
        (running(NOW - 5_000), Next.TAKE),  # its owner died or hung
        (DONE, Next.REPLAY),
    ],
)
def test_a_claim_is_taken_waited_for_or_replayed(found: Found | None, expected: Next) -> None:
    assert decide_claim(found, NOW) is expected


@pytest.mark.parametrize(
    ("authorization", "keys_configured", "same_as"),
    [
        (None, True, SHARED_SCOPE),
        ("Bearer ", True, SHARED_SCOPE),
        ("Basic abc", True, SHARED_SCOPE),
        ("Bearer key-a", False, SHARED_SCOPE),  # no keys configured: nobody authenticated
    ],
)
def test_unauthenticated_callers_share_one_scope(
    authorization: str | None, keys_configured: bool, same_as: str
) -> None:
    assert tenant_of(authorization, keys_configured=keys_configured) == same_as


def test_each_api_key_is_a_scope_of_its_own_and_never_travels() -> None:
    one = tenant_of("Bearer key-a", keys_configured=True)
    assert one == tenant_of("bearer key-a", keys_configured=True)
    assert one != tenant_of("Bearer key-b", keys_configured=True)
    assert "key-a" not in one
    assert scoped_key(one, "42") != scoped_key(SHARED_SCOPE, "42")
    assert scoped_key(one, "42") == scoped_key(one, "42")
    assert len(scoped_key(one, "x" * 200)) <= 200


def test_kv_keys_are_safe_for_any_idempotency_key_and_stay_in_their_space() -> None:
    for key in ("order 42", "a.b>c*", "ünïcode/", "x" * 200):
        for space in (ROUTER_SPACE, worker_space("gpu-a")):
            prefix, _, last = kv_key(space, key).rpartition(".")
            assert prefix == space
            assert last.isalnum()
    assert kv_key(ROUTER_SPACE, "a") != kv_key(ROUTER_SPACE, "b")
    assert kv_key("n.gpu-a", "a").startswith("n.gpu-a.k")


def test_an_unreadable_or_unverified_record_is_taken_over_never_replayed() -> None:
    assert decide_claim(Found(None, revision=3), NOW) is Next.TAKE


@pytest.mark.parametrize(
    ("first_models", "again_models", "same"),
    [
        ({"llama3:8b"}, {"llama3:8b"}, True),
        ({"llama3:8b"}, {"fast", "llama3:8b"}, True),  # a profile name resolving to it
        ({"llama3:8b"}, {"tinyllama:1b"}, False),
        ({"llama3:8b"}, set(), True),  # nothing resolves now: the input decides
        (set(), {"llama3:8b"}, True),
    ],
)
def test_a_duplicate_is_the_same_job_when_its_model_resolves_the_same(
    first_models: set[str], again_models: set[str], same: bool
) -> None:
    first = KeyedJob("fp", frozenset(first_models))
    assert first.same_job("fp", frozenset(again_models)) is same
    assert first.same_job("other", frozenset(again_models)) is False


def test_the_fingerprint_ignores_stream_and_reads_a_prompt_as_one_user_message() -> None:
    whole = JobRequest.model_validate({"prompt": "hi", "params": {"max_tokens": 4}})
    streamed = whole.model_copy(update={"stream": True})
    as_messages = JobRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # OpenAI's shape
    )
    other_params = JobRequest.model_validate({"prompt": "hi", "params": {"max_tokens": 5}})
    assert whole.fingerprint() == streamed.fingerprint() == as_messages.fingerprint()
    assert whole.fingerprint() != other_params.fingerprint()
    assert whole.fingerprint() != whole.model_copy(update={"type": "code"}).fingerprint()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kept(text: str) -> Kept:
    response = JobResponse(job_id="x", status="ok", result=Result(text=text))
    return Kept(KeyedJob("fp", frozenset()), response, Route())


def test_kept_answers_expire_after_their_ttl_and_the_oldest_go_first() -> None:
    clock = Clock()
    answers = KeptAnswers(ttl_s=10, max_entries=2, clock=clock)
    answers.put("a", kept("a"))
    clock.now = 5
    answers.put("b", kept("b"))
    answers.put("c", kept("c"))  # over the bound: "a" goes
    assert answers.get("a") is None
    assert answers.get("b") is not None
    clock.now = 14.9
    assert answers.get("c") is not None
    clock.now = 15
    assert answers.get("b") is None
    assert answers.get("c") is None


class CountingInfer:
    """A stand-in for `Router.dispatch` that counts calls and answers when released."""

    def __init__(self, answer: JobResponse) -> None:
        self.answer = answer
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, call: Call) -> tuple[JobResponse, Route]:
        self.calls += 1
        await self.release.wait()
        return self.answer.model_copy(update={"job_id": call.job.job_id}), Route(via="remote")


def gate(infer: CountingInfer) -> IdempotencyGate:
    return IdempotencyGate(
        infer,
        resolve_model=lambda _job, _agent: "m",
        answers=KeptAnswers(ttl_s=60, max_entries=10, clock=Clock()),
    )


KEYED = JobRequest.model_validate({"prompt": "hi", "idempotency_key": "k", "job_id": "mine"})


def keyed_call() -> Call:
    """A call for KEYED with its budget from now."""
    return Calls(default_budget_ms=10_000).make(KEYED, tenant=SHARED_SCOPE)


async def test_a_duplicate_runs_the_job_itself_when_the_first_caller_left() -> None:
    infer = CountingInfer(JobResponse(job_id="", status="ok", result=Result(text="t")))
    keyed = gate(infer)
    first = asyncio.create_task(keyed.serve(keyed_call()))
    await until(lambda: infer.calls == 1)  # the first holds the key
    duplicate = asyncio.create_task(keyed.serve(keyed_call()))
    await asyncio.sleep(0.05)  # the duplicate waits on the first
    first.cancel()  # the first client went away before an answer
    infer.release.set()
    response, _ = await duplicate
    assert infer.calls == 2
    assert response.status == "ok"
    assert response.cached is False
    assert response.job_id == "mine"


async def test_a_failure_worth_retrying_is_passed_on_and_not_kept() -> None:
    failed = JobResponse.failure("", InferbusError(ErrorCode.BACKEND_ERROR, "boom"))
    infer = CountingInfer(failed)
    keyed = gate(infer)
    first = asyncio.create_task(keyed.serve(keyed_call()))
    await until(lambda: infer.calls == 1)  # the first holds the key
    duplicate = asyncio.create_task(keyed.serve(keyed_call()))
    await asyncio.sleep(0.05)  # the duplicate waits on the first
    infer.release.set()
    answers = [answer for answer, _ in await asyncio.gather(first, duplicate)]
    assert [answer.error.code for answer in answers if answer.error] == ["BACKEND_ERROR"] * 2
    assert [answer.cached for answer in answers] == [False, False]
    assert infer.calls == 1
    infer.answer = JobResponse(job_id="", status="ok", result=Result(text="t"))
    later, _ = await keyed.serve(keyed_call())
    assert later.status == "ok"
    assert infer.calls == 2


SEAL = bytes(range(32))
SEALED_ANSWER = Record(
    state="done",
    job="fingerprint of the job",
    model="m",
    response=JobResponse(job_id="x", status="ok"),
)


def test_a_sealed_record_opens_only_under_its_key_and_kv_key_unchanged() -> None:
    sealed = SealedRecords(SEAL)
    data = sealed.encode("r.kabc", SEALED_ANSWER)
    # secret to whoever reads the bucket without the key (a marker too long to occur by chance)
    assert b"fingerprint of the job" not in data
    assert b'"state"' not in data
    assert sealed.decode("r.kabc", data) == SEALED_ANSWER
    assert SealedRecords(bytes(32)).decode("r.kabc", data) is None  # another key
    assert sealed.decode("r.kother", data) is None  # moved to another KV key
    # one bit of the ciphertext changed (flipping a base64 letter could touch only padding bits)
    raw = bytearray(base64.urlsafe_b64decode(data[len(b"s1.") :]))
    raw[-1] ^= 1
    flipped = b"s1." + base64.urlsafe_b64encode(bytes(raw))
    assert sealed.decode("r.kabc", flipped) is None  # changed
    planted = SEALED_ANSWER.model_dump_json().encode()
    assert sealed.decode("r.kabc", planted) is None  # made up, unsealed
    assert sealed.decode("r.kabc", b"s1.not base64!") is None


def test_a_sealing_key_is_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SealedRecords(b"short")
