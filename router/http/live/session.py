"""The page's login: a key typed once into a form becomes a signed session cookie.

The cookie is not the key: it is `<expiry>.<mac>`, the mac an HMAC of the expiry and the
key under a secret the router draws at start. So the browser never holds a key (nor can
a script read the cookie: it is HttpOnly), a session ends with its expiry, with the key
leaving the configuration, or with a restart of the router, and checking one costs an
HMAC per configured key. Pure: the secret and the clock are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["COOKIE", "SESSION_S", "new_session", "session_valid"]

COOKIE = "inferbus_session"
SESSION_S = 12 * 3600


def _mac(secret: bytes, expires: int, key: bytes) -> str:
    return hmac.new(secret, b"%d:" % expires + key, hashlib.sha256).hexdigest()


def new_session(secret: bytes, key: bytes, *, now: float, lasts_s: int = SESSION_S) -> str:
    """The cookie value for a caller who proved they hold `key`."""
    expires = int(now) + lasts_s
    return f"{expires}.{_mac(secret, expires, key)}"


def session_valid(secret: bytes, value: str, keys: Sequence[bytes], *, now: float) -> bool:
    """Whether a cookie value is a live session of one of `keys` (constant time per key)."""
    expires_text, dot, mac = value.partition(".")
    if not dot or not expires_text.isdigit() or len(mac) != 64:
        return False
    expires = int(expires_text)
    if expires <= now:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(mac, _mac(secret, expires, key))
    return matched
