"""Download a caller's image URL without letting the caller aim us at our own network.

The `fetch` policy of `images.remote_urls` (services/images.py). A caller's URL is an
SSRF hole unless every step is guarded, so:
- only http and https, a size cap (PAYLOAD_TOO_LARGE beyond it), one timeout for all of
  a job's URLs together, no redirects (a 3xx is refused, never followed);
- the host is resolved here, and every address it resolves to must be a public one:
  private, loopback, link-local, shared, multicast and reserved ranges are refused
  (IPv4-mapped IPv6 is judged as the IPv4 address);
- the connection goes to the address that was checked (the URL's host is kept for the
  Host header and TLS SNI and certificate check), and the peer address of the socket
  actually connected is checked again, so a DNS answer that changes between the check
  and the connect (rebinding) cannot slip through.
Every failure is the request's fault: BAD_REQUEST (or PAYLOAD_TOO_LARGE) naming the field.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection

import httpx

from services.errors import ErrorCode, InferbusError
from services.images import ImageSettings, image_error, image_type, is_url, rewrite_images
from services.wire import JobRequest

_CHUNK_BYTES = 64 * 1024
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: IPAddress) -> bool:
    """Whether a caller may make us connect to `address`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def may_connect(address: str, allowed: Collection[str]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return is_public(ip) or str(ip) in allowed


async def inline_url_images(job: JobRequest, settings: ImageSettings) -> JobRequest:
    """The job with every URL image downloaded and put inline as base64, within
    `fetch_timeout_s` for all of them; other images are left as they are."""

    async def download(image: str, field: str) -> bytes | None:
        return await fetch_image(image, field, settings) if is_url(image) else None

    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            return await rewrite_images(job, download)
    except TimeoutError:
        raise InferbusError(
            ErrorCode.BAD_REQUEST,
            f"image URLs were not fetched within {settings.fetch_timeout_s} s",
        ) from None


async def fetch_image(url: str, field: str, settings: ImageSettings) -> bytes:
    """The image at `url`, downloaded with the guards of this module's docstring."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        raise image_error(field, "not a valid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise image_error(field, "only http(s) URLs with a host are fetched")
    allowed = settings.test_only_allowed_addresses
    address = await _checked_address(target, field, allowed)
    pinned = target.copy_with(host=address)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    headers = {"Host": target.netloc.decode("ascii"), "Accept": "image/*"}
    try:
        async with (
            httpx.AsyncClient(follow_redirects=False, trust_env=False) as client,
            client.stream("GET", pinned, headers=headers, extensions=extensions) as response,
        ):
            peer = _peer_address(response)
            if peer is None or not may_connect(peer, allowed):
                raise image_error(field, "the connection went to an address that is not allowed")
            if response.is_redirect:
                raise image_error(
                    field, f"the URL answered {response.status_code}: redirects are refused"
                )
            if response.status_code != 200:
                raise image_error(field, f"the URL answered {response.status_code}")
            data = await _read_capped(response, field, settings.fetch_max_bytes)
    except httpx.HTTPError as exc:
        raise image_error(field, f"the image could not be fetched ({type(exc).__name__})") from None
    if image_type(data) is None:
        raise image_error(field, "the URL did not serve a PNG, JPEG, GIF, WebP or BMP image")
    return data


async def _checked_address(target: httpx.URL, field: str, allowed: Collection[str]) -> str:
    """The one address to connect to; every address the host resolves to must pass."""
    port = target.port or (443 if target.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise image_error(field, f"the host {target.host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses or not all(may_connect(address, allowed) for address in addresses):
        raise image_error(field, "the URL's host is a private, loopback or link-local address")
    return addresses[0]


def _peer_address(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    return str(peer[0]) if peer else None


async def _read_capped(response: httpx.Response, field: str, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(field, limit)
    body = bytearray()
    async for piece in response.aiter_bytes(_CHUNK_BYTES):  # decoded: the cap holds for gzip
        body += piece
        if len(body) > limit:
            raise _too_large(field, limit)
    return bytes(body)


def _too_large(field: str, limit: int) -> InferbusError:
    return InferbusError(ErrorCode.PAYLOAD_TOO_LARGE, f"`{field}`: the image is over {limit} bytes")
