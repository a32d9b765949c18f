"""Limits on what a checkpoint may ask of the reader, and how to raise them deliberately.

A hostile pickle can be tiny and still nest a structure so deep that torch's loader (or any code
that later walks the result) overflows the C stack, or declare a string of 2^62 bytes. The pickle
scanner enforces these bounds before torch sees the file. Each limit can be raised for one process
with an environment variable, or per call with a :class:`PickleLimits` argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ldmkit.errors import CheckpointError

# Real checkpoints nest about 10 deep (a Lightning dict, its optimizer state, a tensor's rebuild
# arguments); Python code walking a result recursively fails near 1000, torch's loader near 100,000.
MAX_PICKLE_DEPTH = 100
# Values held on the unpickler's stack (all MARK frames together); pickles write containers in
# batches of 1000, so real files stay far below this.
MAX_PICKLE_STACK = 1_000_000
# Memo entries; a checkpoint memoizes about ten objects per tensor.
MAX_PICKLE_MEMO = 1_000_000
# Bytes of one pickle (the object graph, not the tensor data stored beside it).
MAX_PICKLE_BYTES = 256 * 1024 * 1024

ENV_MAX_PICKLE_DEPTH = "LDMKIT_MAX_PICKLE_DEPTH"
ENV_MAX_PICKLE_STACK = "LDMKIT_MAX_PICKLE_STACK"
ENV_MAX_PICKLE_MEMO = "LDMKIT_MAX_PICKLE_MEMO"
ENV_MAX_PICKLE_BYTES = "LDMKIT_MAX_PICKLE_BYTES"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise CheckpointError(f"environment variable {name} must be a whole number, got {raw[:40]!r}") from None
    if value < 1:
        raise CheckpointError(f"environment variable {name} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class PickleLimits:
    """Bounds the pickle scanner enforces; defaults are the module constants.

    ``max_depth``: how deeply containers and objects may nest. ``max_stack``: values on the
    unpickler's stack at once. ``max_memo``: memo entries. ``max_bytes``: size of one pickle.
    Raising ``max_depth`` far above 1000 lets files through that crash torch's loader.
    """

    max_depth: int = MAX_PICKLE_DEPTH
    max_stack: int = MAX_PICKLE_STACK
    max_memo: int = MAX_PICKLE_MEMO
    max_bytes: int = MAX_PICKLE_BYTES

    @classmethod
    def from_env(cls) -> PickleLimits:
        """The defaults, each raised (or lowered) by its ``LDMKIT_MAX_PICKLE_*`` environment variable."""
        return cls(
            max_depth=_env_int(ENV_MAX_PICKLE_DEPTH, MAX_PICKLE_DEPTH),
            max_stack=_env_int(ENV_MAX_PICKLE_STACK, MAX_PICKLE_STACK),
            max_memo=_env_int(ENV_MAX_PICKLE_MEMO, MAX_PICKLE_MEMO),
            max_bytes=_env_int(ENV_MAX_PICKLE_BYTES, MAX_PICKLE_BYTES),
        )


__all__ = [
    "ENV_MAX_PICKLE_BYTES",
    "ENV_MAX_PICKLE_DEPTH",
    "ENV_MAX_PICKLE_MEMO",
    "ENV_MAX_PICKLE_STACK",
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_DEPTH",
    "MAX_PICKLE_MEMO",
    "MAX_PICKLE_STACK",
    "PickleLimits",
]
