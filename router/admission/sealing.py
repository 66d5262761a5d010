"""Records routers keep in the shared store, sealed with a key only routers hold.

XChaCha20-Poly1305 (libsodium's AEAD, through PyNaCl, which nats-py's nkeys support
already brings): a record is secret to anyone without the key and cannot be changed, made
up, or moved to another KV key without the opening failing (the KV key is the associated
data). So even with a bucket readable or writable by more than the routers (a
misconfigured grant, an open server, a stolen backup), a router never serves a kept answer
it cannot verify: `decode` answers None, and the key's claim is taken over.

    value = "s1." + base64url(nonce (24 random bytes) + ciphertext and tag)
"""

from __future__ import annotations

import base64
import secrets

import nacl.bindings
import nacl.exceptions
import pydantic

from services.keystore import Record

__all__ = ["KEY_BYTES", "SealedRecords"]

KEY_BYTES = 32
_NONCE_BYTES = 24
_VERSION = b"s1."


class SealedRecords:
    """The routers' codec for their space of the store (`services.keystore.Codec`)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    def encode(self, kv_key: str, record: Record) -> bytes:
        plain = record.model_dump_json(exclude_none=True).encode()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plain, kv_key.encode(), nonce, self._key
        )
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed)

    def decode(self, kv_key: str, data: bytes) -> Record | None:
        if not data.startswith(_VERSION):
            return None
        try:
            raw = base64.urlsafe_b64decode(data[len(_VERSION) :])
            plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                raw[_NONCE_BYTES:], kv_key.encode(), raw[:_NONCE_BYTES], self._key
            )
            return Record.model_validate_json(plain)
        except (ValueError, nacl.exceptions.CryptoError, pydantic.ValidationError):
            return None
