"""The shared limits' JetStream KV bucket: made or bound at start-up, and read and written
by compare-and-set for rpm/tpm counters (router/admission/shared_limits.py) and running
calls (router/admission/shared_running.py).

Every NATS error of the bucket is translated here, once: a read or a write answers None
when the store cannot be reached (said in the log once per outage), never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

__all__ = ["TTL_S", "LimitsBucket", "LimitsStoreUnavailable", "open_bucket"]

log = logging.getLogger("inferbus.router.limits")

TTL_S = 180.0  # a minute's counters outlive the minute after it


class LimitsBucket:
    """Compare-and-set reads and writes of the bucket's keys for one use of it."""

    def __init__(self, kv: KeyValue, connected: Callable[[], bool], what: str) -> None:
        """While not `connected` the store counts as unreachable at once (a request would
        wait for its timeout); `what` names the use in the log."""
        self._kv = kv
        self._connected = connected
        self._what = what
        self._unavailable = False

    async def read(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision); (b"", 0) for a key nobody wrote; None: unreachable."""
        if not self._connected():
            self._lost(ConnectionError("not connected to NATS"))
            return None
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return b"", 0
        except (nats.errors.Error, OSError, TimeoutError) as error:
            self._lost(error)
            return None
        self._unavailable = False
        return entry.value or b"", entry.revision or 0

    async def put(self, key: str, data: bytes, revision: int) -> int | None:
        """The new revision; 0: another router wrote first; None: unreachable."""
        if not self._connected():
            self._lost(ConnectionError("not connected to NATS"))
            return None
        try:
            if revision == 0:
                return await self._kv.create(key, data)
            return await self._kv.update(key, data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return 0
        except (nats.errors.Error, OSError, TimeoutError) as error:
            self._lost(error)
            return None

    def _lost(self, error: BaseException) -> None:
        if not self._unavailable:
            log.warning("%s store unavailable (%s): admitting", self._what, type(error).__name__)
        self._unavailable = True


class LimitsStoreUnavailable(Exception):
    """The shared limits' bucket cannot be made or bound at start-up: what is missing."""


async def open_bucket(nc: NatsClient, bucket: str, max_bytes: int) -> KeyValue:
    """Create the shared limits' bucket, or bind to the one there. Reads are direct gets
    (`$JS.API.DIRECT.GET.KV_<bucket>.>`, the grant ops/nats gives routers). Raises
    LimitsStoreUnavailable, or `nats.errors.Error` when JetStream refuses otherwise (a
    configuration error, for start-up). One made with other limits is used as it is."""
    js = nc.jetstream()
    try:
        kv = await js.create_key_value(
            bucket=bucket, ttl=TTL_S, history=1, direct=True, max_bytes=max_bytes
        )
    except nats.errors.NoRespondersError:
        raise LimitsStoreUnavailable(
            f"limits.shared: JetStream is not enabled on the NATS server (bucket {bucket})"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise LimitsStoreUnavailable(
            f"limits.shared: no answer to $JS.API.STREAM.CREATE.KV_{bucket}: JetStream is off "
            "for this account, or the router's NATS user lacks the limits bucket's grants "
            "(ops/nats/README.md)"
        ) from None
    except nats.js.errors.BadRequestError:
        kv = await js.key_value(bucket)
        info = await js.stream_info(f"KV_{bucket}")
        if not info.config.allow_direct:
            log.warning(
                "the shared limits bucket %s reads without direct get, which the shipped "
                "NATS permissions do not grant: delete it (nats kv del %s) and restart",
                bucket,
                bucket,
            )
    return kv
