"""The plain http:// runtime client (services/runtimes/plain_http.py) against real servers
on loopback that answer in the shapes HTTP allows: kept alive or closed, by length, chunked
or until the end, compressed, broken mid-body."""

from __future__ import annotations

import asyncio
import gc
import gzip
import http.server
import socketserver
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from services.errors import InferbusError
from services.runtimes.http import RuntimeClient, new_http_client, request_json
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


async def _start_stream_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def test_a_gzip_stream_whose_first_piece_decodes_to_nothing_is_read_whole() -> None:
    # A piece of a compressed stream may decompress to no bytes yet (here the gzip header
    # alone); that is not the end of the body.
    compressed = gzip.compress(b"line one\nline two\n")
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"a\r\n" + compressed[:10] + b"\r\n"
        )
        await release.wait()
        rest = compressed[10:]
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        await writer.drain()
        writer.close()

    server, url = await _start_stream_server(handler)
    client = pool()
    opened = await client.open("POST", httpx.URL(url), content=b"{}", headers=[])
    reading = asyncio.create_task(opened.read_all())
    await asyncio.sleep(0)
    release.set()
    try:
        assert await reading == b"line one\nline two\n"
    finally:
        opened.close()
        client.close()
        server.close()
        await server.wait_closed()


async def test_an_interim_1xx_answer_is_skipped_for_the_final_one() -> None:
    # RFC 9110 §15.2: a client must parse 1xx answers before the final one, expected or not.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the interim answer arrives on its own
        writer.write(by_length(b'{"ok":1}'))
        await writer.drain()
        writer.close()

    server, url = await _start_stream_server(handler)
    client = pool()
    answer = await client.exchange("POST", httpx.URL(url), content=b"{}", headers=[])
    assert (answer.status, answer.body) == (200, b'{"ok":1}')
    client.close()
    server.close()
    await server.wait_closed()


async def test_a_connection_the_server_closed_after_its_answer_is_not_reused() -> None:
    # A server that closes after each answer without saying `Connection: close` (or whose
    # keep-alive ends just then): the next GET must not fail on the dead connection. The
    # aiohttp session this client replaced answered all of these.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(by_length(b'{"ok":1}'))
        await writer.drain()
        writer.close()

    server, url = await _start_stream_server(handler)
    client = pool()
    for _ in range(4):
        answer = await client.exchange("GET", httpx.URL(url), content=None, headers=[])
        assert answer.body == b'{"ok":1}'
    client.close()
    server.close()
    await server.wait_closed()


class _JsonHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept alive

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "8")
        self.end_headers()
        self.wfile.write(b'{"ok":1}')

    def log_message(self, format: str, *args: object) -> None:
        pass


# A connection kept by a loop that has ended can only be dropped (its transport cannot
# close through a closed loop): the garbage collector closes its socket.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_client_used_on_a_second_event_loop_still_answers() -> None:
    # asyncio.run per test or per command: the connection the first loop kept is not
    # closed through that ended loop.
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _JsonHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = httpx.URL(f"http://127.0.0.1:{server.server_address[1]}/")
    client = pool()

    async def one_call() -> bytes:
        answer = await client.exchange("GET", url, content=None, headers=[])
        return answer.body

    try:
        assert asyncio.run(one_call()) == b'{"ok":1}'
        try:
            second = asyncio.run(one_call())
        except RuntimeError as exc:  # kept without its traceback: that holds the connection
            second = repr(exc).encode()
        assert second == b'{"ok":1}'
    finally:
        client.close()
        gc.collect()  # what the ended loops left, collected while its warnings are ignored
        server.shutdown()
        server.server_close()


async def test_bytes_after_an_answers_end_are_not_part_of_its_body(serve: Serve) -> None:
    # A runtime that sends more than its answer (another answer nobody asked for): the
    # answer is what its Content-Length says, and the connection is not reused.
    url, seen = await serve(lambda _head: by_length(b"ok") + by_length(b"unasked"))
    client = pool()
    for _ in range(2):
        answer = await client.exchange("GET", httpx.URL(url), content=None, headers=[])
        assert answer.body == b"ok"
    assert seen.count(b"connection") == 2
    client.close()


async def test_a_key_outside_latin1_gets_the_runtimes_answer_as_an_error_with_a_code(
    serve: Serve,
) -> None:
    # A bearer key (from the environment) with a character Latin-1 has not: the runtime
    # judges it, as it did through aiohttp (UTF-8 on the wire), and its 401 is an error with
    # a stable code, not a UnicodeEncodeError out of the request's head.
    refused = (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        b'Content-Length: 19\r\n\r\n{"error":"bad key"}'
    )
    url, _ = await serve(lambda _head: refused)
    client = new_http_client()
    with pytest.raises(InferbusError):
        await request_json(
            client, "GET", httpx.URL(url), timeout_s=5, headers={"Authorization": "Bearer k€y"}
        )
    await client.aclose()


async def test_leaving_the_client_as_a_context_closes_its_plain_connections() -> None:
    # `async with new_http_client()` (tools/up.py, tests): httpx's __aexit__ does not call
    # aclose(), so the kept-alive plain connections must be closed there too.
    hung_up = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(by_length(b'{"ok":1}'))
        await writer.drain()
        rest = await reader.read()  # b"" once the client closes the connection
        writer.close()
        hung_up.set_result(rest)

    server, url = await _start_stream_server(handler)
    async with new_http_client() as client:
        assert await request_json(client, "GET", httpx.URL(url), timeout_s=5) == {"ok": 1}
    try:
        assert await asyncio.wait_for(hung_up, 10) == b""
    finally:
        assert isinstance(client, RuntimeClient)
        client.plain.close()  # what the context left open (no sockets leak into later tests)
        server.close()
        await server.wait_closed()
