"""The only door hospitals see: a TLS proxy that forwards Flower's Fleet API and nothing else.

Flower 1.41's SuperLink serves Fleet (``/v1/fleet/*``, the SuperNodes), Control (``/v1/control/*``, the
``flwr`` CLI: start/stop runs, register nodes, pull artifacts) and the ServerApp runtime API on ONE
HTTP port; the OSS build has no per-API bind address and no account authentication on Control.
``fedpcr-server`` therefore keeps the SuperLink on 127.0.0.1 and puts this proxy on the public
address: it terminates TLS with the SuperLink's certificate, forwards requests whose path starts with
``/v1/fleet/`` to the loopback SuperLink (TLS, verified with the federation CA) and answers 404 to
everything else. SuperNode authentication still happens at the SuperLink (signed headers pass through).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

FLEET_PREFIX = "/v1/fleet/"
#: Hop-by-hop headers a proxy must not forward.
_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authorization", b"proxy-authenticate", b"content-length"}


def make_app(upstream: str, ca_cert: str | Path | None) -> Any:
    """ASGI app forwarding Fleet requests to ``upstream`` (``https://127.0.0.1:PORT``); 404 for the rest."""
    import httpx

    verify: Any = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(300.0))

    async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if not path.startswith(FLEET_PREFIX) or ".." in path:
            await _send(send, 404, [(b"content-type", b"text/plain")], b"not found (only the Fleet API is served)")
            return
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        url = scope["raw_path"].decode() + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        try:
            resp = await client.request(scope["method"], url, headers=headers, content=b"".join(chunks))
        except Exception:  # noqa: BLE001 - upstream down: the SuperNode retries
            await _send(send, 502, [(b"content-type", b"text/plain")], b"SuperLink unavailable")
            return
        out = [(k.encode(), v.encode()) for k, v in resp.headers.items() if k.lower().encode() not in _HOP]
        out.append((b"content-length", str(len(resp.content)).encode()))
        await _send(send, resp.status_code, out, resp.content)

    return app


def start(host: str, port: int, upstream: str, certfile: Path, keyfile: Path, ca_cert: Path | None) -> Any:
    """Serve the proxy with TLS in a daemon thread; returns the uvicorn Server (``should_exit = True`` stops it)."""
    import uvicorn

    config = uvicorn.Config(make_app(upstream, ca_cert), host=host, port=port, ssl_certfile=str(certfile),
                            ssl_keyfile=str(keyfile), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the main thread owns signals
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="fleet-proxy", daemon=True)
    thread.start()
    return server
