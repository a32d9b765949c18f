"""Pickle opcode scanning: find every global a pickle names without running it, within bounds."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ldmkit.checkpoints.allowlist import ALLOWED_GLOBALS
from ldmkit.checkpoints.detect import Format, _open_zip, _shown, _zip_pickle_record
from ldmkit.checkpoints.limits import PickleLimits
from ldmkit.errors import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["scan_pickle_globals"]


@dataclass(frozen=True)
class _Global:
    name: str


class _Node:
    """A container or object the unpickler would build; only its nesting depth is tracked."""

    __slots__ = ("depth", "parents")

    def __init__(self) -> None:
        self.depth = 1
        self.parents: list[_Node] = []


_STRING_OPS = frozenset(
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
    "BINBYTES SHORT_BINBYTES BINBYTES8".split()
)
_BUILD_FROM_MARK = frozenset(["TUPLE", "LIST", "DICT", "FROZENSET"])
_BUILD_FROM_ITEMS = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_EMPTY = frozenset(["EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"])
_ADD_FROM_MARK = frozenset(["APPENDS", "SETITEMS", "ADDITEMS"])
_MAX_LINE = 65536
_LENGTH_COMPLAINT = re.compile(r"expected \d+ bytes in a \w+, but only \d+ remain")
_SMALL_READ = 4096  # reads up to this size need no check: at worst they come back short


class _Refused(ValueError):
    """A bound of :class:`PickleLimits` or a declared length was exceeded (message is ours)."""


class _BoundedReader:
    """Reads for pickletools that never ask for more than the file holds or the byte limit allows.

    pickletools reads a declared length with ``read(n)``; asking first keeps a 2^62-byte
    declaration from allocating anything. Small reads (every opcode) go straight through.
    """

    def __init__(self, stream: IO[bytes], end: int, max_bytes: int) -> None:
        self._read = stream.read
        self._readline = stream.readline
        self.tell = stream.tell
        self._end = min(end, stream.tell() + max_bytes)
        self._file_end = end
        self._max_bytes = max_bytes

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > _SMALL_READ:
            n = self._check(n)
        return self._read(n)

    def _check(self, n: int | None) -> int:
        pos = self.tell()
        if n is None or n < 0:
            n = self._file_end - pos
        if n > self._file_end - pos:
            left = self._file_end - pos
            raise _Refused(f"a value at byte {pos} declares {n} bytes but only {left} remain in the file")
        if pos + n > self._end:
            raise _Refused(f"the pickle is larger than the {self._max_bytes}-byte limit")
        return n

    def past_limit(self, pos: int) -> bool:
        """Whether reading has gone past the byte limit (checked once per opcode)."""
        return pos > self._end

    def readline(self, limit: int = -1) -> bytes:
        # text opcodes end at a newline; none in a real checkpoint is anywhere near 64 KB
        line = self._readline(_MAX_LINE)
        if len(line) == _MAX_LINE and not line.endswith(b"\n"):
            raise _Refused(f"a text value at byte {self.tell()} is longer than {_MAX_LINE} bytes")
        return line


def _global_name(module: str, name: str) -> str:
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    # The same Python 2 name fix-ups torch's unpickler applies, so we judge what it would resolve.
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Depths:
    """Nesting depth of the simulated objects, kept up to date when a container grows later."""

    def __init__(self, max_depth: int, source: str) -> None:
        self.max_depth = max_depth
        self.source = source

    def new(self, children: list[Any]) -> _Node:
        node = _Node()
        deepest = 0
        for child in children:
            if type(child) is _Node:
                child.parents.append(node)
                deepest = max(deepest, child.depth)
        if deepest:  # a fresh node has no holders yet, so nothing else deepens
            self._deepen(node, deepest + 1)
        return node

    def _deepen(self, node: _Node, depth: int) -> None:
        if depth > self.max_depth:
            raise _Refused(
                f"objects nest more than {self.max_depth} deep (a real checkpoint nests about 10); "
                "raise LDMKIT_MAX_PICKLE_DEPTH only for a file you trust"
            )
        node.depth = depth

    def attach(self, parent: Any, child: Any) -> None:
        if type(child) is not _Node or type(parent) is not _Node:
            return
        child.parents.append(parent)
        if child.depth < parent.depth:
            return  # the common case: nothing deepens
        # A parent is one deeper than its deepest child; pass growth on to every holder (a cycle
        # grows until the limit, as it would overflow any recursive walk of the result).
        work = [(parent, child.depth + 1)]
        while work:
            node, depth = work.pop()
            if depth <= node.depth:
                continue
            self._deepen(node, depth)
            work.extend((p, depth + 1) for p in node.parents)


def scan_pickle_globals(stream: IO[bytes], source: str = "pickle", limits: PickleLimits | None = None) -> set[str]:
    """Walk one pickle's opcodes without running it; return the globals it names.

    Simulates the unpickler's stack just enough to resolve ``STACK_GLOBAL`` operands (string
    pushes and memo lookups) and to measure how deeply the result would nest. Raises
    :class:`UnsafeCheckpointError` for any global outside the allowlist, for calls whose target
    is not a named global, and for extension-registry codes; :class:`CheckpointFormatError` for a
    malformed pickle, a length that the file cannot hold, or a pickle beyond ``limits`` (default:
    :meth:`PickleLimits.from_env`). The stream is left just after STOP.
    """
    limits = limits or PickleLimits.from_env()
    # BytesIO.read(n) returns what is there without reserving n bytes, and its size is known; any
    # other stream (a legacy file) is read through the bounds of _BoundedReader.
    bounded = not isinstance(stream, io.BytesIO)
    if isinstance(stream, io.BytesIO) and len(stream.getbuffer()) - stream.tell() > limits.max_bytes:
        raise CheckpointFormatError(
            f"{source}: refusing to load, the pickle is larger than the {limits.max_bytes}-byte limit"
        )
    reader: Any = _BoundedReader(stream, _stream_end(stream), limits.max_bytes) if bounded else stream
    depths = _Depths(limits.max_depth, source)
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    below = 0  # values in the MARK frames under the current one
    memo: dict[int, Any] = {}
    found: set[str] = set()

    def pop() -> Any:
        if not stack:
            raise CheckpointFormatError(f"{source}: malformed pickle (stack underflow)")
        return stack.pop()

    def pop_mark() -> list[Any]:
        nonlocal stack, below
        if not metastack:
            raise CheckpointFormatError(f"{source}: malformed pickle (no MARK)")
        items, stack = stack, metastack.pop()
        below -= len(stack) + 1
        return items

    def top() -> Any:
        return stack[-1] if stack else pop()

    def record(name: str) -> _Global:
        if name not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, the pickle references {_shown(name, 120)}, which is not on the allowlist "
                "of tensor and checkpoint-metadata types; nothing was executed. If you trust the file, use "
                "ldmkit.checkpoints.load_checkpoint(path, unsafe_allow_pickle=True)"
            )
        found.add(name)
        return _Global(name)

    def callee(what: str, obj: Any) -> None:
        if not isinstance(obj, _Global):
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, {what} targets something other than a named global"
            )

    arg: Any  # its type depends on the opcode
    try:
        for op, arg, pos in pickletools.genops(reader):
            if bounded and reader.past_limit(pos):
                raise _Refused(f"the pickle is larger than the {limits.max_bytes}-byte limit")
            name = op.name
            if name == "PROTO" and not 2 <= arg <= pickle.HIGHEST_PROTOCOL:
                raise CheckpointFormatError(f"{source}: pickle protocol {arg} is not supported")
            if name in ("GLOBAL", "INST"):
                module, sep, qual = str(arg).partition(" ")
                if not sep or " " in qual:
                    raise UnsafeCheckpointError(f"{source}: refusing to load, malformed global name")
                g = record(_global_name(module, qual))
                # pop the MARK frame before naming ``stack``: pop_mark rebinds it
                obj = depths.new(pop_mark()) if name == "INST" else g
                stack.append(obj)
            elif name == "STACK_GLOBAL":
                qual, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(qual, str)):
                    raise UnsafeCheckpointError(f"{source}: refusing to load, STACK_GLOBAL with non-constant names")
                stack.append(record(_global_name(module, qual)))
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeCheckpointError(f"{source}: refusing to load, pickle uses extension-registry code {arg}")
            elif name == "REDUCE":
                args = pop()
                callee("REDUCE", top())
                stack[-1] = depths.new([args])
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                args = [pop(), pop()] if name == "NEWOBJ_EX" else [pop()]
                callee(name, top())
                stack[-1] = depths.new(args)
            elif name == "OBJ":
                items = pop_mark()
                callee("OBJ", items[0] if items else None)
                stack.append(depths.new(items[1:]))
            elif name == "BINPERSID":
                stack.append(depths.new([pop()]))
            elif name in _STRING_OPS:
                stack.append(arg)
            elif name in _EMPTY:
                stack.append(_Node())
            elif name in _BUILD_FROM_MARK:
                built = depths.new(pop_mark())
                stack.append(built)
            elif name in _BUILD_FROM_ITEMS:
                items = [pop() for _ in range(_BUILD_FROM_ITEMS[name])]
                stack.append(depths.new(items))
            elif name in ("APPEND", "BUILD"):
                item = pop()
                depths.attach(top(), item)
            elif name == "SETITEM":
                value, key = pop(), pop()
                depths.attach(top(), key)
                depths.attach(top(), value)
            elif name in _ADD_FROM_MARK:
                items = pop_mark()
                container = top()
                for item in items:
                    depths.attach(container, item)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = top()
                if len(memo) > limits.max_memo:
                    raise _Refused(f"the pickle memoizes more than {limits.max_memo} objects")
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise CheckpointFormatError(f"{source}: malformed pickle (memo key {arg} unset)")
                stack.append(memo[arg])
            elif name == "MARK":
                metastack.append(stack)
                below += len(stack) + 1
                stack = []
            elif name == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif name == "DUP":
                stack.append(top())
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
            if len(stack) + below > limits.max_stack:
                raise _Refused(f"the pickle holds more than {limits.max_stack} values on its stack")
    except _Refused as e:
        raise CheckpointFormatError(f"{source}: refusing to load, {e}") from None
    except (ValueError, EOFError, KeyError, IndexError, struct.error, OverflowError) as e:
        # pickletools' messages can quote the file's bytes; only its length complaints are passed on
        text = str(e)
        reason = text if _LENGTH_COMPLAINT.fullmatch(text) else type(e).__name__
        raise CheckpointFormatError(f"{source}: malformed pickle near byte {reader.tell()} ({reason})") from None
    return found


def _stream_end(stream: IO[bytes]) -> int:
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pos = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(pos)
        return end


# Pickles in a legacy torch.save file: magic number, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5


def _scan_checkpoint(f: IO[bytes], path: Path, fmt: Format, limits: PickleLimits | None = None) -> set[str]:
    limits = limits or PickleLimits.from_env()
    f.seek(0)
    if fmt == "torch-zip":
        with _open_zip(f, path) as zf:
            record = _zip_pickle_record(path, zf)
            declared = zf.getinfo(record).file_size
            if declared > limits.max_bytes:
                raise CheckpointFormatError(
                    f"{path}: refusing to load, its pickle of {declared} bytes is larger than the "
                    f"{limits.max_bytes}-byte limit (raise LDMKIT_MAX_PICKLE_BYTES for a file you trust)"
                )
            return scan_pickle_globals(io.BytesIO(zf.read(record)), f"{path}:{record}", limits)
    found: set[str] = set()
    size = os.fstat(f.fileno()).st_size
    for _ in range(_LEGACY_PICKLES):
        if f.tell() >= size:
            break
        found |= scan_pickle_globals(f, str(path), limits)
    return found
