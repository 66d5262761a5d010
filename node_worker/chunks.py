"""The worker's side of a streamed answer (DESIGN §5): pieces published to the caller's
inbox, numbered from 1 in one sequence, whether they carry text, tool-call deltas or reasoning."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient

from services.wire import Chunk, Piece, Thinking, encode
from services.wire_features import ToolCallDelta


class ChunkSender:
    """Publishes one job's stream chunks; `text` and `tool_calls` are the pipeline's sinks."""

    def __init__(self, nc: NatsClient, reply_to: str, job_id: str) -> None:
        self._nc = nc
        self._reply_to = reply_to
        self._job_id = job_id
        self._seq = 0

    async def _send(self, chunk: Chunk) -> None:
        self._seq += 1
        chunk.seq = self._seq
        await self._nc.publish(self._reply_to, encode(chunk))
        if self._seq == 1:
            # Let the NATS flusher send the first token now, not after the rest of a
            # burst the runtime delivered in the same read: time to first token.
            await asyncio.sleep(0)

    async def text(self, delta: str) -> None:
        await self._send(Chunk(job_id=self._job_id, seq=0, delta=delta))

    async def tool_calls(self, deltas: list[ToolCallDelta]) -> None:
        await self._send(Chunk(job_id=self._job_id, seq=0, tool_calls=deltas))

    async def thinking(self, piece: Thinking) -> None:
        await self._send(Chunk(job_id=self._job_id, seq=0, thinking=piece.text))

    async def piece(self, piece: Piece) -> None:
        """Text, tool-call pieces or reasoning, whichever `piece` is."""
        if isinstance(piece, str):
            await self.text(piece)
        elif isinstance(piece, Thinking):
            await self.thinking(piece)
        else:
            await self.tool_calls(piece)
