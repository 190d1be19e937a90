"""Refusing DNS rebinding. A web page on another site can make the browser send requests to Kiln under that
site's name (its DNS answer changed to 127.0.0.1): the browser then treats Kiln as the other site and lets the
page read and drive it. Such a request still carries the other site's name in its `Host` header, so every request
whose Host (and Origin, when it has one) is not a name Kiln is reached by is refused before it meets any route:
pages, /gradio_api/*, files, uploads and the queue alike. The names are the address the app listens on (the
loopback names when it listens on loopback) and those the user lists with `app.py --allowed-host NAME`."""
from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


class AllowedHosts:
    """The host names a request may carry. Mutable: a share link's name is added once Gradio has made it."""

    def __init__(self, bound: str, extra: list[str] | tuple[str, ...] = ()):
        names = {_plain(bound)}
        if _is_loopback(bound) or bound in WILDCARD_ADDRESSES:
            names.update(LOOPBACK_NAMES)
        if bound in WILDCARD_ADDRESSES:  # every address of this machine is one it listens on
            names.update(_own_names())
        self.names = {name for name in names if name} | {_plain(name) for name in extra}

    def add(self, name: str) -> None:
        self.names.add(_plain(name))

    def allows(self, host_header: str | None) -> bool:
        return host_header is not None and host_name(host_header) in self.names

    def allows_origin(self, origin: str) -> bool:
        return host_name(urlsplit(origin).netloc) in self.names if "://" in origin else False


def host_name(netloc: str) -> str:
    """The name in a Host header or URL authority, lower-case, without port or user ("[::1]:7860" → "::1")."""
    netloc = netloc.rpartition("@")[2].strip()
    if netloc.startswith("["):
        return _plain(netloc[1:netloc.find("]")] if "]" in netloc else netloc)
    return _plain(netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc)


class HostCheck:
    """ASGI middleware: answers 421 to an HTTP request (and closes a websocket) whose Host or Origin is not in
    `allowed`, naming the option that lets it in."""

    def __init__(self, app, allowed: AllowedHosts):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        host, origin = headers.get(b"host"), headers.get(b"origin")
        refused = (f"Host {host!r}" if not self.allowed.allows(host) else
                   f"Origin {origin!r}" if origin is not None and not self.allowed.allows_origin(origin) else None)
        if refused is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _refuse(send, f"{refused} is not a name this Kiln is reached by (a page of another site may be "
                                "trying to drive it); start app.py with --allowed-host NAME to allow a name")


async def _refuse(send, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _plain(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def _is_loopback(address: str) -> bool:
    if _plain(address) == "localhost":
        return True
    try:
        return ipaddress.ip_address(_plain(address)).is_loopback
    except ValueError:
        return False


def _own_names() -> set[str]:
    """This machine's name and the addresses it resolves to (for an app listening on every address)."""
    try:
        name, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
    except OSError:
        return set()
    return {_plain(n) for n in (name, *aliases, *addresses)}
