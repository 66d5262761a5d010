"""Images: what counts as one, how URLs are judged, and the guarded download.

The download tests use a real HTTP server on loopback. Loopback is exactly what a caller
must not be able to reach, so a positive fetch needs the test-only allow-list
(`test_only_allowed_addresses`), which is off by default.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest

from services.errors import ErrorCode, InferbusError
from services.image_fetch import fetch_image, inline_url_images, is_public
from services.images import (
    ImageSettings,
    image_fields,
    image_type,
    inline_bytes,
    refuse_urls,
    rewrite_images,
)
from services.wire import JobRequest
from tests.image_server import PNG, image_server
from tests.test_worker_jobs import TINY_PNG

FETCH = ImageSettings(remote_urls="fetch")
FETCH_LOOPBACK = ImageSettings(remote_urls="fetch", test_only_allowed_addresses=["127.0.0.1"])


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
        (b"BM\x36\0\0\0", "image/bmp"),
        (b"RIFF\x10\0\0\0WAVEfmt ", None),
        (b"<svg xmlns=", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_image_types_are_known_by_their_magic_bytes(head: bytes, mime: str | None) -> None:
    assert image_type(head) == mime


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("not base64 at all!", "not valid base64"),
        ("aGVsbG8=", "not PNG, JPEG"),  # "hello": base64, but no image
        ("data:image/png,rawbytes", "data URI"),
        ("file:///etc/passwd", "not valid base64"),
        (f"data:image/png;base64,{TINY_PNG[:-3]}", "not valid base64"),  # cut short
    ],
)
def test_a_malformed_image_is_a_bad_request_naming_its_field(image: str, why: str) -> None:
    with pytest.raises(InferbusError) as caught:
        inline_bytes(image, "messages[0].images[1]")
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert "`messages[0].images[1]`" in caught.value.message
    assert why in caught.value.message


@pytest.mark.parametrize("image", [TINY_PNG, f"data:image/png;base64,{TINY_PNG}", f" {TINY_PNG}\n"])
def test_an_inline_image_decodes_to_its_bytes(image: str) -> None:
    assert inline_bytes(image, "images[0]") == PNG


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_only_public_addresses_may_be_fetched_from(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def job_with_images() -> JobRequest:
    return JobRequest.model_validate(
        {
            "images": ["https://example.com/top.png"],
            "messages": [
                {"role": "user", "content": "a", "images": [TINY_PNG]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "b"},
                        {"type": "image_url", "image_url": {"url": "http://example.com/p.png"}},
                    ],
                },
            ],
        }
    )


def test_every_image_is_found_with_the_name_of_its_field() -> None:
    assert image_fields(job_with_images()) == [
        ("images[0]", "https://example.com/top.png"),
        ("messages[0].images[0]", TINY_PNG),
        ("messages[1].content[1].image_url", "http://example.com/p.png"),
    ]


def test_refuse_names_the_first_url_image() -> None:
    with pytest.raises(InferbusError) as caught:
        refuse_urls(job_with_images())
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert "`images[0]`" in caught.value.message


async def test_rewritten_images_go_inline_as_base64_or_data_uris() -> None:
    async def fetched(image: str, _field: str) -> bytes | None:
        return PNG if image.startswith("http") else None

    job = await rewrite_images(job_with_images(), fetched)
    assert [image for _, image in image_fields(job)] == [
        TINY_PNG,
        TINY_PNG,
        f"data:image/png;base64,{TINY_PNG}",
    ]
    assert base64.b64decode(job.images[0]) == PNG


# --- the guarded download, against a real loopback server --------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_a_loopback_url_is_refused_without_a_request(host: str) -> None:
    async with image_server() as server:
        with pytest.raises(InferbusError) as caught:
            await fetch_image(server.url("/cat.png", host), "images[0]", FETCH)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert "private, loopback or link-local" in caught.value.message
    assert sum(server.hits.values()) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://[fe80::1]/a.png",
        "http://192.168.0.1:8080/a.png",
    ],
)
async def test_a_private_or_link_local_url_is_refused(url: str) -> None:
    with pytest.raises(InferbusError) as caught:
        await fetch_image(url, "images[0]", FETCH_LOOPBACK)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert "private, loopback or link-local" in caught.value.message


async def test_an_allowed_url_is_downloaded() -> None:
    async with image_server() as server:
        data = await fetch_image(server.url("/cat.png"), "images[0]", FETCH_LOOPBACK)
    assert data == PNG
    assert server.hits["/cat.png"] == 1


@pytest.mark.parametrize(
    ("path", "code", "why"),
    [
        ("/redirect", ErrorCode.BAD_REQUEST, "redirects are refused"),
        ("/big", ErrorCode.PAYLOAD_TOO_LARGE, "over 2048 bytes"),
        ("/page", ErrorCode.BAD_REQUEST, "did not serve a PNG"),
        ("/missing.png", ErrorCode.BAD_REQUEST, "did not serve a PNG"),
    ],
)
async def test_what_an_allowed_url_serves_is_still_judged(
    path: str, code: ErrorCode, why: str
) -> None:
    settings = FETCH_LOOPBACK.model_copy(update={"fetch_max_bytes": 2048})
    async with image_server() as server:
        with pytest.raises(InferbusError) as caught:
            await fetch_image(server.url(path), "images[0]", settings)
    assert caught.value.code == code
    assert why in caught.value.message
    assert server.hits["/cat.png"] == 0  # a redirect is never followed


async def test_a_url_that_does_not_answer_in_time_is_a_bad_request() -> None:
    settings = FETCH_LOOPBACK.model_copy(update={"fetch_timeout_s": 0.2})
    job = JobRequest.model_validate({"prompt": "what?", "images": ["placeholder"]})
    async with image_server() as server:
        job = job.model_copy(update={"images": [server.url("/slow")]})
        with pytest.raises(InferbusError) as caught:
            await inline_url_images(job, settings)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert "not fetched within" in caught.value.message
