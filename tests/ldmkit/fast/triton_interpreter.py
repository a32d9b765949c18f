"""When the CPU tests can run the fast path's Triton kernels in Triton's interpreter."""

from __future__ import annotations

from ldmkit.fast.support import triton_available


def interpreter_unusable_reason() -> str | None:
    """Why Triton's interpreter cannot run the kernels here; None when it can.

    The interpreter turns a program id (a one-element array) into a Python int where a kernel loops
    over ``range`` from it; numpy releases that refuse ``int()`` of a one-element array (2.4 does,
    2.2 does not) make every such kernel fail before it computes anything.
    """
    if not triton_available():
        return "needs Triton (its interpreter runs the kernels on the CPU)"
    import numpy as np

    try:
        int(np.ones(1))
    except TypeError:
        return f"Triton's interpreter converts one-element arrays to ints, which numpy {np.__version__} refuses"
    return None
