"""The plain http:// runtime client (services/runtimes/plain_http.py) against real servers
on loopback that answer in the shapes HTTP allows: kept alive or closed, by length, chunked
or until the end, compressed, broken mid-body."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from services.runtimes.plain_http import PlainHttp

Answer = Callable[[bytes], bytes | None]  # a request's head -> the answer (None: hang up)
# Starts a server answering so: its URL and what it saw (b"connection" for each new one).
Serve = Callable[[Answer], Awaitable[tuple[str, list[bytes]]]]


class _Server(asyncio.Protocol):
    def __init__(self, answer: Answer, seen: list[bytes]) -> None:
        self._answer = answer
        self._seen = seen
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._seen.append(b"connection")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        self._buffer = rest[length:]
        self._seen.append(head + b"\r\n\r\n" + rest[:length])
        answer = self._answer(head)
        assert isinstance(self.transport, asyncio.WriteTransport)
        if answer is None:
            self.transport.close()
            return
        self.transport.write(answer)
        if b"Connection: close" in answer or answer.startswith(b"HTTP/1.0"):
            self.transport.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []
    loop = asyncio.get_running_loop()

    async def start(answer: Answer) -> tuple[str, list[bytes]]:
        seen: list[bytes] = []
        server = await loop.create_server(lambda: _Server(answer, seen), "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", seen

    yield start
    for server in servers:
        server.close()


def pool() -> PlainHttp:
    return PlainHttp(connect_timeout_s=2, keepalive_s=4, max_idle=8, user_agent="test")


def by_length(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


async def test_a_kept_alive_connection_carries_the_next_call(serve: Serve) -> None:
    url, seen = await serve(lambda _head: by_length(b'{"ok":1}'))
    client = pool()
    for _ in range(3):
        answer = await client.exchange(
            "POST", httpx.URL(url + "/v1/x"), content=b"{}", headers=[("X-Trace", "t")]
        )
        assert (answer.status, answer.body) == (200, b'{"ok":1}')
    assert seen.count(b"connection") == 1
    request = seen[1]
    assert request.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 2\r\n" in request
    assert b"\r\nX-Trace: t\r\n" in request
    client.close()


async def test_connection_close_chunked_until_the_end_and_gzip_all_read_whole(serve: Serve) -> None:
    answers = iter(
        [
            by_length(b"closed", b"Connection: close"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
            by_length(gzip.compress(b"zipped"), b"Content-Encoding: gzip"),
        ]
    )

    url, seen = await serve(lambda _head: next(answers))
    client = pool()
    bodies = []
    for _ in range(4):
        got = await client.exchange("GET", httpx.URL(url + "/"), content=None, headers=[])
        bodies.append(got.body)  # HTTP/1.0 without a length: its body ends with the EOF
    assert bodies == [b"closed", b"abcde", b"until the end", b"zipped"]
    assert seen.count(b"connection") >= 3  # closed twice by the server: new connections
    client.close()


async def test_failures_are_httpx_exceptions(serve: Serve) -> None:
    url, _ = await serve(lambda _head: by_length(b"half", b"Connection: close")[:-2])
    client = pool()
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends early: cut short
        await client.exchange("GET", httpx.URL(url), content=None, headers=[])
    url, _ = await serve(lambda _head: None)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.exchange("GET", httpx.URL(url), content=None, headers=[])
    url, _ = await serve(lambda _head: b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.exchange("GET", httpx.URL(url), content=None, headers=[])
    closed = httpx.URL(url.rsplit(":", 1)[0] + ":1")
    with pytest.raises(httpx.ConnectError):
        await client.exchange("GET", closed, content=None, headers=[])
    with pytest.raises(httpx.LocalProtocolError):
        await client.exchange("GET", httpx.URL(url), content=None, headers=[("X", "a\r\nb")])
    client.close()


async def test_a_stream_read_slowly_is_whole_and_one_closed_early_is_not_reused(
    serve: Serve,
) -> None:
    big = bytes(range(256)) * 16_384  # 4 MiB: past what is buffered unread
    url, seen = await serve(lambda _head: by_length(big))
    client = pool()
    opened = await client.open("POST", httpx.URL(url), content=b"{}", headers=[])
    assert opened.status == 200
    await asyncio.sleep(0.2)  # the runtime has sent all it could meanwhile
    assert await opened.read_all() == big
    opened.close()  # read to its end: kept
    again = await client.open("POST", httpx.URL(url), content=b"{}", headers=[])
    first = await again.read()
    assert first
    assert big.startswith(first)
    again.close()  # not read to its end: closed
    last = await client.exchange("POST", httpx.URL(url), content=b"{}", headers=[])
    assert last.body == big
    assert seen.count(b"connection") == 2
    client.close()
