"""The reason a refusal carries, read from real providers' error bodies.

Every body below was seen in the wild; its source is the last column. Where a source quoted
only the message (a client printed `402 Insufficient Balance`), the envelope around it is the
provider's documented one and the row says so.
"""

from __future__ import annotations

import httpx
import pytest

from services.errors import ErrorCode, Reason
from services.runtimes.errors import classify_http_error, classify_stream_error
from services.runtimes.reasons import reason_of
from services.wire import ErrorInfo, JobResponse, decode_response, encode

# (case, status, body, reason, source)
REAL_BODIES: list[tuple[str, int, bytes, Reason, str]] = [
    # --- OpenAI ---------------------------------------------------------------------------
    (
        "openai empty account is a 429 that means quota",
        429,
        b'{"error":{"message":"You exceeded your current quota, please check your plan and '
        b'billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}',
        Reason.QUOTA,
        "https://github.com/openai/openai-cookbook/issues/844",
    ),
    (
        "openai revoked key",
        401,
        b'{"error":{"message":"Incorrect API key provided: sk-VKMIs***wjh3. You can find your '
        b'API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error",'
        b'"param":null,"code":"invalid_api_key"}}',
        Reason.AUTH,
        "https://github.com/chatanywhere/GPT_API_free/issues/62",
    ),
    (
        "openai tokens-per-minute rate limit",
        429,
        b'{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per '
        b'min (TPM): Limit 30000, Used 14567, Requested 24754. Please try again in 18.642s.",'
        b'"type":"tokens","param":null,"code":"rate_limit_exceeded"}}',
        Reason.RATE_LIMITED,
        "https://github.com/semanser/codel/issues/72 (message; OpenAI envelope)",
    ),
    (
        "openai max_tokens above the model's completion ceiling",
        400,
        b'{"error":{"message":"max_tokens is too large: 32000. This model supports at most 4096 '
        b'completion tokens, whereas you provided 32000.","type":"invalid_request_error",'
        b'"param":"max_tokens","code":null}}',
        Reason.OUTPUT_LIMIT,
        "https://community.zapier.com/troubleshooting-99/chatgpt-error-400-max-token-is-too-"
        "large-32768-this-model-supports-at-most-4096-completion-tokens-39804",
    ),
    (
        "openai prompt plus completion over the window: dropping max_tokens is the cure",
        400,
        b'{"error":{"message":"This model\'s maximum context length is 4097 tokens, however you '
        b"requested 5018 tokens (1018 in your prompt; 4000 for the completion). Please reduce "
        b'your prompt; or completion length.","type":"invalid_request_error","param":null,'
        b'"code":null}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/yalattas/mindmate/issues/9 (message; OpenAI envelope)",
    ),
    (
        "openai prompt alone over the window",
        400,
        b'{"error":{"message":"This model\'s maximum context length is 16385 tokens. However, '
        b'your messages resulted in 20000 tokens. Please reduce the length of the messages.",'
        b'"type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
        Reason.CONTEXT_EXCEEDED,
        "OpenAI error envelope with code context_length_exceeded (services/runtimes/errors.py)",
    ),
    (
        "openai unknown model",
        404,
        b'{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.",'
        b'"type":"invalid_request_error","param":null,"code":"model_not_found"}}',
        Reason.MODEL_MISSING,
        "OpenAI error envelope, code model_not_found (the simulator renders the same)",
    ),
    (
        "openai server error",
        500,
        b'{"error":{"message":"The server had an error while processing your request. Sorry '
        b'about that!","type":"server_error","param":null,"code":null}}',
        Reason.TRANSIENT,
        "OpenAI 500 body (tools/simulator/openai_api.py renders it)",
    ),
    # --- Anthropic (OpenAI-compatible endpoint answers in Anthropic's error shape) --------
    (
        "anthropic invalid x-api-key",
        401,
        b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},'
        b'"request_id":"req_011CXw8h8A796q3f74Ezmhav"}',
        Reason.AUTH,
        "https://github.com/Good-player/free-claude-api-and-anthropic/issues/14",
    ),
    (
        "anthropic overloaded",
        529,
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        Reason.TRANSIENT,
        "https://docs.llmgateway.io/troubleshooting/anthropic-529-overloaded",
    ),
    (
        "anthropic max_tokens above the model's output ceiling",
        400,
        b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 1000000 '
        b"> 64000, which is the maximum allowed number of output tokens for "
        b'claude-sonnet-4-20250514"}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/OpenHands/OpenHands/issues/11090 (message; Anthropic envelope)",
    ),
    (
        "anthropic input-token rate limit mentions 'maximum tokens requested' and is a rate",
        429,
        b'{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed '
        b"the rate limit for your organization (a22cf6e6) of 1,000,000 input tokens per minute. "
        b"Please reduce the prompt length or the maximum tokens requested, or try again later."
        b'"}}',
        Reason.RATE_LIMITED,
        "https://github.com/stackblitz/bolt.new/issues/8588 (message; Anthropic envelope)",
    ),
    # --- DeepSeek -------------------------------------------------------------------------
    (
        "deepseek insufficient balance",
        402,
        b'{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,'
        b'"code":"invalid_request_error"}}',
        Reason.QUOTA,
        "https://github.com/Aider-AI/aider/issues/4851",
    ),
    (
        "deepseek authentication fails",
        401,
        b'{"error":{"message":"Authentication Fails, Your api key: ****d569 is invalid","type":'
        b'"authentication_error","param":null,"code":"invalid_request_error"}}',
        Reason.AUTH,
        "https://github.com/ZhuLinsen/daily_stock_analysis/issues/485",
    ),
    (
        "deepseek max_tokens out of range",
        400,
        b'{"error":{"message":"Invalid max_tokens value, the valid range of max_tokens is [1, '
        b'8192]","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/HELPMEEADICE/doge-code/issues/32",
    ),
    # --- OpenRouter -----------------------------------------------------------------------
    (
        "openrouter out of credits says max_tokens but is quota",
        402,
        b'{"error":{"message":"This request requires more credits, or fewer max_tokens. You '
        b"requested up to 4096 tokens, but can only afford 4000. To increase, visit "
        b'https://openrouter.ai/settings/credits and upgrade to a paid account","code":402}}',
        Reason.QUOTA,
        "https://github.com/continuedev/continue/issues/10298 (message; OpenRouter envelope)",
    ),
    (
        "openrouter key limit in a doubly nested error",
        402,
        b'{"error":{"error":{"message":"More credits are required to run this request. 128000 '
        b"token capacity required, 19484 available. To increase, visit "
        b'https://openrouter.ai/settings/keys and create a key with a higher limit","code":402},'
        b'"code":402}}',
        Reason.QUOTA,
        "https://github.com/tailcallhq/forgecode/issues/571",
    ),
    (
        "openrouter upstream max_tokens ceiling",
        400,
        b'{"error":{"message":"Upstream error from DeepInfra: max_tokens=131072 cannot be greater '
        b"than max_model_len=max_total_tokens=28672. Please request fewer output tokens. "
        b'(parameter=max_tokens, value=131072)","code":400}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/HeyPuter/puter/issues/3564 (message; OpenRouter envelope)",
    ),
    # --- Mistral --------------------------------------------------------------------------
    (
        "mistral unauthorized",
        401,
        b'{"message":"Unauthorized","request_id":"c61f2f15feca71626a990e3740f99245"}',
        Reason.AUTH,
        "https://github.com/cline/cline/issues/1734",
    ),
    (
        "mistral rate limit",
        429,
        b'{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,'
        b'"code":"1300"}',
        Reason.RATE_LIMITED,
        "https://github.com/cline/cline/issues/9085",
    ),
    (
        "mistral requests rate limit",
        429,
        b'{"message":"Requests rate limit exceeded"}',
        Reason.RATE_LIMITED,
        "https://github.com/pydantic/pydantic-ai/issues/1885",
    ),
    # --- Groq -----------------------------------------------------------------------------
    (
        "groq tokens-per-minute rate limit",
        429,
        b'{"error":{"message":"Rate limit reached for model `llama-3.3-70b-versatile` in '
        b"organization `org_01hs26sgxde6dva0eke39336sv` on tokens per minute (TPM): Limit 6000, "
        b"Used 3513, Requested 3166. Please try again in 6.780999999s. Visit "
        b'https://console.groq.com/docs/rate-limits for more information.","type":"tokens",'
        b'"code":"rate_limit_exceeded"}}',
        Reason.RATE_LIMITED,
        "https://github.com/openinterpreter/openinterpreter/issues/408",
    ),
    (
        "groq max_tokens above the model's ceiling",
        400,
        b'{"error":{"message":"`max_tokens` must be less than or equal to `16384`, the maximum '
        b'value for `max_tokens` is less than the `context_window` for this model",'
        b'"type":"invalid_request_error"}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/anomalyco/opencode/issues/1000 (message; OpenAI envelope)",
    ),
    # --- Ollama ---------------------------------------------------------------------------
    (
        "ollama model not pulled",
        404,
        b'{"error":"model \\"nope\\" not found, try pulling it first"}',
        Reason.MODEL_MISSING,
        "ollama/ollama server/routes.go (the existing runtime tests' row)",
    ),
    (
        "ollama out of memory is a 500",
        500,
        b'{"error":"model requires more system memory (5.0 GiB) than is available (3.9 GiB)"}',
        Reason.TRANSIENT,
        "https://github.com/continuedev/continue/issues/11715",
    ),
    (
        "ollama context overflow on a 500",
        500,
        b'{"error":"the input length exceeds the context length"}',
        Reason.CONTEXT_EXCEEDED,
        "ollama/ollama llm/server.go (the existing runtime tests' row)",
    ),
    (
        "ollama busy",
        503,
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}',
        Reason.TRANSIENT,
        "ollama/ollama server/sched.go (the existing runtime tests' row)",
    ),
    # --- vLLM -----------------------------------------------------------------------------
    (
        "vllm legacy unknown model",
        404,
        b'{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError",'
        b'"param":null,"code":404}',
        Reason.MODEL_MISSING,
        "vllm-project/vllm entrypoints/openai/serving_engine.py (existing runtime tests' row)",
    ),
    (
        "vllm prompt plus completion over the window",
        400,
        b'{"object":"error","message":"This model\'s maximum context length is 6048 tokens. '
        b"However, you requested 6616 tokens (568 in the messages, 6048 in the completion). "
        b'Please reduce the length of the messages or completion.","type":"BadRequestError",'
        b'"param":null,"code":400}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/ogx-ai/ogx/issues/4534",
    ),
    (
        "vllm requested output tokens over the window",
        400,
        b'{"error":{"message":"This model\'s maximum context length is 128000 tokens. However, '
        b"you requested 65535 output tokens and your prompt contains at least 62466 input tokens, "
        b'for a total of at least 128001 tokens.","type":"BadRequestError","param":null,'
        b'"code":400}}',
        Reason.OUTPUT_LIMIT,
        "https://github.com/vllm-project/vllm/issues/42474 (message; vLLM envelope)",
    ),
    # --- llama.cpp server -----------------------------------------------------------------
    (
        "llama.cpp prompt over the context size",
        400,
        b'{"error":{"code":400,"message":"request (9412 tokens) exceeds the available context '
        b'size (8192 tokens), try increasing it","type":"exceed_context_size_error",'
        b'"n_prompt_tokens":9412,"n_ctx":8192}}',
        Reason.CONTEXT_EXCEEDED,
        "ggml-org/llama.cpp tools/server (the existing runtime tests' row)",
    ),
    (
        "llama.cpp wrong --api-key",
        401,
        b'{"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}',
        Reason.AUTH,
        "ggml-org/llama.cpp tools/server (the existing runtime tests' 'bad api key' row)",
    ),
    (
        "llama.cpp still loading",
        503,
        b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
        Reason.TRANSIENT,
        "ggml-org/llama.cpp tools/server (the existing runtime tests' row)",
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [case[1:4] for case in REAL_BODIES],
    ids=[case[0] for case in REAL_BODIES],
)
def test_real_error_bodies_carry_the_reason_the_chain_needs(
    status: int, body: bytes, reason: Reason
) -> None:
    assert classify_http_error(status, body, httpx.Headers({})).reason == reason


def test_every_provider_named_in_the_issue_has_rows() -> None:
    sources = " ".join(case[0] for case in REAL_BODIES)
    for provider in (
        "openai",
        "anthropic",
        "deepseek",
        "openrouter",
        "mistral",
        "groq",
        "ollama",
        "vllm",
        "llama.cpp",
    ):
        assert provider in sources


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        (429, "slow down", Reason.RATE_LIMITED),
        (403, "forbidden", Reason.AUTH),
        (400, "temperature must be >= 0", Reason.BAD_REQUEST),
        (422, "field required", Reason.BAD_REQUEST),
        (413, "request entity too large", Reason.BAD_REQUEST),
        (408, "request timeout", Reason.TRANSIENT),
        (502, "<html>bad gateway</html>", Reason.TRANSIENT),
        (418, "", Reason.BAD_REQUEST),
        (None, "something odd", Reason.UNKNOWN),
        (None, "model 'x' not found", Reason.MODEL_MISSING),
        (500, "Anthropic 429 of 8,000 output tokens per minute", Reason.TRANSIENT),
        (429, "exceed the rate limit of 8,000 output tokens per minute", Reason.RATE_LIMITED),
    ],
)
def test_status_alone_decides_when_the_body_says_nothing(
    status: int | None, message: str, reason: Reason
) -> None:
    assert reason_of(status, message) == reason


def test_a_numeric_code_inside_a_stream_error_stands_in_for_the_status() -> None:
    # OpenRouter sends mid-stream failures as {"error": {"code": 429, ...}} after a 200.
    payload = {"error": {"code": 429, "message": "Provider returned error"}}
    assert classify_stream_error(payload).reason == Reason.RATE_LIMITED


def test_the_reason_does_not_change_the_code() -> None:
    error = classify_http_error(
        429, REAL_BODIES[0][2], httpx.Headers({"retry-after": "20"}), now_unix_s=0
    )
    assert (error.code, error.retry_after_ms, error.reason) == (
        ErrorCode.BACKEND_UNAVAILABLE,
        20_000,
        Reason.QUOTA,
    )


def test_retry_after_as_an_http_date_becomes_ms_with_the_clock_passed_in() -> None:
    error = classify_http_error(
        429,
        b'{"error":{"message":"Rate limit exceeded"}}',
        httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}),
        now_unix_s=1445412480.0,
    )
    assert (error.reason, error.retry_after_ms) == (Reason.RATE_LIMITED, 10_000)


def test_the_reason_travels_on_the_wire_and_old_readers_ignore_it() -> None:
    error = classify_http_error(402, REAL_BODIES[12][2], httpx.Headers({}))
    sent = encode(JobResponse.failure("j1", error))
    assert b'"reason":"quota"' in sent
    received = decode_response(sent)
    assert received.error is not None
    assert received.error.reason == Reason.QUOTA


def test_a_reason_this_reader_does_not_know_is_read_as_unknown() -> None:
    info = ErrorInfo.model_validate(
        {"code": "BACKEND_ERROR", "message": "x", "reason": "from_the_future"}
    )
    assert info.reason == Reason.UNKNOWN
    assert ErrorInfo.model_validate({"code": "BACKEND_ERROR", "message": "x"}).reason is None
