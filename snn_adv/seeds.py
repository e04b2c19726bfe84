"""Seeds derived from a base seed and any JSON-serialisable keys: the project's one seed-derivation function.

Named random streams (a cell's training, a batch's crafting or scoring draws) are ``derive_seed(seed, *names)``:
a hash, so the stream of a name never depends on which other streams were drawn before it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "derive_seed"]


def canonical_json(obj: Any) -> str:
    """One string per value: sorted keys, no spaces (used for hashing settings)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def derive_seed(seed: int, *keys: Any) -> int:
    """A 31-bit seed from ``seed`` and any JSON-serialisable keys: ``sha256(json([seed, keys]))`` mod 2^31.

    Stable across processes and Python versions (unlike ``hash()``), so cell ``k`` of config seed ``s`` always draws
    the same random numbers.
    """
    digest = hashlib.sha256(canonical_json([int(seed), list(keys)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31)
