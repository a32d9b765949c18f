"""The time-line accounting of benchmarks/step_timeline.py: its rows add up to the profiled span."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from step_timeline import SHORT_GAP_US, Span, account, kind_of  # noqa: E402


def test_kernels_and_gaps_add_up_to_the_span() -> None:
    spans = [
        Span("sm90_xmma_fprop_implicit_gemm_bf16", 0.0, 100.0),
        Span("nvjet_hsh_128x256_gemm", 102.0, 150.0),  # a 2 us hand-over
        Span("triton_per_fused_add_native_layer_norm_3", 200.0, 220.0),  # a 50 us wait for the host
        Span("geglu_tma_persistent", 215.0, 260.0),  # overlaps the previous kernel by 5 us
        Span("partial_moments", 230.0, 240.0),  # entirely inside the previous kernel
    ]
    acc = account(spans, calls=2)
    assert acc.kernels == 5
    assert acc.by_kind["convolutions"] == pytest.approx(0.050)  # 100 us over 2 calls
    assert acc.by_kind["matmuls (cuBLAS)"] == pytest.approx(0.024)
    assert acc.by_kind["GEGLU kernel"] == pytest.approx(0.0225)
    assert acc.overlap == pytest.approx((5.0 + 10.0) * 1e-3 / 2)
    assert acc.short_gaps == pytest.approx(2.0 * 1e-3 / 2)
    assert acc.long_gaps == pytest.approx(50.0 * 1e-3 / 2)
    assert acc.span == pytest.approx(260.0 * 1e-3 / 2)
    assert acc.kernel_time + acc.short_gaps + acc.long_gaps == pytest.approx(acc.span)


def test_rows_end_with_the_span_and_the_unprofiled_time() -> None:
    acc = account([Span("a_gemm", 0.0, 10.0), Span("b_gemm", 10.0 + SHORT_GAP_US + 1, 30.0)], calls=1)
    rows = acc.rows(timed_ms=0.029)
    assert rows[-2][0] == "**span of the profiled calls**" and rows[-2][1] == "**0.030**"
    assert rows[-1] == ["the same calls timed without the profiler", "0.029", ""]
    assert acc.long_gaps == pytest.approx((SHORT_GAP_US + 1) * 1e-3)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("triton_red_fused_native_group_norm_5", "Triton: GroupNorm"),
        ("triton_poi_fused_add_7", "Triton: other fused"),
        ("scale_shift_apply", "GroupNorm kernels"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention (SDPA: cuDNN, PyTorch's flash)"),
        ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention (FlashAttention-3/4)"),
        ("Memset (Device)", "memset / memcpy"),
        ("void at::native::elementwise_kernel", "other"),
    ],
)
def test_kernels_are_grouped_by_kind(name: str, kind: str) -> None:
    assert kind_of(name) == kind


def test_no_calls_is_refused() -> None:
    with pytest.raises(ValueError, match="calls"):
        account([], calls=0)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_profiler_sees_the_kernels_of_a_replayed_graph() -> None:
    import torch
    from step_timeline import profile_calls

    x = torch.randn(1024, 1024, device="cuda")
    graph = torch.cuda.CUDAGraph()
    torch.matmul(x, x)  # cuBLAS's workspace, before the capture
    with torch.cuda.graph(graph):
        y = torch.relu(torch.matmul(x, x))
    timeline = profile_calls(graph.replay, torch.device("cuda"), calls=5)
    acc = timeline.accounting
    assert acc.kernels >= 5 * 2  # the matmul and the relu of every replay
    assert acc.kernel_time + acc.short_gaps + acc.long_gaps == pytest.approx(acc.span)
    assert timeline.timed_ms > 0 and y.shape == x.shape
