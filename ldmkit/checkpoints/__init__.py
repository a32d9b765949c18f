"""Safe checkpoint I/O: format detection, pickle scanning, safetensors validation, atomic writes.

Every load path in ldmkit goes through this module. The rules:

* The format is decided by magic bytes, never by the file extension (:func:`detect_format`).
* safetensors headers are validated here before the safetensors library maps the file, so a tiny
  file declaring a huge tensor fails fast instead of allocating.
* Pickle checkpoints (``torch.save`` zip and legacy formats) are scanned opcode by opcode first;
  any global outside a narrow allowlist raises :class:`~ldmkit.errors.UnsafeCheckpointError` and
  nothing runs. Then ``torch.load(..., weights_only=True)`` loads them, with inert stand-ins for
  the few non-tensor classes original CompVis/Lightning checkpoints hold.
* Bounds (nesting depth, stack, memo, declared lengths, tensor shapes) are checked before torch
  sees a file (:mod:`ldmkit.checkpoints.limits`); a weights file linked out of its folder is not
  read (:func:`check_inside`).
* Writes go to a temporary file in the target directory and are renamed into place, so a crash
  never leaves a half-written file.

Loading arbitrary pickles is possible only through the explicit keyword
``load_checkpoint(path, unsafe_allow_pickle=True)`` in Python; no spec, file or environment
variable can turn it on.
"""

from __future__ import annotations

from ldmkit.checkpoints.allowlist import ALLOWED_GLOBALS as ALLOWED_GLOBALS
from ldmkit.checkpoints.allowlist import LIGHTNING_MODEL_CHECKPOINT as LIGHTNING_MODEL_CHECKPOINT
from ldmkit.checkpoints.allowlist import LightningCallbackState
from ldmkit.checkpoints.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from ldmkit.checkpoints.detect import MAX_SAFETENSORS_HEADER as MAX_SAFETENSORS_HEADER
from ldmkit.checkpoints.detect import Format as Format
from ldmkit.checkpoints.detect import PathLike as PathLike
from ldmkit.checkpoints.detect import detect_format
from ldmkit.checkpoints.files import ENV_FOLLOW_LINKS as ENV_FOLLOW_LINKS
from ldmkit.checkpoints.files import check_inside, sha256_of_files
from ldmkit.checkpoints.limits import ENV_MAX_PICKLE_BYTES as ENV_MAX_PICKLE_BYTES
from ldmkit.checkpoints.limits import ENV_MAX_PICKLE_DEPTH as ENV_MAX_PICKLE_DEPTH
from ldmkit.checkpoints.limits import ENV_MAX_PICKLE_MEMO as ENV_MAX_PICKLE_MEMO
from ldmkit.checkpoints.limits import ENV_MAX_PICKLE_STACK as ENV_MAX_PICKLE_STACK
from ldmkit.checkpoints.limits import MAX_PICKLE_BYTES as MAX_PICKLE_BYTES
from ldmkit.checkpoints.limits import MAX_PICKLE_DEPTH as MAX_PICKLE_DEPTH
from ldmkit.checkpoints.limits import MAX_PICKLE_MEMO as MAX_PICKLE_MEMO
from ldmkit.checkpoints.limits import MAX_PICKLE_STACK as MAX_PICKLE_STACK
from ldmkit.checkpoints.limits import PickleLimits
from ldmkit.checkpoints.load import MIN_TORCH_VERSION as MIN_TORCH_VERSION
from ldmkit.checkpoints.load import LoadResult, check_scale_factor, load_checkpoint, load_into, load_state_dict
from ldmkit.checkpoints.pickle_scan import scan_pickle_globals
from ldmkit.checkpoints.safetensors_io import MAX_TENSOR_DIMS as MAX_TENSOR_DIMS
from ldmkit.checkpoints.safetensors_io import safetensors_metadata, save_state_dict

# The constants above are public too (imported with ``as`` so linters keep them); ``__all__``
# lists what ``import *`` brings, as it always did.
__all__ = [
    "LightningCallbackState",
    "LoadResult",
    "PickleLimits",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_inside",
    "check_scale_factor",
    "detect_format",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "safetensors_metadata",
    "save_state_dict",
    "scan_pickle_globals",
    "sha256_of_files",
]
