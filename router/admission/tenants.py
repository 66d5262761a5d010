"""Who is asking: the bearer key a request carries and the tenant scope it stands for.

Keys are compared in constant time and never logged; a tenant is named by a digest of its
key, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def bearer_token(authorization: bytes) -> bytes:
    scheme, _, token = authorization.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def presented_key(authorization: bytes, api_key: bytes) -> bytes:
    """The key a request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`
    (what Anthropic's clients send)."""
    return bearer_token(authorization) or api_key.strip()


def key_matches(token: bytes, keys: Sequence[bytes]) -> bool:
    # Every key is compared, so the time taken does not say which one was close.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched and bool(token)


SHARED_SCOPE = "shared"


def tenant_of(
    authorization: str | None, *, keys_configured: bool, api_key: str | None = None
) -> str:
    """The caller's idempotency scope: a digest of its API key (bearer or `x-api-key`),
    or the one shared scope.

    Without configured keys nobody is authenticated, so a bearer token proves nothing and
    everyone shares one scope.
    """
    if not keys_configured:
        return SHARED_SCOPE
    token = presented_key((authorization or "").encode(), (api_key or "").encode())
    if not token:
        return SHARED_SCOPE
    return "t" + hashlib.blake2b(token, digest_size=12).hexdigest()
