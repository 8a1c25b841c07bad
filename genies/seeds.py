"""Every random choice of the workflow is seeded from the config seed and what it is for."""

from __future__ import annotations

import hashlib
import json


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the config seed and a purpose (dataset name, label, numbers).

    Stable across processes and platforms (a hash, not Python's salted `hash`).
    """
    digest = hashlib.sha256(json.dumps([int(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
