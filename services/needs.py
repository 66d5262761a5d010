"""What a job needs from a model, and the refusal when the model cannot do it (DESIGN §3).

The rule, stated once: a field that changes what the answer means (tools, images,
response_format, n > 1, logprobs, an embed job) is honoured or refused with BAD_REQUEST
naming the field and the reason; it is never ignored. The worker asks `refusal` before it
takes a slot; the router asks `needed_capabilities` to pick only nodes whose
record says the model can.

Capability names are Ollama's (`/api/show` `capabilities`), used for every runtime:
`completion`, `tools`, `vision`, `embedding`, `thinking`, `insert`. An empty capability
list means "unknown" (a record from an older worker) and refuses nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from services.errors import ErrorCode, InferbusError
from services.wire import JobRequest, JobType

Capability = Literal["completion", "tools", "vision", "embedding", "thinking", "insert"]

# The job fields beyond DESIGN §3's first version that this worker honours or refuses by
# name; published in the record as `wire_features` so routers know who understands them.
WIRE_FEATURES: tuple[str, ...] = (
    "tools",  # tools, tool_choice, parallel_tool_calls, message tool_calls / tool_call_id
    "response_format",
    "logprobs",
    "penalties",  # presence_penalty, frequency_penalty
    "n",  # refused above 1
    "extra",
    "embed",  # embed jobs on node.<id>.embed.request
    "raw",  # raw prompts (legacy completions) and suffix (fill-in-the-middle)
    "show",  # answers node.<id>.show (a served model's details, services/show.py)
    "continue",  # continue_final: every chat runtime of the node continues a prefill
    "template",  # extra.template: a prompt template of the request's own (Ollama runtimes)
)

# The runtimes that apply a request's own prompt template (`extra.template`, Ollama's
# `/api/generate` `template`); every other runtime applies the model's own.
TEMPLATE_RUNTIMES = frozenset({"ollama"})


# Runtimes that continue a final assistant message instead of answering it: Ollama's
# templates leave a last assistant turn open, llama.cpp's server prefills it, vLLM takes
# `continue_final_message`. Other OpenAI-compatible servers answer it as a new turn.
CONTINUING_RUNTIMES = frozenset({"ollama", "llamacpp", "vllm"})


def node_wire_features(runtime_kinds: Iterable[str]) -> tuple[str, ...]:
    """The node's `wire_features`: `continue` only when every runtime it serves from can
    continue a message, so a router never resumes a stream on one that would start over."""
    if all(kind in CONTINUING_RUNTIMES for kind in runtime_kinds):
        return WIRE_FEATURES
    return tuple(feature for feature in WIRE_FEATURES if feature != "continue")


@dataclass(frozen=True)
class Need:
    """A capability a job needs, and the field of the job that needs it."""

    capability: Capability
    field: str


def wants_tools(request: JobRequest) -> bool:
    """Tools offered and not switched off by `tool_choice: none`."""
    return bool(request.tools) and request.tool_choice != "none"


def needed_capabilities(request: JobRequest, job_type: JobType) -> list[Need]:
    """The capabilities a model must have to answer this job as asked."""
    if job_type == "embed":
        return [Need("embedding", "input")]
    needs = [Need("completion", "messages" if request.messages else "prompt")]
    if request.suffix is not None:
        needs.append(Need("insert", "suffix"))
    if wants_tools(request):
        needs.append(Need("tools", "tools"))
    if request.has_images():
        needs.append(Need("vision", "images"))
    thinking = wants_thinking(request)
    if thinking is not None:
        needs.append(Need("thinking", thinking))
    return needs


def wants_thinking(request: JobRequest) -> str | None:
    """The field that asks the model to think (Ollama's `think`, or the chat template's
    `enable_thinking` that vLLM and llama.cpp read), None when none does."""
    extra = request.extra
    if not extra:
        return None
    if extra.get("think"):
        return "extra.think"
    kwargs = extra.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("enable_thinking"):
        return "extra.chat_template_kwargs.enable_thinking"
    return None


def wants_template(request: JobRequest) -> bool:
    """The job brings a prompt template of its own (`extra.template`)."""
    return bool(request.extra) and bool(request.extra.get("template"))


def _bad(field: str, reason: str) -> InferbusError:
    return InferbusError(ErrorCode.BAD_REQUEST, f"{field}: {reason}")


def _template_problem(request: JobRequest) -> InferbusError | None:
    """A template renders one prompt (and a system message): Ollama's `/api/generate`."""
    template = request.extra.get("template")
    if not isinstance(template, str):
        return _bad("extra.template", "must be a string (a Go template, as Ollama's)")
    roles = [message.role for message in request.chat_messages()]
    if roles not in (["user"], ["system", "user"]) or request.continue_final:
        return _bad("extra.template", "renders one prompt (and a system message), not a chat")
    if request.tools or request.raw or request.suffix is not None:
        field = "tools" if request.tools else "raw" if request.raw else "suffix"
        return _bad("extra.template", f"takes no {field}")
    return None


def shape_problem(request: JobRequest, job_type: JobType) -> InferbusError | None:
    """A job whose fields contradict each other or its type; no model could answer it."""
    if job_type == "embed":
        if not request.embed_inputs():
            return _bad("input", "an embed job needs `input` (a string or a list of strings)")
        if request.stream:
            return _bad("stream", "embeddings are not streamed")
        if request.tools or request.response_format is not None:
            field = "tools" if request.tools else "response_format"
            return _bad(field, "an embed job answers vectors, not chat")
        return None
    if not request.messages and request.prompt is None:
        return _bad("input", f"only embed jobs take `input`; a {job_type} job needs messages")
    if wants_template(request):
        template = _template_problem(request)
        if template is not None:
            return template
    completion = _completion_problem(request)
    if completion is not None:
        return completion
    if request.params.n is not None and request.params.n > 1:
        return _bad("params.n", "a job answers one choice; send n jobs for n choices")
    choice = request.tool_choice
    if choice is not None and choice != "none" and not request.tools:
        return _bad("tool_choice", "there are no `tools` to choose from")
    if choice is not None and not isinstance(choice, str):
        offered = {tool.function.name for tool in request.tools or ()}
        if choice.function.name not in offered:
            return _bad("tool_choice", f"function {choice.function.name!r} is not in `tools`")
    return None


def _completion_problem(request: JobRequest) -> InferbusError | None:
    """A raw or fill-in-the-middle job completes one prompt: nothing chat-shaped fits."""
    if not request.raw and request.suffix is None:
        return None
    field = "raw" if request.raw else "suffix"
    if request.prompt is None or request.messages:
        return _bad(field, "a completion job sends `prompt`, not `messages`")
    unsupported = {
        "tools": bool(request.tools),
        "images": bool(request.images),
        "logprobs": bool(request.params.logprobs),
        "response_format": request.response_format is not None,
    }
    for what, given in unsupported.items():
        if given:
            return _bad(field, f"a completion job takes no {what}")
    return None


def refusal(
    request: JobRequest,
    job_type: JobType,
    *,
    model: str,
    capabilities: Collection[str],
    node_id: str,
) -> InferbusError | None:
    """Why this model on this node cannot answer this job as asked, or None."""
    problem = shape_problem(request, job_type)
    if problem is not None or not capabilities:
        return problem
    for need in needed_capabilities(request, job_type):
        if need.capability not in capabilities:
            return _bad(
                need.field,
                f"model {model!r} on node {node_id} does not support {need.capability}",
            )
    return None
