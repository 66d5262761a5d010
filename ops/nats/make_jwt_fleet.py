"""Make a decentralised-auth (operator mode) NATS setup for an inferbus fleet.

What `nsc` would make, with the same permissions as `accounts.conf`: an operator, one
account `INFERBUS` (JetStream on, for the routers' shared stores), and one user per
worker, one for the routers and (unless `--no-ops`) one for operators. Every key is an
nkey (Ed25519); every identity is a JWT signed by the key above it, so the server stores no
secret at all: it trusts the operator's public key and checks each user's JWT and its
signature of the connection nonce.

    python ops/nats/make_jwt_fleet.py /etc/nats/inferbus --node gpu-a --node gpu-b

writes into that directory:
    operator.conf          for the server: `include ./inferbus/operator.conf` from its config
                           (operator JWT, MEMORY resolver with the account JWT preloaded)
    creds/<user>.creds     one per user: its JWT and nkey seed; copy each to its host only
                           (worker: nats: {creds_file: /etc/inferbus/gpu-a.creds})
    keys/operator.nk       the seeds of the operator, the INFERBUS account and the SYS
    keys/account.nk        (system) account: they sign accounts and users. Keep them off
    keys/system.nk         the servers, like a CA key.

Run it again with more `--node`s to add nodes: the keys in keys/ are reused, so existing
creds files stay valid and the new operator.conf is a drop-in (`nats-server --signal
reload`). Users cannot be revoked one by one this way (a new account key invalidates
everyone); `nsc` with a full resolver does that for fleets that need it.

The JWT encoding (nats-io/jwt v2 claims, `ed25519-nkey` signatures) is written here;
the keys come from the `nkeys` package, which nats-py also uses to sign the nonce.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import nkeys

# A streamed answer is one message per token plus the final answer; a job may answer up
# to 15 minutes after it was delivered. Same numbers as allow_responses in accounts.conf.
RESPONSES_MAX = 100_000
RESPONSES_TTL_NS = 15 * 60 * 1_000_000_000
NO_LIMIT = -1
# The shared idempotency store's KV bucket (services.keystore.DEFAULT_BUCKET).
BUCKET = "inferbus_idempotency"
# The routers' shared limits (router config `limits.bucket`): routers only.
LIMITS_BUCKET = "inferbus_limits"
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """A NATS JWT: `jti` is the base32 SHA-512/256 of the claims, the signature is the
    issuer's Ed25519 signature of `header.payload` (what nats-io/jwt v2 does)."""
    claims = {**claims, "jti": "", "iat": int(time.time()), "iss": issuer.public_key.decode()}
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64url(signature)}"


def new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), prefix))


def kept_key(path: Path, prefix: int) -> nkeys.KeyPair:
    """The seed in `path`, or a new one written there (owner-only) when there is none."""
    if path.exists():
        return nkeys.from_seed(bytearray(path.read_bytes().strip()))
    key = new_key(prefix)
    _write_secret(path, bytes(key.seed) + b"\n")
    return key


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def prefixed(prefix: str, subject: str) -> str:
    """Fleet subjects gain the prefix; inboxes and the `$` subjects ($SRV, $JS, $KV) do not."""
    if not prefix or subject.startswith(("_INBOX", "$")):
        return subject
    return f"{prefix}.{subject}"


def store_grants(space: str, bucket: str = BUCKET) -> list[str]:
    """Read (direct get on the key's own subject) and write one space of the bucket."""
    return [
        f"$KV.{bucket}.{space}.>",
        f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{space}.>",
    ]


def worker_permissions(node_id: str) -> dict[str, Any]:
    """Its own jobs, cancels, caps and show; discovery; `$SRV`; its own heartbeats (to notice a
    second process announcing its id); its own inboxes (`_INBOX_<node>`); publish its own
    heartbeat and the answers to requests delivered to it (resp), nothing else: no
    `_INBOX.>`, and no JetStream, whose answers go wherever the asker says (accounts.conf)."""
    heartbeat = f"ncs.capabilities.{node_id}"
    subscribe = [f"node.{node_id}.>", "ncs.discover", "$SRV.>", heartbeat, f"_INBOX_{node_id}.>"]
    return {
        "sub": {"allow": subscribe},
        "pub": {"allow": [heartbeat]},
        "resp": {"max": RESPONSES_MAX, "ttl": RESPONSES_TTL_NS},
    }


def limits_grants(bucket: str = LIMITS_BUCKET) -> tuple[list[str], list[str]]:
    """(publish, subscribe) for the routers' shared limits: make the bucket (or read how it
    is made), read (direct get) and write its keys, and hear the running-calls keys'
    writes (router/admission/shared_running.py). Nobody else gets any of it."""
    publish = [
        f"$JS.API.STREAM.CREATE.KV_{bucket}",
        f"$JS.API.STREAM.INFO.KV_{bucket}",
        f"$KV.{bucket}.>",
        f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.>",
    ]
    return publish, [f"$KV.{bucket}.running.>"]


def router_permissions() -> dict[str, Any]:
    """Send jobs, cancels, caps and show requests; ask who is there; hear heartbeats; read its
    own inboxes; make the idempotency bucket and read and write its routers' space; the
    shared limits' bucket. It cannot take jobs nor pose as a node."""
    requests = [
        f"node.*.{name}"
        for name in ("llm.request", "vision.request", "embed.request", "cancel", "caps", "show")
    ]
    bucket = [f"$JS.API.STREAM.{verb}.KV_{BUCKET}" for verb in ("CREATE", "INFO")]
    limits_publish, limits_subscribe = limits_grants()
    publish = [*requests, "ncs.discover", *bucket, *store_grants("r"), *limits_publish]
    return {
        "pub": {"allow": publish},
        "sub": {"allow": ["ncs.capabilities.*", "_INBOX.>", *limits_subscribe]},
    }


def with_prefix(permissions: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(permissions)
    for kind in ("pub", "sub"):
        if kind in out:
            out[kind] = {"allow": [prefixed(prefix, s) for s in out[kind]["allow"]]}
    return out


def user_jwt(name: str, user: nkeys.KeyPair, account: nkeys.KeyPair, perms: dict[str, Any]) -> str:
    nats = {
        **perms,
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "type": "user",
        "version": 2,
    }
    return encode_jwt({"name": name, "sub": user.public_key.decode(), "nats": nats}, account)


def account_jwt(
    name: str, account: nkeys.KeyPair, operator: nkeys.KeyPair, *, jetstream: bool = False
) -> str:
    """No limits on connections, subscriptions or data; with `jetstream`, JetStream on
    without limits (the routers' shared stores), as accounts.conf has it."""
    limits: dict[str, Any] = {
        key: NO_LIMIT for key in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")
    }
    if jetstream:
        limits |= {key: NO_LIMIT for key in ("mem_storage", "disk_storage", "streams", "consumer")}
    nats = {"limits": {**limits, "wildcards": True}, "type": "account", "version": 2}
    claims = {"name": name, "sub": account.public_key.decode(), "nats": nats}
    return encode_jwt(claims, operator)


def operator_jwt(operator: nkeys.KeyPair, system: nkeys.KeyPair) -> str:
    nats = {"system_account": system.public_key.decode(), "type": "operator", "version": 2}
    return encode_jwt(
        {"name": "inferbus", "sub": operator.public_key.decode(), "nats": nats}, operator
    )


def creds_file(jwt: str, seed: bytes) -> bytes:
    """The `.creds` layout nsc writes and NATS clients (nats-py included) read."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    ).encode()


def make_fleet(out: Path, nodes: list[str], prefix: str = "", with_ops: bool = True) -> None:
    """Write operator.conf, creds/ and keys/ for `nodes` into `out` (see the module doc)."""
    operator = kept_key(out / "keys" / "operator.nk", nkeys.PREFIX_BYTE_OPERATOR)
    account = kept_key(out / "keys" / "account.nk", nkeys.PREFIX_BYTE_ACCOUNT)
    system = kept_key(out / "keys" / "system.nk", nkeys.PREFIX_BYTE_ACCOUNT)
    users: dict[str, dict[str, Any]] = {
        node: with_prefix(worker_permissions(node), prefix) for node in nodes
    }
    users["router"] = with_prefix(router_permissions(), prefix)
    if with_ops:
        users["ops"] = {}  # no permissions: everything in the account
    for name, permissions in users.items():
        user = new_key(nkeys.PREFIX_BYTE_USER)
        jwt = user_jwt(name, user, account, permissions)
        _write_secret(out / "creds" / f"{name}.creds", creds_file(jwt, bytes(user.seed)))
    accounts = {"INFERBUS": account, "SYS": system}
    preload = "".join(
        f"  {key.public_key.decode()}: "
        f"{account_jwt(name, key, operator, jetstream=name == 'INFERBUS')}\n"
        for name, key in accounts.items()
    )
    (out / "operator.conf").write_text(
        "# Made by ops/nats/make_jwt_fleet.py: operator mode for the inferbus fleet.\n"
        "# No secret here: the operator JWT and the account JWTs it signed (INFERBUS for\n"
        "# the fleet, SYS for the server's own system account).\n"
        f"operator: {operator_jwt(operator, system)}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n{preload}}}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write into (keys/ is reused)")
    parser.add_argument("--node", action="append", required=True, help="a worker's node id")
    parser.add_argument("--prefix", default="", help="the fleet's subject_prefix, if any")
    parser.add_argument("--no-ops", action="store_true", help="no all-powerful `ops` user")
    args = parser.parse_args()
    bad = [node for node in args.node if not _NODE_ID.match(node) or node in {"router", "ops"}]
    if bad:
        parser.error(f"node ids must be [A-Za-z0-9_-]+ and not router/ops: {bad}")
    make_fleet(args.out, args.node, args.prefix, with_ops=not args.no_ops)
    print(f"wrote {args.out}/operator.conf, creds/ for {len(args.node)} node(s) and keys/")


if __name__ == "__main__":
    main()
