"""The router's image step: every image is checked before it travels to a node.

Images are validated here (base64 that decodes, a PNG/JPEG/GIF/WebP/BMP by its magic
bytes) so a malformed one is answered 400 BAD_REQUEST naming its field, at once, instead
of travelling to a node whose runtime rejects it. Images given as URLs follow
`images.remote_urls`: `refuse` (the default) is BAD_REQUEST; `fetch` downloads them
here, at the router, with the guards of `services.image_fetch`, and sends them on as
base64, so no runtime inside the GPU network dereferences a caller's URL.
"""

from __future__ import annotations

from services.errors import InferbusError
from services.image_fetch import inline_url_images
from services.images import ImageSettings, image_fields, inline_bytes, refuse_urls
from services.wire import JobRequest


async def checked_images(job: JobRequest, settings: ImageSettings) -> JobRequest | InferbusError:
    """The job as it may travel (URL images inline when fetched), or why it may not."""
    if not job.has_images():
        return job
    try:
        if settings.remote_urls == "refuse":
            refuse_urls(job)
        else:
            job = await inline_url_images(job, settings)
        for field, image in image_fields(job):
            inline_bytes(image, field)
    except InferbusError as error:
        return error
    return job
