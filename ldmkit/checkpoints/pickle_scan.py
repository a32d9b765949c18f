"""Pickle opcode scanning: find every global a pickle names without running it."""

from __future__ import annotations

import io
import os
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ldmkit.checkpoints.allowlist import ALLOWED_GLOBALS
from ldmkit.checkpoints.detect import Format, _open_zip, _zip_pickle_record
from ldmkit.errors import CheckpointFormatError, UnsafeCheckpointError


@dataclass(frozen=True)
class _Global:
    name: str


_STRING_OPS = frozenset(
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
    "BINBYTES SHORT_BINBYTES BINBYTES8".split()
)


def _global_name(module: str, name: str) -> str:
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    # The same Python 2 name fix-ups torch's unpickler applies, so we judge what it would resolve.
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def scan_pickle_globals(stream: IO[bytes], source: str = "pickle") -> set[str]:
    """Walk one pickle's opcodes without running it; return the globals it names.

    Simulates the unpickler's stack just enough to resolve ``STACK_GLOBAL`` operands (string
    pushes and memo lookups). Raises :class:`UnsafeCheckpointError` for any global outside the
    allowlist, for calls whose target is not a named global, and for extension-registry codes;
    :class:`CheckpointFormatError` for a malformed pickle. The stream is left just after STOP.
    """
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    found: set[str] = set()

    def pop() -> Any:
        if not stack:
            raise CheckpointFormatError(f"{source}: malformed pickle (stack underflow)")
        return stack.pop()

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not metastack:
            raise CheckpointFormatError(f"{source}: malformed pickle (no MARK)")
        items, stack = stack, metastack.pop()
        return items

    def record(name: str) -> _Global:
        if name not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, the pickle references {name!r}, which is not on the allowlist of "
                "tensor and checkpoint-metadata types; nothing was executed. If you trust the file, use "
                "ldmkit.checkpoints.load_checkpoint(path, unsafe_allow_pickle=True)"
            )
        found.add(name)
        return _Global(name)

    def callee(what: str, obj: Any) -> None:
        if not isinstance(obj, _Global):
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, {what} targets something other than a named global"
            )

    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name == "PROTO" and arg < 2:
                raise CheckpointFormatError(f"{source}: pickle protocol {arg} is not supported")
            if name in ("GLOBAL", "INST"):
                module, sep, qual = str(arg).partition(" ")
                if not sep or " " in qual:
                    raise UnsafeCheckpointError(f"{source}: refusing to load, malformed global {arg!r}")
                g = record(_global_name(module, qual))
                if name == "INST":
                    pop_mark()
                    stack.append(None)
                else:
                    stack.append(g)
            elif name == "STACK_GLOBAL":
                qual, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(qual, str)):
                    raise UnsafeCheckpointError(f"{source}: refusing to load, STACK_GLOBAL with non-constant names")
                stack.append(record(_global_name(module, qual)))
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeCheckpointError(f"{source}: refusing to load, pickle uses extension-registry code {arg}")
            elif name == "REDUCE":
                pop()
                callee("REDUCE", stack[-1] if stack else None)
                stack[-1] = None
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    pop()
                pop()
                callee(name, stack[-1] if stack else None)
                stack[-1] = None
            elif name == "OBJ":
                items = pop_mark()
                callee("OBJ", items[0] if items else None)
                stack.append(None)
            elif name in _STRING_OPS:
                stack.append(arg)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else pop()
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else pop()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise CheckpointFormatError(f"{source}: malformed pickle (memo key {arg} unset)")
                stack.append(memo[arg])
            elif name == "MARK":
                metastack.append(stack)
                stack = []
            elif name == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else pop())
            elif name == "STOP":
                break
            else:  # generic: pop what the opcode consumes, push opaque results
                before = op.stack_before
                if pickletools.markobject in before:
                    pop_mark()
                    before = before[: before.index(pickletools.markobject)]
                for _ in before:
                    pop()
                stack.extend([None] * len(op.stack_after))
    except (ValueError, EOFError, KeyError, IndexError, struct.error) as e:
        raise CheckpointFormatError(f"{source}: malformed pickle ({e})") from e
    return found


# Pickles in a legacy torch.save file: magic number, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5


def _scan_checkpoint(f: IO[bytes], path: Path, fmt: Format) -> set[str]:
    f.seek(0)
    if fmt == "torch-zip":
        with _open_zip(f, path) as zf:
            record = _zip_pickle_record(path, zf)
            return scan_pickle_globals(io.BytesIO(zf.read(record)), f"{path}:{record}")
    found: set[str] = set()
    size = os.fstat(f.fileno()).st_size
    for _ in range(_LEGACY_PICKLES):
        if f.tell() >= size:
            break
        found |= scan_pickle_globals(f, str(path))
    return found
