"""Slowing down password guessing. Gradio's auth hook sees only (user, password), never who is asking, so the
limit sits in front of its /login route as a small ASGI middleware: each client address gets a few failed
logins per window; further attempts are answered 429 (with Retry-After) without reaching the password check.
Each attempt is counted as a failure *before* it reaches the check (atomically, under one lock) and the count
is taken back only when the login succeeds, so parallel guesses cannot all slip in under the limit."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict, deque

FAILED_LOGINS_PER_WINDOW = 5
WINDOW_S = 60.0
BAD_CREDENTIALS_STATUS = 400  # what gradio's /login answers for a wrong user or password


class LoginRateLimit:
    """ASGI middleware: at most `max_failures` failed POSTs to .../login per client address in `window_s`."""

    def __init__(self, app, max_failures: int = FAILED_LOGINS_PER_WINDOW, window_s: float = WINDOW_S,
                 clock=time.monotonic):
        self.app = app
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if not _is_login(scope):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        attempt, wait_s = self.reserve(client)
        if attempt is None:
            await _refuse(send, wait_s)
            return
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status and status[0] < 400:
                self.release(client, attempt)  # the login succeeded: the attempt does not count

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        with self._lock:
            return self._wait_s_locked(client)

    def _wait_s_locked(self, client: str) -> float:
        failures = self._failures[client]
        now = self.clock()
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if len(failures) < self.max_failures:
            return 0.0
        return self.window_s - (now - failures[0])

    def record_failure(self, client: str) -> None:
        with self._lock:
            self._failures[client].append(self.clock())

    def reserve(self, client: str) -> tuple[float | None, float]:
        """Count an attempt as failed before its password is checked: (its time, 0), or (None, seconds to wait)
        when `client` has none left. Check and count happen under one lock, so of N parallel attempts at most
        the allowed number get through."""
        with self._lock:
            wait_s = self._wait_s_locked(client)
            if wait_s > 0:
                return None, wait_s
            now = self.clock()
            self._failures[client].append(now)
            return now, 0.0

    def release(self, client: str, attempt: float) -> None:
        """Take back an attempt reserved by `reserve` (the login succeeded)."""
        with self._lock:
            with contextlib.suppress(ValueError):
                self._failures[client].remove(attempt)


def _is_login(scope) -> bool:
    return (scope.get("type") == "http" and scope.get("method") == "POST"
            and scope.get("path", "").rstrip("/").endswith("/login"))


async def _refuse(send, wait_s: float) -> None:
    seconds = max(1, round(wait_s))
    body = json.dumps({"detail": f"too many failed logins from this address; try again in {seconds} s"}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(seconds).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
