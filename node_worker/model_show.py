"""Answers `node.<id>.show` (services/show.py): a served model's details, from its runtime.

The runtime is asked once per (model, verbose) and the answer kept until the catalog
changes (the next listing), so a router's `/api/show` costs the runtime one call per
model per discovery. Every request gets one reply: the details, or an error with a code
(BAD_REQUEST for an unreadable request, MODEL_NOT_FOUND for a model this node does not
serve, the runtime's failure as its adapter classified it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from node_worker.catalog import Catalog
from services.errors import ErrorCode, InferbusError
from services.show import ShowReply, decode_show_request, show_from_info
from services.subjects import WORKER_QUEUE_GROUP, Subjects

log = logging.getLogger("inferbus.worker.show")

SHOW_TIMEOUT_S = 10.0
_MAX_KEPT = 256  # answers kept per catalog


class ModelShow:
    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        node_id: str,
        catalog: Callable[[], Catalog],
        answered: Callable[[float, str | None], None] = lambda _elapsed_s, _error: None,
    ) -> None:
        """`answered(elapsed_s, error_code)` counts each reply in the services stats."""
        self._nc = nc
        self._subject = subjects.show(node_id)
        self._catalog = catalog
        self._answered = answered
        self._kept: dict[tuple[str, bool], dict[str, Any]] = {}
        self._kept_for: Catalog | None = None
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            self._subject, queue=WORKER_QUEUE_GROUP, cb=self._on_request
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        # A runtime call may take a while: answer from a task, keep the subscription going.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        started = time.monotonic()
        reply = await self.reply_to(msg.data)
        with contextlib.suppress(Exception):
            await msg.respond(reply.model_dump_json(exclude_none=True).encode())
        code = reply.error.code.value if reply.error is not None else None
        self._answered(time.monotonic() - started, code)

    async def reply_to(self, data: bytes) -> ShowReply:
        """The reply to one request; never raises."""
        request = decode_show_request(data)
        if isinstance(request, InferbusError):
            return ShowReply.failure("", request)
        try:
            show = await self._show(request.model, request.verbose)
        except InferbusError as error:
            return ShowReply.failure(request.model, error)
        except TimeoutError:
            silent = InferbusError(
                ErrorCode.BACKEND_UNAVAILABLE, f"the runtime did not answer in {SHOW_TIMEOUT_S} s"
            )
            return ShowReply.failure(request.model, silent)
        except Exception as exc:
            log.exception("show %r failed", request.model)
            bug = InferbusError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return ShowReply.failure(request.model, bug)
        return ShowReply(model=request.model, show=show)

    async def _show(self, name: str, verbose: bool) -> dict[str, Any]:
        catalog = self._catalog()
        if catalog is not self._kept_for:
            self._kept, self._kept_for = {}, catalog
        served = catalog.models.get(catalog.aliases.get(name, name))
        if served is None:
            raise InferbusError(ErrorCode.MODEL_NOT_FOUND, f"model {name!r} is not served here")
        key = (served.name, verbose)
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        async with asyncio.timeout(SHOW_TIMEOUT_S):
            described = await served.runtime.describe(served.info, verbose=verbose)
        show = described or show_from_info(served.info, served.runtime.kind, served.type)
        if len(self._kept) < _MAX_KEPT:
            self._kept[key] = show
        return show
