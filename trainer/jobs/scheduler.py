"""The queue runs by itself while the app runs: a thread that calls JobManager.start_pending on a timer, so
a job queued behind another starts when that one ends, with no page open. Jobs queued by the CLI or by another
app on the same jobs folder are started too; the queue lock keeps two schedulers from starting one job twice."""
from __future__ import annotations

import sys
import threading

from .manager import JobManager

QUEUE_POLL_S = 2.0


class QueueScheduler:
    def __init__(self, manager: JobManager, interval_s: float = QUEUE_POLL_S):
        self.manager = manager
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-queue", daemon=True)
        self._last_problem: str | None = None

    def start(self) -> "QueueScheduler":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            try:
                self.manager.start_pending()
                self._last_problem = None
            except Exception as exc:  # a vanished or unreadable jobs folder must not end the queue for good
                problem = f"{type(exc).__name__}: {exc}"
                if problem != self._last_problem:  # said once, not every tick
                    print(f"kiln: the job queue could not run: {problem}", file=sys.stderr, flush=True)
                self._last_problem = problem
            if self._stopped.wait(self.interval_s):
                return
