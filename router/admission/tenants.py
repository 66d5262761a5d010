"""Who is asking: tenants, the bearer key each one holds, and the class a request runs in.

`http.api_keys` is a list of tenants or of plain keys (each a tenant of its own, named
`key-<n>`, in the default class); none configured means one anonymous tenant and no
authentication. A tenant has a name, a key (`key`, or `key_env` naming the environment
variable that holds it), a priority class, a weight for its fair share inside that
class, limits (`max_concurrent`, `rpm`, `tpm`, `max_queued`; absent = none) and an
optional model allow-list. Keys are compared in constant time and never logged; a
tenant's idempotency scope is a digest of its key, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from router.config import AdmissionSettings, TenantConfig, tenant_configs

__all__ = [
    "ANONYMOUS",
    "SHARED_SCOPE",
    "Tenant",
    "TenantConfigError",
    "TenantDirectory",
    "TenantLimits",
    "bearer_token",
    "effective_class",
    "key_matches",
    "tenant_of",
]

SHARED_SCOPE = "shared"
ANONYMOUS = "anonymous"


class TenantConfigError(Exception):
    """The tenants cannot be built as configured (an unset `key_env`, a duplicate key)."""


@dataclass(frozen=True)
class TenantLimits:
    max_concurrent: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_queued: int | None = None


@dataclass(frozen=True)
class Tenant:
    """A tenant as the router serves it: its class resolved, its key left behind."""

    name: str
    priority: str
    weight: float = 1.0
    limits: TenantLimits = TenantLimits()
    models: frozenset[str] | None = None
    admin: bool = False
    scope: str = SHARED_SCOPE  # the idempotency scope: a digest of its key

    def may_use(self, *models: str | None) -> bool:
        """Whether one of the names a request's model goes by is on the allow-list."""
        return self.models is None or any(m in self.models for m in models if m)


class TenantDirectory:
    """The configured tenants by key (or the one anonymous tenant): who is asking."""

    def __init__(self, keyed: Sequence[tuple[bytes, Tenant]], anonymous: Tenant | None) -> None:
        self._keyed = list(keyed)
        self.anonymous = anonymous
        self.tenants = {tenant.name: tenant for _key, tenant in self._keyed}
        if anonymous is not None:
            self.tenants[anonymous.name] = anonymous

    @property
    def keys_configured(self) -> bool:
        return bool(self._keyed)

    @classmethod
    def build(
        cls,
        entries: Sequence[SecretStr | TenantConfig],
        admission: AdmissionSettings,
        environ: Mapping[str, str],
    ) -> TenantDirectory:
        """The directory, or TenantConfigError naming the entry (unset or duplicate keys)."""
        keyed: list[tuple[bytes, Tenant]] = []
        seen: dict[bytes, int] = {}
        for n, config in enumerate(tenant_configs(entries)):
            secret = _secret_of(config, n, environ).encode()
            if secret in seen:
                raise TenantConfigError(
                    f"http.api_keys[{n}]: tenant {config.name!r} has the same key as "
                    f"api_keys[{seen[secret]}]"
                )
            seen[secret] = n
            keyed.append((secret, _tenant(config, admission, _scope_of(secret))))
        anonymous = None if keyed else Tenant(ANONYMOUS, admission.fallback_class)
        return cls(keyed, anonymous)

    def identify(self, authorization: bytes, api_key: bytes = b"") -> Tenant | None:
        """The tenant whose key the request presents (`Authorization: Bearer`, else
        `x-api-key`; None: no such key); the anonymous tenant whoever asks when no keys
        are configured."""
        if self.anonymous is not None:
            return self.anonymous
        token = presented_key(authorization, api_key)
        found: Tenant | None = None
        for key, tenant in self._keyed:  # every key compared: the time says nothing
            if hmac.compare_digest(token, key) and token:
                found = tenant
        return found


def _secret_of(config: TenantConfig, n: int, environ: Mapping[str, str]) -> str:
    if config.key is not None:
        return config.key.get_secret_value()
    assert config.key_env is not None  # TenantConfig holds one of the two
    value = environ.get(config.key_env, "")
    if not value:
        raise TenantConfigError(
            f"http.api_keys[{n}].key_env: environment variable {config.key_env} "
            f"(tenant {config.name!r}) is not set"
        )
    return value


def _tenant(config: TenantConfig, admission: AdmissionSettings, scope: str) -> Tenant:
    return Tenant(
        name=config.name,
        priority=config.priority or admission.fallback_class,
        weight=config.weight,
        limits=TenantLimits(config.max_concurrent, config.rpm, config.tpm, config.max_queued),
        models=frozenset(config.models) if config.models is not None else None,
        admin=config.admin,
        scope=scope,
    )


def effective_class(
    tenant_class: str, asked: str | None, admission: AdmissionSettings
) -> tuple[str, str]:
    """The class a request runs in, and a note for its route report ("" when none).

    A request may lower its class (`x-priority: batch`), never raise it above its
    tenant's; an unknown or higher class is ignored, not an error.
    """
    if not asked:
        return tenant_class, ""
    wanted = asked.strip().lower()
    if wanted not in admission.classes:
        return tenant_class, f"x-priority {wanted!r} is not a class; {tenant_class} kept"
    if admission.rank(wanted) < admission.rank(tenant_class):
        return tenant_class, f"x-priority {wanted} is above the tenant's class; {tenant_class} kept"
    if wanted == tenant_class:
        return tenant_class, ""
    return wanted, f"lowered to {wanted} by x-priority"


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


def _scope_of(token: bytes) -> str:
    return "t" + hashlib.blake2b(token, digest_size=12).hexdigest()


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
    return _scope_of(token)
