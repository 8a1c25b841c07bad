"""Progress lines for long jobs: done/total, rates and ETA, at most every `every` seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("genies")


class ProgressLog:
    """Callable ``progress(done, total, **values)`` that logs
    ``label: done/total unit, <values>, rate unit/s, <counts>/s, ETA``.

    A line is logged on the first call, on the last (``done >= total``) and otherwise at most
    every `every` seconds. `start` is the work done before this process (a resumed training):
    rates and the ETA count only what this process did. Keywords named in `counts` (e.g.
    ``pairs``, ``tokens``) are added up over calls and logged as rates; any other keyword (e.g.
    ``loss``) is logged as it is.
    """

    def __init__(
        self,
        label: str,
        unit: str = "examples",
        every: float = 10.0,
        start: int = 0,
        counts: tuple[str, ...] = (),
    ):
        self.label, self.unit, self.every, self.start = label, unit, every, start
        self.counts = dict.fromkeys(counts, 0)
        self.t0 = self.last = time.time()
        self.calls = 0

    def __call__(self, done: int, total: int, **values) -> None:
        for name in self.counts:
            self.counts[name] += values.pop(name, 0)
        now = time.time()
        first, self.calls = self.calls == 0, self.calls + 1
        if not (first or done >= total or now - self.last >= self.every):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = (done - self.start) / elapsed
        eta = (total - done) / rate if rate > 0 else float("nan")
        parts = [f"{self.label}: {done}/{total} {self.unit}"]
        parts += [f"{name} {value:.4g}" for name, value in values.items()]
        parts.append(f"{rate:.2f} {self.unit}/s")
        parts += [f"{count / elapsed:.2f} {name}/s" for name, count in self.counts.items()]
        parts.append(f"ETA {eta:.0f} s")
        log.info(", ".join(parts))
