"""CIFAR batches without unpickling: parse torchvision's pickled batches opcode by opcode
(:func:`pickletools.genops`, which executes nothing) and build only plain data and numpy arrays."""

from __future__ import annotations

import pickletools
from typing import Any

import numpy as np

from dr.errors import SourceError

__all__ = ["read_cifar_batch"]


class _Global:
    """A ``GLOBAL`` reference in a CIFAR batch, kept as a name: nothing is imported."""

    def __init__(self, module: str, name: str) -> None:
        if module not in _NP + ("_codecs",) or name not in _NAMES:
            raise SourceError(f"{module}.{name} is not allowed in a CIFAR batch")
        self.module, self.name = module, name


class _Array:
    """numpy's ``_reconstruct`` placeholder until ``BUILD`` gives it shape, dtype and bytes."""

    value: np.ndarray | None = None


_NAMES = ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar", "encode")
_NP = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):  # Python 2 pickles: byte strings read as latin-1 text
        return v.encode("latin1")
    raise SourceError(f"expected bytes, got {type(v).__name__}")


def _reduce(fn: Any, args: tuple[Any, ...]) -> Any:
    if not isinstance(fn, _Global) or fn.module not in _NP + ("_codecs",):
        raise SourceError(f"{getattr(fn, 'module', fn)}.{getattr(fn, 'name', '')} is not allowed in a CIFAR batch")
    if fn.name == "_reconstruct":
        return _Array()
    if fn.name == "dtype":
        return np.dtype(str(args[0]))
    if fn.name == "_frombuffer":  # protocol 5: (buffer, dtype, shape, order)
        return np.frombuffer(_as_bytes(args[0]), dtype=args[1]).reshape(args[2], order=args[3])
    if fn.name == "scalar":
        return np.frombuffer(_as_bytes(args[1]), dtype=args[0])[0]
    if fn.module == "_codecs" and fn.name == "encode":
        return str(args[0]).encode(str(args[1]) if len(args) > 1 else "utf-8")
    raise SourceError(f"{fn.module}.{fn.name} is not allowed in a CIFAR batch")


def read_cifar_batch(data: bytes) -> Any:
    """Read one of CIFAR's pickled batches without unpickling: the opcodes are parsed
    (``pickletools.genops``, which executes nothing) and only what the batches hold is built --
    dicts, lists, tuples, strings, bytes, numbers and numpy arrays of plain dtypes. No import,
    no call: any other global is refused (``SourceError``)."""
    machine = _OpcodeMachine()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "STOP":
            break
        machine.step(op, arg)
    if len(machine.stack) != 1:
        raise SourceError("malformed CIFAR batch")
    return machine.stack[0]


class _OpcodeMachine:
    """The pickle machine's stack, marks and memo, for the opcodes CIFAR batches use."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def pop_mark(self) -> list[Any]:
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def step(self, op: Any, arg: Any) -> None:
        name = op.name
        if name in ("PROTO", "FRAME"):
            return
        if name == "MARK":
            self.marks.append(len(self.stack))
        elif not (self._container(name) or self._memo(name, arg) or self._object(name, arg) or self._scalar(op, arg)):
            raise SourceError(f"pickle opcode {name} is not expected in a CIFAR batch")

    def _container(self, name: str) -> bool:
        stack = self.stack
        if name in ("EMPTY_DICT", "DICT"):
            stack.append({} if name == "EMPTY_DICT" else dict(zip(*[iter(self.pop_mark())] * 2)))
        elif name in ("EMPTY_LIST", "LIST"):
            stack.append([] if name == "EMPTY_LIST" else self.pop_mark())
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            stack[-n:] = [tuple(stack[-n:])]
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif name == "SETITEMS":
            items = self.pop_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "APPEND":
            v = stack.pop()
            stack[-1].append(v)
        elif name == "APPENDS":
            items = self.pop_mark()  # before stack[-1]: the list lies below the mark
            stack[-1].extend(items)
        else:
            return False
        return True

    def _memo(self, name: str, arg: Any) -> bool:
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = self.stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.stack.append(self.memo[int(arg)])
        else:
            return False
        return True

    def _object(self, name: str, arg: Any) -> bool:
        stack = self.stack
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(str(module), str(attr)))
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            stack.append(_reduce(fn, tuple(args)))
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if isinstance(obj, _Array):  # (version, shape, dtype, fortran, raw bytes)
                _, shape, dtype, fortran, raw = state
                obj.value = np.frombuffer(_as_bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C")
                stack[-1] = obj.value
            elif not isinstance(obj, np.dtype):  # a dtype's state (byte order, flags) is implied by its name
                raise SourceError(f"cannot BUILD a {type(obj).__name__} in a CIFAR batch")
        else:
            return False
        return True

    def _scalar(self, op: Any, arg: Any) -> bool:
        name = op.name
        if name in ("NONE", "NEWTRUE", "NEWFALSE"):
            self.stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif op.arg is None and name != "BYTEARRAY8":
            return False
        elif name.startswith(("INT", "BININT", "LONG", "BINFLOAT", "FLOAT", "BINUNICODE", "SHORT_BINUNICODE", "UNICODE")):
            self.stack.append(arg)
        elif name.startswith(("BINBYTES", "SHORT_BINBYTES", "BYTEARRAY8")):
            self.stack.append(bytes(arg))
        elif name.startswith(("BINSTRING", "SHORT_BINSTRING", "STRING")):
            self.stack.append(arg.decode("latin1") if isinstance(arg, bytes) else str(arg))
        else:
            return False
        return True
