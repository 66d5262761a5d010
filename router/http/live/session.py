"""The page's login: a key typed once into a form becomes a signed session cookie.

The cookie is not the key: it is `<expiry>.<tenant>.<mac>`, the mac an HMAC of the expiry,
the tenant's name and its key's digest (the tenant's scope) under a secret the router
draws at start. So the browser never holds a key (nor can a script read the cookie: it is
HttpOnly); a session ends with its expiry, with its tenant's key changing or leaving the
configuration (a reload), or with a restart of the router; and checking one costs one
HMAC. Pure: the secret, the tenants and the clock are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

__all__ = ["COOKIE", "SESSION_S", "new_session", "session_tenant"]

COOKIE = "inferbus_session"
SESSION_S = 12 * 3600


def _mac(secret: bytes, expires: int, name: str, scope: str) -> str:
    message = f"{expires}\0{name}\0{scope}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def new_session(
    secret: bytes, name: str, scope: str, *, now: float, lasts_s: int = SESSION_S
) -> str:
    """The cookie value for a caller who proved they hold tenant `name`'s key."""
    expires = int(now) + lasts_s
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    return f"{expires}.{encoded}.{_mac(secret, expires, name, scope)}"


def session_tenant(
    secret: bytes, value: str, scope_of: Callable[[str], str | None], *, now: float
) -> str | None:
    """The tenant a cookie value is a live session of, or None.

    `scope_of(name)` is the tenant's key digest now (None: no such tenant any more)."""
    expires_text, _, rest = value.partition(".")
    encoded, _, mac = rest.partition(".")
    if not expires_text.isdigit() or len(mac) != 64 or int(expires_text) <= now:
        return None
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    scope = scope_of(name)
    if scope is None:
        return None
    expected = _mac(secret, int(expires_text), name, scope)
    return name if hmac.compare_digest(mac, expected) else None
