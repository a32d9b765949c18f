"""The residual blocks' time-embedding projections as one product (ldmkit.fast.time_projections)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from ldmkit import Conditioning, InputError
from ldmkit.fast import FastConfig
from ldmkit.fast import time_projections as tp
from ldmkit.registry import get_registry
from ldmkit_unet.resblocks import ResBlock
from tests.tiny import tiny_unet_params

C_COMPILER = shutil.which("cc") or shutil.which("gcc")
MATMULS = (torch.ops.aten.addmm.default, torch.ops.aten.mm.default)


def _unet(num_classes: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    params = tiny_unet_params(channels=4, attention_resolutions=[2], num_heads=2, context_dim=16, legacy=False)
    if num_classes is not None:
        params["num_classes"] = num_classes
    unet = get_registry().create("denoiser", "unet", params).eval()
    for m in unet.modules():  # zero-initialised layers would hide a wrong block output
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return unet


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    torch.manual_seed(1)
    x = torch.randn(batch, 4, 8, 8)  # (B, C, h, w)
    t = torch.tensor([700, 30][:batch])
    return x, t, Conditioning(crossattn=torch.randn(batch, 5, 16))


def test_blocks_get_slices_of_one_projection_and_compute_the_same():
    unet = _unet()
    blocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    shared = tp.with_shared_time_projections(unet)
    slices = [m for m in shared.modules() if isinstance(m, tp.TimeProjectionSlice)]
    assert len(slices) == len(blocks) > 1
    assert len({id(s.shared) for s in slices}) == 1  # one product for all (same input width)
    widths = [b.emb_layers[1].out_features for b in blocks]
    assert [s.stop - s.start for s in slices] == widths and slices[-1].stop == sum(widths)
    assert all(isinstance(b.emb_layers, torch.nn.Sequential) for b in blocks)  # the original is untouched
    x, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(shared(x, t, cond), unet(x, t, cond), rtol=1e-5, atol=1e-6)
        emb = torch.randn(2, blocks[0].emb_layers[1].in_features)
        for block, piece in zip(blocks, slices, strict=True):  # each slice is its block's own projection
            torch.testing.assert_close(piece(emb), block.emb_layers(emb), rtol=1e-5, atol=1e-6)


def test_class_conditional_unet_keeps_its_label_embedding():
    unet = _unet(num_classes=3)
    shared = tp.with_shared_time_projections(unet)
    x, t, _ = _inputs()
    cond = Conditioning(crossattn=torch.randn(2, 5, 16), vector=torch.tensor([0, 2]))
    with torch.no_grad():
        torch.testing.assert_close(shared(x, t, cond), unet(x, t, cond), rtol=1e-5, atol=1e-6)


def _count(graph: torch.fx.Graph, targets: tuple) -> int:
    return sum(n.op == "call_function" and n.target in targets for n in graph.nodes)


def test_merge_computes_a_repeated_product_once():
    w, b = torch.randn(6, 4), torch.randn(6)

    def f(e):  # two blocks' slices of the same projection of the same input
        return F.linear(F.silu(e), w, b)[:, :2].sum() + F.linear(F.silu(e), w, b)[:, 2:].sum()

    e = torch.randn(3, 4)
    gm = make_fx(f)(e)
    assert _count(gm.graph, MATMULS) == 2
    assert tp.merge_identical_ops(gm.graph) > 0
    gm.recompile()
    assert _count(gm.graph, MATMULS) == 1 and _count(gm.graph, (torch.ops.aten.silu.default,)) == 1
    torch.testing.assert_close(gm(e), f(e))


def test_merge_leaves_random_ops_outputs_and_mutating_graphs_alone():
    def noise(e):  # two draws are two different values
        return torch.rand_like(e) + torch.rand_like(e)

    gm = make_fx(noise)(torch.randn(3))
    assert tp.merge_identical_ops(gm.graph) == 0

    def two_outputs(e):  # returned values stay distinct tensors
        return e.sin(), e.sin()

    gm = make_fx(two_outputs)(torch.randn(3))
    tp.merge_identical_ops(gm.graph)
    gm.recompile()
    a, b = gm(torch.randn(3))
    assert a.data_ptr() != b.data_ptr()

    def two_views(e):  # views of the same value still become two storages
        return e.sin().view(3, 1), e.sin().view(3, 1)

    gm = make_fx(two_views)(torch.randn(3))
    tp.merge_identical_ops(gm.graph)
    gm.recompile()
    a, b = gm(torch.randn(3))
    assert a.data_ptr() != b.data_ptr()

    def mutating(e):  # a read after a mutation is another value than the one before it
        before = e.cos()
        e.add_(1)
        return before + e.cos()

    gm = make_fx(mutating)(torch.randn(3))
    assert tp.merge_identical_ops(gm.graph) == 0


def test_merge_setting_needs_compile_and_follows_it():
    cpu = torch.device("cpu")
    assert FastConfig().resolve(cpu).merge_time_projections is False  # the CPU default does not compile
    assert FastConfig(compile=True).resolve(cpu).merge_time_projections is True
    assert FastConfig(compile=True, merge_time_projections=False).resolve(cpu).merge_time_projections is False
    with pytest.raises(InputError, match="merge_time_projections=True needs compile=True"):
        FastConfig(merge_time_projections=True).resolve(cpu)
    with pytest.raises(InputError, match="merge_time_projections must be True, False or None"):
        FastConfig(merge_time_projections=1)  # type: ignore[arg-type]


def compiled_matmul_merges(monkeypatch, unet: torch.nn.Module, settings) -> tuple[int, int]:
    """Matmuls before and after the merge pass in the last graph the fast path compiled for ``unet`` with
    ``settings``, whose output is checked against the module's own."""
    from ldmkit.fast.modules import FastDenoiser

    seen: list[tuple[int, int]] = []
    merge = tp.merge_identical_ops

    def counting(graph):
        before = _count(graph, MATMULS)
        merged = merge(graph)
        seen.append((before, _count(graph, MATMULS)))
        return merged

    monkeypatch.setattr(tp, "merge_identical_ops", counting)
    fast = FastDenoiser(unet, settings)
    x, t, cond = _inputs()
    # the pass runs only on a real compile, not on a cache hit; the config's own patch restores it (pytest's
    # monkeypatch deletes attributes that are not in a module's __dict__ when it undoes, since pytest 9.2)
    import torch._inductor.config as inductor_config

    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        out = fast._net(x, t, cond.crossattn, None, None)
        ref = unet(x, t, cond)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert seen, "the pass did not run"
    return seen[-1]


@pytest.mark.slow
@pytest.mark.skipif(not C_COMPILER, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_denoiser_computes_the_shared_projection_once(monkeypatch):
    """Through the fast path's compile: the pass sees one product per block and leaves one in all."""
    unet = _unet()
    blocks = sum(isinstance(m, ResBlock) for m in unet.modules())
    settings = FastConfig(precision="fp32", compile=True).resolve(torch.device("cpu"))
    before, after = compiled_matmul_merges(monkeypatch, unet, settings)
    assert before - after >= blocks - 1  # the blocks' products became one
