"""Progress lines for long jobs: done/total, rate and ETA, at most every `every` seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("genies")


class ProgressLog:
    """Callable `progress(done, total)` that logs `label: done/total unit, rate/s, ETA`."""

    def __init__(self, label: str, unit: str = "examples", every: float = 10.0):
        self.label, self.unit, self.every = label, unit, every
        self.start = self.last = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d %s, %.2f/s, ETA %.0f s", self.label, done, total, self.unit, rate, eta)
