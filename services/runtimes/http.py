"""The HTTP edge shared by all runtime adapters of a process: one client, two call shapes.

`new_http_client` keeps httpx's API on the `httpx_aiohttp.AiohttpTransport`: at 32-64
concurrent requests httpx's own pool stalls on contention, aiohttp's does not (DESIGN §4,
ops/bench). Adapters then use `request_json` (one JSON answer) and `stream_lines` (NDJSON
or SSE), which enforce the job's deadline with `asyncio.timeout` and translate every
failure through `services.runtimes.errors`. On that client neither builds an httpx
Request and Response: a plain `http://` runtime (the usual local one) is called on
`services.runtimes.plain_http`'s kept-alive connections, an `https://` one on the
transport's aiohttp session (`RuntimeClient.exchange` / `open`); both raise httpx's
exceptions, so the one edge that classifies failures is the same
(ops/bench/whole_path_bench.py measured each step).

The deadline is ours, not httpx's: the transport only gets a connect timeout, and the
whole call (or, for a stream, each wait for the next line) runs under the job's remaining
budget, so a runtime that trickles bytes cannot keep a job past its deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, cast

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from services.big_json import loads
from services.runtimes.errors import (
    classify_http_error,
    classify_transport_error,
    invalid_response,
)
from services.runtimes.plain_http import Opened, PlainHttp
from services.tracing import runtime_trace_headers

# Below uvicorn's 5 s keep-alive (vLLM, many OpenAI-compatible servers): a connection the
# server is about to close is not reused for a POST, which aiohttp would not retry.
KEEPALIVE_EXPIRY_S = 4.0
USER_AGENT = "inferbus/0.1"


class RuntimeClient(httpx.AsyncClient):
    """httpx's client, sending straight to its transport (or, for plain http, to `plain`).

    Runtimes use no cookies, auth or redirects, and httpx's generic send path for them
    (cookie jar round trip, auth and redirect generators, stream wrapping) cost about a
    quarter of a worker's CPU per job (py-spy, ops/bench). `send` still builds httpx
    Requests and Responses (for any caller of httpx's API); `exchange` and
    `open`, which the adapters' calls use, skip them. Transport errors are httpx's either
    way. Event hooks are not called.
    """

    def __init__(
        self,
        *,
        transport: AiohttpTransport,
        connect_timeout_s: float,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        max_idle: int = 512,
        **options: Any,
    ) -> None:
        super().__init__(transport=transport, **options)
        self._direct = transport
        self._session_timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s)
        self._default_headers = {"User-Agent": USER_AGENT}
        self._json_headers = {**self._default_headers, "Content-Type": "application/json"}
        self.plain = PlainHttp(
            connect_timeout_s=connect_timeout_s,
            keepalive_s=keepalive_expiry_s,
            max_idle=max_idle,
            user_agent=USER_AGENT,
        )

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One whole request and answer on the transport's aiohttp session, without
        building httpx's Request and Response: status, body, headers. Failures are raised
        as httpx's exceptions (the transport's own mapping), so the one edge that turns
        them into ours stays `classify_transport_error`. Both undo gzip/deflate.

        A plain `http://` runtime is called on `PlainHttp`'s kept-alive connections;
        `https://` through aiohttp.
        """
        if url.scheme == "http":
            answer = await self.plain.exchange(
                method,
                url,
                content=None if body is None else _json_bytes(body),
                headers=_plain_headers(body is not None, headers),
            )
            return answer.status, answer.body, answer.headers
        response = await self.open(method, url, body=body, headers=headers)
        try:
            with map_aiohttp_exceptions():
                return response.status, await response.read(), response.headers
        finally:
            await close_response(response)

    async def open(
        self,
        method: str,
        url: httpx.URL,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request on the aiohttp session; the answer's head is read, its body not
        (`close_response` when done). Failures are raised as httpx's exceptions."""
        content = None
        request_headers = self._default_headers
        if body is not None:  # as httpx encodes `json=`
            content = _json_bytes(body)
            request_headers = self._json_headers
        if headers:
            request_headers = {**request_headers, **headers}
        if not isinstance(self._direct.client, aiohttp.ClientSession):
            self._direct.client = self._direct.get_client()
        with map_aiohttp_exceptions():
            return await self._direct.client.request(
                method,
                str(url),
                data=content,
                headers=request_headers,
                allow_redirects=False,
                timeout=self._session_timeout,
            )

    async def aclose(self) -> None:
        self.plain.close()
        await super().aclose()

    async def __aexit__(self, *exc: Any) -> None:
        self.plain.close()
        await super().__aexit__(*exc)


def _json_bytes(body: Any) -> bytes:
    """A JSON body as httpx encodes `json=`."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


_JSON_TYPE = (("Content-Type", "application/json"),)


def _plain_headers(has_body: bool, headers: Mapping[str, str] | None) -> Iterable[tuple[str, str]]:
    given = tuple(headers.items()) if headers else ()
    return _JSON_TYPE + given if has_body else given


async def close_response(response: aiohttp.ClientResponse) -> None:
    """Give the connection back, or close it when the body was not read to its end (so
    a runtime still generating stops)."""
    with map_aiohttp_exceptions():
        await response.__aexit__(None, None, None)


def new_http_client(
    *,
    max_connections: int = 512,
    connect_timeout_s: float = 5.0,
    keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
) -> httpx.AsyncClient:
    """The process's one HTTP client for runtimes; close it with `aclose()` / `async with`.

    Safe to call outside an event loop: the aiohttp session is created on first use.
    No environment is trusted: HTTP(S)_PROXY must never send a loopback runtime through a
    proxy, nor `.netrc` add credentials. (httpx ignores env proxies once a transport is
    given, and the transport's aiohttp session keeps aiohttp's `trust_env=False`; the
    flags below say so explicitly. `HttpxAiohttpClient()` would *not* be safe: it trusts
    the environment by default and mounts proxy transports.)
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry_s,
    )
    transport = AiohttpTransport(limits=limits, trust_env=False)
    return RuntimeClient(
        transport=transport,
        connect_timeout_s=connect_timeout_s,
        keepalive_expiry_s=keepalive_expiry_s,
        max_idle=max_connections,
        limits=limits,
        timeout=httpx.Timeout(None, connect=connect_timeout_s),
        trust_env=False,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    *,
    timeout_s: float,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> Any:
    """Send one request and return its parsed JSON body, or raise InferbusError.

    Inside `services.tracing.runtime_trace`, the job's trace context goes along."""
    headers = _traced(headers)
    try:
        async with asyncio.timeout(timeout_s):
            if isinstance(client, RuntimeClient):
                status, content, response_headers = await client.exchange(
                    method, url, body=body, headers=headers
                )
            else:
                response = await client.request(method, url, json=body, headers=headers)
                status, content, response_headers = (
                    response.status_code,
                    response.content,
                    response.headers,
                )
    except (httpx.HTTPError, TimeoutError) as exc:
        raise classify_transport_error(exc, secrets=secrets) from exc
    if status >= 400:
        raise classify_http_error(
            status,
            content,
            response_headers,
            now_unix_s=time.time(),  # an HTTP-date Retry-After needs the wall clock
            secrets=secrets,
        )
    try:
        return await loads(content)
    except ValueError as exc:
        raise invalid_response(f"not JSON: {content[:80]!r}") from exc


async def stream_lines(
    client: httpx.AsyncClient,
    url: httpx.URL,
    *,
    body: Any,
    deadline: float,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> AsyncGenerator[str, None]:
    """POST and yield the answer's non-empty lines as they arrive.

    `deadline` is on the running loop's clock. Closing this generator (`aclose()`, or the
    consumer being cancelled) closes the HTTP response, and with it the connection when the
    body was not read to its end, so the runtime stops generating.
    """
    headers = _traced(headers)
    opening: Awaitable[_Streamed]
    if isinstance(client, RuntimeClient) and url.scheme == "http":
        plain = client.plain.open(
            "POST", url, content=_json_bytes(body), headers=_plain_headers(True, headers)
        )
        opening = _opened(_PlainStreamed, plain)
    elif isinstance(client, RuntimeClient):
        opening = _opened(_AiohttpStreamed, client.open("POST", url, body=body, headers=headers))
    else:
        request = client.build_request("POST", url, json=body, headers=headers)
        opening = _opened(_HttpxStreamed, client.send(request, stream=True))
    lines = _streamed_lines(opening, deadline, secrets)
    try:
        async for line in lines:
            yield line
    finally:
        await lines.aclose()


class _Streamed(Protocol):
    """An answer whose head is read, however the client reads its body."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The next piece of the body, b"" at its end."""

    async def read_all(self) -> bytes:
        """The rest of the body."""

    async def close(self) -> None:
        """Let the answer go (its connection is closed unless the body was read)."""


async def _opened(wrap: Callable[[Any], _Streamed], opening: Awaitable[Any]) -> _Streamed:
    return wrap(await opening)


class _PlainStreamed:
    """On `services.runtimes.plain_http`'s kept-alive connections."""

    def __init__(self, opened: Opened) -> None:
        self.status = opened.status
        self.headers: Mapping[str, str] = opened.headers
        self.read = opened.read
        self.read_all = opened.read_all
        self._opened = opened

    async def close(self) -> None:
        self._opened.close()


class _AiohttpStreamed:
    """On the transport's aiohttp session itself (`RuntimeClient.open`)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response

    async def read(self) -> bytes:
        with map_aiohttp_exceptions():
            return await self._response.content.readany()

    async def read_all(self) -> bytes:
        with map_aiohttp_exceptions():
            return await self._response.read()

    async def close(self) -> None:
        await close_response(self._response)


class _HttpxStreamed:
    """Through httpx's API, for any other client."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._pieces = cast(AsyncGenerator[bytes, None], response.aiter_raw())

    async def read(self) -> bytes:
        try:
            return await anext(self._pieces)
        except StopAsyncIteration:
            return b""

    async def read_all(self) -> bytes:
        return await self._response.aread()

    async def close(self) -> None:
        try:
            await self._pieces.aclose()
        finally:
            await self._response.aclose()


async def _streamed_lines(
    opening: Awaitable[_Streamed], deadline: float, secrets: Iterable[str]
) -> AsyncGenerator[str, None]:
    """The lines of a streamed answer; an error status, a broken connection or the
    deadline raised as InferbusError."""
    try:
        async with asyncio.timeout_at(deadline):
            answer = await opening
    except (httpx.HTTPError, TimeoutError) as exc:
        raise classify_transport_error(exc, secrets=secrets) from exc
    try:
        if answer.status >= 400:
            try:
                async with asyncio.timeout_at(deadline):
                    error_body = await answer.read_all()
            except (httpx.HTTPError, TimeoutError) as exc:
                raise classify_transport_error(exc, secrets=secrets) from exc
            raise classify_http_error(
                answer.status,
                error_body,
                answer.headers,
                now_unix_s=time.time(),  # an HTTP-date Retry-After needs the wall clock
                secrets=secrets,
            )
        async for line in _lines_of(answer.read, deadline, secrets):
            yield line
    finally:
        await answer.close()


def _traced(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """`headers` and the trace context runtime calls made now send, if any."""
    trace = runtime_trace_headers()
    if trace is None:
        return headers
    return {**headers, **trace} if headers else trace


async def _lines_of(
    read: Callable[[], Awaitable[bytes]], deadline: float, secrets: Iterable[str]
) -> AsyncGenerator[str, None]:
    """The non-empty lines of a body that `read` gives piece by piece (b"" at its end).
    One timer per network read, not per line: a burst of tokens is one read."""
    pending = b""
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                piece = await read()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise classify_transport_error(exc, mid_stream=True, secrets=secrets) from exc
        if not piece:
            break
        *complete, pending = (pending + piece).split(b"\n")
        for line in complete:
            if line.strip():
                yield line.decode("utf-8", "replace").rstrip("\r")
    if pending.strip():
        yield pending.decode("utf-8", "replace").rstrip("\r")


class RuntimeSession:
    """One runtime's view of the shared client: its bearer key (if any) on every call,
    and that key kept out of every error message."""

    def __init__(self, client: httpx.AsyncClient, api_key: str | None = None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.secrets: tuple[str, ...] = (api_key,) if api_key else ()

    async def get_json(self, url: httpx.URL, *, timeout_s: float) -> Any:
        return await request_json(
            self.client, "GET", url, timeout_s=timeout_s, headers=self.headers, secrets=self.secrets
        )

    async def post_json(self, url: httpx.URL, body: Any, *, timeout_s: float) -> Any:
        return await request_json(
            self.client,
            "POST",
            url,
            body=body,
            timeout_s=timeout_s,
            headers=self.headers,
            secrets=self.secrets,
        )

    def stream_lines(
        self, url: httpx.URL, body: Any, *, deadline: float
    ) -> AsyncGenerator[str, None]:
        return stream_lines(
            self.client,
            url,
            body=body,
            deadline=deadline,
            headers=self.headers,
            secrets=self.secrets,
        )
