"""One whole HTTP/1.1 exchange on a kept-alive plain `http://` connection, in few steps.

Most runtime calls are a small JSON body out and a small JSON body back over loopback or
the node's LAN; for those a general client's layers (aiohttp's request and response
objects, its connector, timers and tracing hooks) cost more CPU than the call itself
(ops/bench/whole_path_bench.py, the worker alone). Here a call is: take an idle
connection (or open one), write the request in one piece, let `httptools` (the C parser
uvicorn uses) read the answer, hand the connection back. Streams, `https://` and anything
unusual stay on the aiohttp session (`services.runtimes.http`).

Failures are raised as httpx's exceptions, as the aiohttp path raises them, so the one
edge that turns them into ours stays `classify_transport_error`:

    could not connect                     httpx.ConnectError / httpx.ConnectTimeout
    the connection broke or closed early  httpx.ReadError / httpx.RemoteProtocolError
    an answer that is not HTTP            httpx.RemoteProtocolError

A connection is reused only after a complete answer that allows it (keep-alive), and
never after KEEPALIVE idle seconds (below servers' own idle timeouts); one whose call was
cancelled (the job's deadline) is closed, so the runtime stops working on it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import httptools
import httpx

# A header name or value with one of these would end the head early (header injection).
_FORBIDDEN_IN_HEADERS = ("\r", "\n")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: httpx.Headers


class _Connection(asyncio.Protocol):
    """One TCP connection and the answer being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._complete = False
        self._keep_alive = False
        self._failure: httpx.TransportError | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the runtime switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._status and not self._complete and self._reads_to_end():
            self._complete = True  # no length given: the body ends with the connection
            self._waiter.set_result(None)
            return
        if exc is not None:
            failure: httpx.TransportError = httpx.ReadError(f"{type(exc).__name__}: {exc}")
        else:
            failure = httpx.RemoteProtocolError("Server disconnected")
        self._fail(failure)

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # the parser resets after this
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- one exchange -------------------------------------------------------------------

    async def exchange(self, request: bytes) -> Answer:
        """Write `request`, wait for the whole answer. Raises httpx.TransportError."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._waiter
        if self._failure is not None:
            raise self._failure
        self._waiter = None
        headers = httpx.Headers(self._headers)
        body = b"".join(self._body)
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompressed(body, encoding)
        answer = Answer(self._status, body, headers)
        keep = self._keep_alive
        self._reset()
        if not keep:
            self.close()
        return answer

    def _reset(self) -> None:
        """Ready for the next answer (the parser readies itself after each message)."""
        self._status = 0
        self._headers = []
        self._body = []
        self._complete = False
        self._keep_alive = False

    def _reads_to_end(self) -> bool:
        """An answer without Content-Length or chunked framing: its body is all until EOF."""
        names = {name.lower() for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, failure: httpx.TransportError) -> None:
        self._failure = failure
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _decompressed(body: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        return zlib.decompress(body, wbits)
    except zlib.error:
        if encoding == "deflate":  # some servers send raw deflate, without the zlib header
            try:
                return zlib.decompress(body, -zlib.MAX_WBITS)
            except zlib.error:
                pass
        raise httpx.DecodingError(f"the answer's {encoding} body is corrupt") from None


class PlainHttp:
    """Kept-alive connections per host and port, for whole exchanges over plain http."""

    def __init__(
        self, *, connect_timeout_s: float, keepalive_s: float, max_idle: int, user_agent: str
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle
        self._user_agent = user_agent
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None,
        headers: Iterable[tuple[str, str]],
    ) -> Answer:
        """One request and its whole answer. Raises httpx.TransportError (and
        httpx.LocalProtocolError for a header that would break the request)."""
        host, port = url.host, url.port or 80
        request = self._request_bytes(method, url, host, port, content, headers)
        connection = await self._connection(host, port)
        try:
            answer = await connection.exchange(request)
        except BaseException:
            connection.close()  # cancelled or broken: never reused
            raise
        self._give_back(host, port, connection)
        return answer

    def _request_bytes(
        self,
        method: str,
        url: httpx.URL,
        host: str,
        port: int,
        content: bytes | None,
        headers: Iterable[tuple[str, str]],
    ) -> bytes:
        target = url.raw_path.decode("ascii")
        authority = f"[{host}]" if ":" in host else host
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {authority}:{port}" if url.port else f"Host: {authority}",
            f"User-Agent: {self._user_agent}",
            "Accept: */*",
            "Accept-Encoding: gzip, deflate",
        ]
        if content is not None:
            lines.append(f"Content-Length: {len(content)}")
        for name, value in headers:
            if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS):
                raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + content if content else head

    async def _connection(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            self.close()
            self._loop = loop
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > self._keepalive_s:
                connection.close()
                continue
            return connection
        return await self._open(loop, host, port)

    async def _open(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(_Connection, host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"Cannot connect to host {host}:{port} ({exc})") from exc
        return connection

    def _give_back(self, host: str, port: int, connection: _Connection) -> None:
        if connection.closed:
            return
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
