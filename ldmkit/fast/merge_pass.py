""":func:`ldmkit.fast.time_projections.merge_identical_ops` as an inductor post-grad pass.

A module of its own because the base class comes with the compiler (about a second to import):
only compiling code imports it.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from ldmkit.fast import time_projections

__all__ = ["MergeIdenticalOps"]

log = logging.getLogger(__name__)


class MergeIdenticalOps(CustomGraphPass):
    """Merges repeated pure operations of a traced graph (``post_grad_custom_pre_pass``)."""

    def __call__(self, graph: fx.Graph) -> None:
        merged = time_projections.merge_identical_ops(graph)
        if merged:
            log.debug("merged %d repeated operations", merged)

    def uuid(self) -> Any:
        # the compiler's cache key: a change to the pass's code compiles again
        return get_hash_for_files((__file__, time_projections.__file__))
