"""Images in jobs: what counts as an image, and the one policy for images given as URLs.

A job carries images as base64 (raw or `data:image/...;base64,` URIs) in a message's
`images`, in OpenAI `image_url` parts, or in the job's own `images`. A caller may also
name an `http(s)` URL there. No runtime inside the GPU network ever dereferences such a
URL (vLLM and others would fetch whatever a job names, from inside that network): the
adapters refuse them, and `images.remote_urls` decides what happens before that —
`refuse` (the default) answers BAD_REQUEST; `fetch` downloads the image with the guards
of `services.image_fetch` and sends it on as base64.

Everything here is pure; the download is `image_fetch.fetch_image`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.errors import ErrorCode, InferbusError
from services.wire import ContentPart, ImageURL, JobRequest, Message

RemoteUrls = Literal["refuse", "fetch"]
_URL_SCHEMES = ("http://", "https://")
# Magic bytes of the image types runtimes decode (Ollama, llama.cpp's stb_image, vLLM's PIL).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" and the size
    (b"BM", 0, "image/bmp"),
)


class ImageSettings(BaseModel):
    """`images:` in the worker's and the router's config (the same keys in both)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remote_urls: RemoteUrls = "refuse"
    # 5.5 MiB: base64 makes it ~7.3 MiB, which still fits the 8 MB bus with the job around it.
    fetch_max_bytes: Annotated[int, Field(ge=1024)] = 5632 * 1024
    fetch_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # all of a job's URLs together
    # FOR TESTS ONLY: addresses exempt from the private/loopback refusal, so a test can
    # fetch from a server on 127.0.0.1. Never set it in production: it reopens the hole.
    test_only_allowed_addresses: list[str] = Field(default_factory=list)

    @field_validator("test_only_allowed_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(address)) for address in addresses]


def is_url(image: str) -> bool:
    return image.startswith(_URL_SCHEMES)


def image_type(data: bytes) -> str | None:
    """The MIME type from the first bytes, None when it is no image type we know."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and data[:4] != b"RIFF":
                continue
            return mime
    return None


def inline_bytes(image: str, field: str) -> bytes:
    """The decoded bytes of a base64 or data-URI image; BAD_REQUEST naming `field` when it
    is not base64 or not an image type a runtime can decode."""
    payload = image
    if image.startswith("data:"):
        header, sep, payload = image.partition(",")
        if not sep or not header.endswith(";base64"):
            raise image_error(field, "a data URI image must be `data:image/...;base64,`")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise image_error(field, "the image is not valid base64") from None
    if image_type(data) is None:
        raise image_error(field, "the image is not PNG, JPEG, GIF, WebP or BMP")
    return data


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_data_uri(data: bytes) -> str:
    return f"data:{image_type(data) or 'image/png'};base64,{as_base64(data)}"


def url_images(job: JobRequest) -> list[str]:
    """The field names of the job's images that are URLs."""
    return [field for field, image in image_fields(job) if is_url(image)]


def refuse_urls(job: JobRequest) -> None:
    """BAD_REQUEST naming the first URL image: the `refuse` policy."""
    urls = url_images(job)
    if urls:
        raise image_error(urls[0], "images given as URLs are not fetched here (images.remote_urls)")


def image_fields(job: JobRequest) -> list[tuple[str, str]]:
    """Every image of the job with the name of its field, as the caller wrote it (in
    `map_images`' order). A walk that copies nothing and looks only where a field or a
    message part says there is an image: it runs for every job, most of which have none."""
    if not job.may_have_images():
        return []
    found = [(f"images[{i}]", image) for i, image in enumerate(job.images)]
    for m, message in enumerate(job.messages or ()):
        found += [(f"messages[{m}].images[{i}]", image) for i, image in enumerate(message.images)]
        if isinstance(message.content, list):
            for p, part in enumerate(message.content):
                ref = part.image_url
                if ref is not None:
                    url = ref if isinstance(ref, str) else ref.url
                    found.append((f"messages[{m}].content[{p}].image_url", url))
    return found


ImageRewrite = Callable[[str, str], Awaitable[bytes | None]]


async def rewrite_images(job: JobRequest, rewrite: ImageRewrite) -> JobRequest:
    """The job with each image that `rewrite(image, field)` returns bytes for replaced by
    them (raw base64 in `images` lists, a data URI in `image_url` parts); None keeps it."""
    replaced: dict[str, bytes] = {}
    for field, image in image_fields(job):
        data = await rewrite(image, field)
        if data is not None:
            replaced[field] = data

    def put(field: str, image: str, uri: bool) -> str:
        data = replaced.get(field)
        if data is None:
            return image
        return as_data_uri(data) if uri else as_base64(data)

    return map_images(job, put) if replaced else job


def map_images(job: JobRequest, change: Callable[[str, str, bool], str]) -> JobRequest:
    """The job with every image replaced by `change(field, image, is_image_url_part)`."""

    def message_of(m: int, message: Message) -> Message:
        images = [
            change(f"messages[{m}].images[{i}]", image, False)
            for i, image in enumerate(message.images)
        ]
        content = message.content
        if isinstance(content, list):
            content = [
                _part_of(f"messages[{m}].content[{p}].image_url", part, change)
                for p, part in enumerate(content)
            ]
        return message.model_copy(update={"images": images, "content": content})

    top = [change(f"images[{i}]", image, False) for i, image in enumerate(job.images)]
    messages = None
    if job.messages is not None:
        messages = [message_of(m, message) for m, message in enumerate(job.messages)]
    return job.model_copy(update={"images": top, "messages": messages})


def _part_of(field: str, part: ContentPart, change: Callable[[str, str, bool], str]) -> ContentPart:
    ref = part.image_url
    if ref is None:
        return part
    url = change(field, ref if isinstance(ref, str) else ref.url, True)
    return part.model_copy(update={"image_url": ImageURL(url=url)})


def image_error(field: str, why: str) -> InferbusError:
    """BAD_REQUEST for one image, its field named so the caller finds it."""
    return InferbusError(ErrorCode.BAD_REQUEST, f"`{field}`: {why}")
