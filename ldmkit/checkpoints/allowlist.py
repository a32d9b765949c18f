"""What a pickle checkpoint may reference: torch's tensor types and inert stand-ins.

The stand-ins replace the few non-tensor classes that original CompVis/Lightning checkpoints hold
(Lightning's ``ModelCheckpoint`` callback state, numpy scalars and dtypes). They are given to
``torch.serialization.safe_globals`` only for the duration of one load.
"""

from __future__ import annotations

from typing import Any

_TORCH_STORAGES = [
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble",
]  # fmt: skip
_TORCH_DTYPES = [
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128", "uint8", "int8", "int16",
    "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2",
]  # fmt: skip
_NUMPY_DTYPE_CLASSES = [
    f"{k}DType"
    for k in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
    + ("Float16", "Float32", "Float64", "Complex64", "Complex128")
]
LIGHTNING_MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"

# What torch's weights_only unpickler accepts for plain tensors and parameters.
_TORCH_ALLOWED = frozenset(
    [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.device",
        "_codecs.encode",  # protocol 2 spells bytes this way
    ]
    + [f"torch.{s}Storage" for s in _TORCH_STORAGES]
    + [f"torch.{d}" for d in _TORCH_DTYPES]
)


class LightningCallbackState:
    """Inert stand-in for a pickled Lightning ``ModelCheckpoint``: it only holds the pickled state.

    Attributes of the original object are readable (``cb.best_model_path``); ``cb.state`` is the
    whole pickled state. When a checkpoint uses the class itself as a dict key (as Lightning 1.x
    does for ``callbacks``), the key is this class.
    """

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"LightningCallbackState({self.__dict__.get('state')!r})"


_NUMPY_CODES = frozenset(["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"])


class _NumpyDType:
    """Inert stand-in for ``numpy.dtype`` in pickles: only plain numeric codes are accepted."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True) -> None:
        if code not in _NUMPY_CODES:
            raise ValueError(f"numpy dtype {code!r} is not a plain numeric dtype")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy_dtype(self) -> Any:
        import numpy as np

        order = self.byteorder if self.byteorder in ("<", ">") else "="
        return np.dtype(order + self.code)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Rebuild a numpy scalar from its dtype and raw bytes (replaces ``numpy...multiarray.scalar``)."""
    if not isinstance(dtype, _NumpyDType) or not hasattr(dtype, "code") or not isinstance(data, bytes):
        raise ValueError("numpy scalar with an unsupported dtype or payload")
    import numpy as np

    np_dtype = dtype.numpy_dtype()
    if len(data) != np_dtype.itemsize:
        raise ValueError(f"numpy scalar payload of {len(data)} bytes for dtype {np_dtype}")
    return np.frombuffer(data, dtype=np_dtype)[0]


def _stand_ins() -> list[tuple[Any, str]]:
    """``(object, "module.qualname")`` pairs given to ``torch.serialization.safe_globals``."""
    pairs: list[tuple[Any, str]] = [
        (LightningCallbackState, LIGHTNING_MODEL_CHECKPOINT),
        (_numpy_scalar, "numpy.core.multiarray.scalar"),
        (_numpy_scalar, "numpy._core.multiarray.scalar"),
        (_NumpyDType, "numpy.dtype"),
    ]
    pairs += [(_NumpyDType, f"numpy.dtypes.{name}") for name in _NUMPY_DTYPE_CLASSES]
    return pairs


ALLOWED_GLOBALS = _TORCH_ALLOWED | {name for _, name in _stand_ins()}
