"""The one shape of everything long-lived here: `start()`, an idempotent `stop()`, and
`async with thing:` doing both (CONVENTIONS §6)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncService:
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
