"""Work split by content: a chunk is one or more first hex digits of a sha256 (of an image's bytes for the feature
cache, of an input key for prediction), so there are at most 16 and each item always falls in the same one."""

from __future__ import annotations

import hashlib

HEX_DIGITS = "0123456789abcdef"
MAX_CHUNKS = len(HEX_DIGITS)


def require_chunks(k: object, what: str = "chunks") -> int:
    """``k`` when it is a chunk count (an int in 1..16); otherwise a ValueError naming ``what`` and the range."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CHUNKS:
        raise ValueError(f"{what}={k!r} is invalid; pass 1..{MAX_CHUNKS} (a chunk is one or more first hex digits "
                         "of a sha256, so there are at most 16)")
    return k


def chunk_of(key: str, chunks: int) -> int:
    """The chunk (0..chunks-1) of an input key (an object key or path): by the first hex digit of its sha256."""
    return int(hashlib.sha256(key.encode()).hexdigest()[0], 16) % chunks
