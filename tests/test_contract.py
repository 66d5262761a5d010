"""The pure parts of the contract: envelope parsing, deadlines, subjects, node ids."""

from __future__ import annotations

import pytest

from services.deadlines import remaining_budget_ms
from services.settings import NatsAuth
from services.subjects import Subjects, validate_node_id, validate_prefix
from services.wire import JOB_TYPES, JobRequest, JobResponse, JobType, decode_request, slot_kind


@pytest.mark.parametrize(
    ("data", "expected_prompt_text"),
    [
        (b'{"prompt": "hi"}', "hi"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "hi"),
        (
            b'{"messages": [{"content": [{"type": "text", "text": "h"},'
            b' {"type": "text", "text": "i"}]}]}',
            "hi",
        ),
        (b'{"prompt": "hi", "unknown_field": {"x": 1}}', "hi"),
    ],
)
def test_lenient_input_is_accepted(data: bytes, expected_prompt_text: str) -> None:
    request = decode_request(data, default_type="llm")
    assert isinstance(request, JobRequest)
    assert request.chat_messages()[-1].text == expected_prompt_text
    assert request.type == "llm"
    assert request.key == request.job_id


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"", "body"),
        (b"\x00\xff", "body"),
        (b"[1, 2]", "body"),
        (b"{}", "job needs"),
        (b'{"prompt": "x", "type": "audio"}', "type"),
        (b'{"prompt": "x", "params": {"max_tokens": 0}}', "params.max_tokens"),
        (b'{"prompt": "x", "params": {"top_p": 3}}', "params.top_p"),
        (b'{"prompt": "x", "job_id": ""}', "job_id"),
        (b'{"messages": []}', "job needs"),
    ],
)
def test_bad_bytes_become_a_bad_request_response(data: bytes, where: str) -> None:
    response = decode_request(data, default_type="llm")
    assert isinstance(response, JobResponse)
    assert response.status == "error"
    assert response.error is not None
    assert response.error.code == "BAD_REQUEST"
    assert where in response.error.message
    assert response.job_id


def test_bad_request_keeps_the_callers_job_id_when_readable() -> None:
    response = decode_request(b'{"job_id": "mine", "prompt": 5}', default_type="llm")
    assert isinstance(response, JobResponse)
    assert response.job_id == "mine"


def test_images_from_both_shapes_are_collected() -> None:
    request = decode_request(
        b'{"messages": [{"role": "user", "images": ["AAA"], "content": ['
        b'{"type": "image_url", "image_url": {"url": "data:image/png;base64,BBB"}}]}],'
        b' "images": ["CCC"]}',
        default_type="vision",
    )
    assert isinstance(request, JobRequest)
    assert request.chat_messages()[-1].all_images == ["AAA", "CCC", "data:image/png;base64,BBB"]
    assert request.has_images()


def test_fingerprint_ignores_ids_and_budget_but_not_the_input() -> None:
    one = JobRequest(job_id="a", prompt="hi", timeout_ms=5)
    same = JobRequest(job_id="b", prompt="hi", timeout_ms=9000, trace="00-x")
    other = JobRequest(job_id="a", prompt="hi!")
    assert one.fingerprint() == same.fingerprint()
    assert one.fingerprint() != other.fingerprint()


@pytest.mark.parametrize(
    ("timeout_ms", "deadline_unix_ms", "now", "expected"),
    [
        (None, None, 1_000, 120_000),
        (500, None, 1_000, 500),
        (0, None, 1_000, 0),
        (-3, None, 1_000, -3),
        (60_000, 1_500, 1_000, 500),  # the absolute deadline is earlier
        (200, 10_000, 1_000, 200),  # the budget is earlier
        (60_000, 900, 1_000, -100),  # sat in transit past its deadline
    ],
)
def test_remaining_budget(
    timeout_ms: int | None, deadline_unix_ms: int | None, now: float, expected: float
) -> None:
    assert (
        remaining_budget_ms(
            timeout_ms=timeout_ms,
            deadline_unix_ms=deadline_unix_ms,
            default_timeout_ms=120_000,
            now_unix_ms=now,
        )
        == expected
    )


@pytest.mark.parametrize("node_id", ["gpu-a", "GPU_1", "a", "x" * 64])
def test_subject_safe_node_ids_are_accepted(node_id: str) -> None:
    assert validate_node_id(node_id) == node_id


@pytest.mark.parametrize("node_id", ["", "gpu.a", "gpu a", "gpu*", "gpu>", "x" * 65, "é"])
def test_unsafe_node_ids_are_refused(node_id: str) -> None:
    with pytest.raises(ValueError, match="subject-safe"):
        validate_node_id(node_id)


@pytest.mark.parametrize(
    ("job_type", "kind"),
    [("llm", "llm"), ("code", "llm"), ("vision", "vision"), ("embed", "embed")],
)
def test_a_job_types_slot_kind_names_its_subject(job_type: JobType, kind: str) -> None:
    assert slot_kind(job_type) == kind
    assert Subjects().job("gpu-a", job_type) == f"node.gpu-a.{kind}.request"


def test_every_job_type_has_a_slot_kind() -> None:
    assert {slot_kind(job_type) for job_type in JOB_TYPES} == {"llm", "vision", "embed"}


def test_subjects_with_and_without_prefix() -> None:
    assert Subjects().job("gpu-a", "llm") == "node.gpu-a.llm.request"
    assert Subjects().job("gpu-a", "code") == "node.gpu-a.llm.request"
    assert Subjects("prod").job("gpu-a", "vision") == "prod.node.gpu-a.vision.request"
    assert Subjects("prod").capabilities("gpu-a") == "prod.ncs.capabilities.gpu-a"
    assert Subjects().discover() == "ncs.discover"
    assert validate_prefix("prod.eu") == "prod.eu"
    with pytest.raises(ValueError, match="prefix"):
        validate_prefix("prod.*")


def test_hand_typed_conveniences_are_understood() -> None:
    request = decode_request(
        b'{"job_id": 42, "prompt": "hi", "max_tokens": 5, "params": {"temperature": 0.5}}',
        default_type="llm",
    )
    assert isinstance(request, JobRequest)
    assert request.job_id == "42"
    assert request.params.max_tokens == 5
    assert request.params.temperature == 0.5


@pytest.mark.parametrize("field", ["timeout_ms", "deadline_unix_ms"])
def test_absurd_budgets_are_bad_requests_not_crashes(field: str) -> None:
    response = decode_request(
        b'{"prompt": "x", "' + field.encode() + b'": ' + b"9" * 400 + b"}", default_type="llm"
    )
    assert isinstance(response, JobResponse)
    assert response.error is not None
    assert response.error.code == "BAD_REQUEST"
    assert field in response.error.message


def test_nats_credentials_from_the_environment_for_one_shot_commands() -> None:
    auth = NatsAuth.from_env({"INFERBUS_NATS__USER": "gpu-a", "INFERBUS_NATS__PASSWORD": "pw"})
    assert auth.connect_options() == {"user": "gpu-a", "password": "pw"}
    assert "pw" not in repr(auth)
    assert NatsAuth.from_env({"PATH": "/bin"}).connect_options() == {}
    with pytest.raises(ValueError, match="only one of"):
        NatsAuth.from_env({"INFERBUS_NATS__USER": "a", "INFERBUS_NATS__TOKEN": "t"})
