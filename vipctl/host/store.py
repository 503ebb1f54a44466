"""The shared store (spec `store:`): the cluster's desired state in etcd.

Client: etcd3gw (OpenStack's client of etcd's v3 JSON gateway, maintained, pure Python over
`requests`, ~1 MB installed). It was chosen over python-etcd3 (gRPC, last release 2020)
and aetcd (gRPC + grpcio's ~40 MB wheel, asyncio only): vipctl's use is a handful of small
reads and one compare-and-swap per change, where HTTP/JSON costs nothing that matters and
keeps the router's package small. It is imported only when a spec has `store:`.

Keys under `{prefix}/{cluster}/`:
- `desired`: core/shared.py's document (weights in force, base table, generation);
  changed only by compare-and-swap on its whole value, so two routers that change it at
  once cannot both win (the loser gets StoreError, exit 75, nothing changed);
- `routers/{name}`: what each router's daemon has live (fingerprint, generation, the
  shared generation it converged to, when), for `vipctl status`.

Every request has the spec's `timeout_ms`; the endpoints are tried in order. Nothing on
the data path calls this module: a failover never waits for the store.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vipctl.core import shared as sharedmod
from vipctl.errors import StoreError

if TYPE_CHECKING:
    from vipctl.core.shared import Shared
    from vipctl.core.spec import Spec, Store


def router_name() -> str:
    """This router's name in the store: $VIPCTL_ROUTER, else the host name."""
    return os.environ.get("VIPCTL_ROUTER") or socket.gethostname()


@dataclass(frozen=True)
class Found:
    """The shared document as read: parsed (None when there is none yet) and its raw text
    (what the compare-and-swap compares against)."""

    shared: Shared | None
    raw: str | None


class Client:
    def __init__(self, spec: Spec) -> None:
        store = spec.store
        assert store is not None
        self.spec = spec
        self.store = store
        self.base = f"{store.prefix.rstrip('/')}/{spec.cluster}"
        self.router_name = router_name()
        self._clients: list[Any] | None = None

    # -- keys ---------------------------------------------------------------------------
    @property
    def desired_key(self) -> str:
        return f"{self.base}/desired"

    def router_key(self, name: str) -> str:
        return f"{self.base}/routers/{name}"

    # -- transport ----------------------------------------------------------------------
    def _endpoints(self) -> list[Any]:
        if self._clients is None:
            from etcd3gw.client import Etcd3Client

            self._clients = [_client(Etcd3Client, url, self.store) for url in self.store.etcd]
        return self._clients

    def _call(self, what: str, fn: Any) -> Any:
        """fn(client) on the first endpoint that answers; StoreError when none does."""
        from etcd3gw import exceptions

        errors = []
        for client in self._endpoints():
            try:
                return fn(client)
            except (exceptions.Etcd3Exception, OSError, ValueError) as exc:
                errors.append(f"{client.host}:{client.port}: {type(exc).__name__}")
        raise StoreError(
            f"the store (etcd {', '.join(self.store.etcd)}) cannot {what}: "
            f"{'; '.join(errors)}; nothing changed, try again"
        )

    # -- the desired state --------------------------------------------------------------
    def read(self) -> Found:
        """The shared desired state (StoreError when unreachable, SpecError when the
        document does not fit the spec)."""
        values = self._call("be read", lambda c: c.get(self.desired_key))
        if not values:
            return Found(None, None)
        raw = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else values[0]
        return Found(sharedmod.parse(raw, f"etcd {self.desired_key}", self.spec), raw)

    def swap(self, found: Found, new: Shared) -> None:
        """Compare-and-swap: write `new` only if the document is still `found`'s
        (StoreError otherwise: another router changed it first)."""
        text = new.to_text()
        if found.raw is None:
            ok = self._call("be written", lambda c: c.create(self.desired_key, text))
        else:
            raw = found.raw
            ok = self._call("be written", lambda c: c.replace(self.desired_key, raw, text))
        if not ok:
            raise StoreError(
                f"cluster {self.spec.cluster}: another router changed the desired state "
                "first; nothing changed, run it again"
            )

    # -- what each router has live -------------------------------------------------------
    def publish(self, name: str, report: dict[str, Any]) -> None:
        text = json.dumps({**report, "at": round(time.time(), 3)}, sort_keys=True)
        self._call("be written", lambda c: c.put(self.router_key(name), text))

    def routers(self) -> list[dict[str, Any]]:
        found = self._call("be read", lambda c: c.get_prefix(f"{self.base}/routers/"))
        out = []
        for value, meta in found:
            key = meta.get("key", b"")
            key = key.decode() if isinstance(key, bytes) else str(key)
            try:
                data = json.loads(value)
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append({"name": key.rsplit("/", 1)[-1], **data})
        return sorted(out, key=lambda r: str(r["name"]))


def _client(cls: Any, url: str, store: Store) -> Any:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 2379
    timeout = store.timeout_ms / 1000
    return cls(
        host=host,
        port=port,
        protocol=parts.scheme,
        ca_cert=store.ca,
        cert_key=store.key,
        cert_cert=store.cert,
        timeout=timeout,
        api_path="/v3/",  # etcd 3.4+ (Debian 12 ships 3.4.23): skip the version probe
    )
