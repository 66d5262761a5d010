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

A connection is reused only after a complete answer that allows it (keep-alive) and
nothing after it, never after KEEPALIVE idle seconds (below servers' own idle timeouts)
nor once its socket is readable while idle (the server hung up and the loop has not said
so yet); one whose call was cancelled (the job's deadline) is closed, so the runtime stops
working on it. Interim 1xx answers are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
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
        self._busy = False  # a request was sent and its answer is not read to its end
        self._waiter: asyncio.Future[None] | None = None  # woken by any progress
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._buffered = 0
        self._streamed = False  # read piece by piece: reading pauses while much is unread
        self._paused = False
        self._complete = False
        self._keep_alive = False
        self._failure: httpx.TransportError | None = None
        self._interim = False
        self._overrun = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the runtime switched protocols"))
        except httptools.HttpParserError as exc:
            if self._complete:  # junk after a whole answer: the answer stands, not reused
                self._keep_alive = False
                self.close()
                return
            self._fail(httpx.RemoteProtocolError(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._busy or self._complete or self._failure is not None:
            return
        if self._status and self._reads_to_end():
            self._complete = True  # no length given: the body ends with the connection
            self._wake()
            return
        if exc is not None:
            failure: httpx.TransportError = httpx.ReadError(f"{type(exc).__name__}: {exc}")
        else:
            failure = httpx.RemoteProtocolError("Server disconnected")
        self._fail(failure)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # more than the answer: nobody asked for it
            self._overrun = True
            self._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._overrun:
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._overrun:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            self._headers = []
            return
        self._status = status
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._overrun:
            return
        self._body.append(body)
        self._buffered += len(body)
        if (
            self._streamed
            and self._buffered > _MAX_BUFFERED
            and self.transport is not None
            and not self._paused
        ):
            self._paused = True  # a stream read slower than it comes: let TCP hold it
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._overrun:
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # the parser resets after this
        self._wake()

    def hung_up(self) -> bool:
        """Readable while idle: the server closed it (EOF not handled yet) or sent junk."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        return sock is None or bool(select.select([sock.fileno()], [], [], 0)[0])

    # -- one request and its answer -----------------------------------------------------

    def send(self, request: bytes, *, streamed: bool) -> None:
        assert self.transport is not None
        self._busy = True
        self._streamed = streamed
        self.transport.write(request)

    async def head(self) -> tuple[int, httpx.Headers]:
        """The answer's status and headers, once read. Raises httpx.TransportError."""
        while not self._status and self._failure is None:
            await self._progress()
        if self._failure is not None:
            raise self._failure
        return self._status, httpx.Headers(self._headers)

    async def whole_body(self) -> bytes:
        """The rest of the body, read to its end. Raises httpx.TransportError."""
        while not self._complete and self._failure is None:
            await self._progress()
        if self._failure is not None:
            raise self._failure
        return self._take_body()

    async def read(self) -> bytes:
        """The body read since the last call, waiting for some; b"" at its end."""
        while True:
            if self._body:
                return self._take_body()
            if self._failure is not None:
                raise self._failure
            if self._complete:
                return b""
            await self._progress()

    def reusable(self) -> bool:
        """Whether the answer was read to its end and the connection may carry another;
        then it is ready for the next request (the parser readies itself)."""
        if self.closed or self._overrun or not self._complete or not self._keep_alive or self._body:
            return False
        self._busy = False
        self._status = 0
        self._headers = []
        self._complete = False
        self._keep_alive = False
        return True

    def _take_body(self) -> bytes:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return body

    async def _progress(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _reads_to_end(self) -> bool:
        """An answer without Content-Length or chunked framing: its body is all until EOF."""
        names = {name.lower() for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, failure: httpx.TransportError) -> None:
        self._failure = failure
        self.close()
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            try:
                self.transport.close()
            except RuntimeError:  # its loop has ended: shut the socket down, drop it
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


class Opened:
    """An answer whose head is read: its body comes with `read()`; `close()` when done
    (the connection goes back to the pool when the body was read to its end, else it is
    closed, so a runtime still generating stops)."""

    def __init__(
        self,
        pool: PlainHttp,
        key: tuple[str, int],
        connection: _Connection,
        status: int,
        headers: httpx.Headers,
    ) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._key = key
        self._connection = connection
        self._decoder = _decoder_for(headers)

    async def read(self) -> bytes:
        """The next piece of the body (decompressed), b"" at its end."""
        while True:
            piece = await self._connection.read()
            if self._decoder is None:
                return piece
            try:
                out = self._decoder.decompress(piece) if piece else self._decoder.flush()
            except zlib.error as exc:
                raise httpx.DecodingError(
                    f"the answer's compressed body is corrupt: {exc}"
                ) from exc
            if out or not piece:
                return out

    async def read_all(self) -> bytes:
        pieces = []
        while piece := await self.read():
            pieces.append(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._pool.give_back(self._key, self._connection)


_MAX_BUFFERED = 1 << 20


def _decoder_for(headers: httpx.Headers) -> zlib._Decompress | None:
    encoding = headers.get("content-encoding", "").lower()
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    return None


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
        key = (url.host, url.port or 80)
        connection = await self._send(method, url, key, content, headers, streamed=False)
        try:
            status, answer_headers = await connection.head()
            body = await connection.whole_body()
        except BaseException:
            connection.close()  # cancelled or broken: never reused
            raise
        self.give_back(key, connection)
        encoding = answer_headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompressed(body, encoding)
        return Answer(status, body, answer_headers)

    async def open(
        self,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None,
        headers: Iterable[tuple[str, str]],
    ) -> Opened:
        """Send a request and read the answer's head; its body is read with the answer's
        `read()`. Raises httpx.TransportError."""
        key = (url.host, url.port or 80)
        connection = await self._send(method, url, key, content, headers, streamed=True)
        try:
            status, answer_headers = await connection.head()
        except BaseException:
            connection.close()
            raise
        return Opened(self, key, connection, status, answer_headers)

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        key: tuple[str, int],
        content: bytes | None,
        headers: Iterable[tuple[str, str]],
        *,
        streamed: bool,
    ) -> _Connection:
        request = self._request_bytes(method, url, key[0], key[1], content, headers)
        connection = await self._connection(*key)
        connection.send(request, streamed=streamed)
        return connection

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
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
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
            if now - connection.idle_since > self._keepalive_s or connection.hung_up():
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

    def give_back(self, key: tuple[str, int], connection: _Connection) -> None:
        """A connection whose answer was read: kept for the next call when it may carry
        one, closed otherwise."""
        if not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(key, [])
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
