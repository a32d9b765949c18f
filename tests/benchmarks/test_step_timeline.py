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
    assert acc.by_kind["convolutions (cuDNN)"] == pytest.approx(0.050)  # 100 us over 2 calls
    assert acc.by_kind["matmuls (cuBLAS)"] == pytest.approx(0.024)
    assert acc.by_kind["GEGLU kernel"] == pytest.approx(0.0225)
    assert acc.overlap == pytest.approx((5.0 + 10.0) * 1e-3 / 2)
    assert acc.short_gaps == pytest.approx(2.0 * 1e-3 / 2)
    assert acc.long_gaps == pytest.approx(50.0 * 1e-3 / 2)
    assert acc.span == pytest.approx(260.0 * 1e-3 / 2)
    assert acc.kernel_time + acc.short_gaps + acc.long_gaps == pytest.approx(acc.span)


def test_kernels_are_listed_by_name_longest_first() -> None:
    spans = [Span("nvjet_a", 0.0, 10.0), Span("geglu_tma_persistent", 10.0, 40.0), Span("nvjet_a", 40.0, 60.0),
             Span("nvjet_a", 60.0, 70.0), Span("geglu_tma_persistent", 70.0, 100.0)]  # fmt: skip
    acc = account(spans, calls=2)
    assert [(n, k) for n, k, _, _ in acc.by_name] == [("geglu_tma_persistent", "GEGLU kernel"),
                                                      ("nvjet_a", "matmuls (cuBLAS)")]  # fmt: skip
    assert acc.by_name[0][2:] == pytest.approx((1.0, 0.030))  # 2 launches, 60 us over 2 calls
    assert acc.by_name[1][2:] == pytest.approx((1.5, 0.020))
    assert sum(ms for *_, ms in acc.by_name) == pytest.approx(sum(acc.by_kind.values()))


def test_rows_end_with_the_span_and_the_unprofiled_time() -> None:
    acc = account([Span("a_gemm", 0.0, 10.0), Span("b_gemm", 10.0 + SHORT_GAP_US + 1, 30.0)], calls=1)
    rows = acc.rows(timed_ms=0.029)
    assert rows[-2][0] == "**span of the profiled calls**" and rows[-2][1] == "**0.030**"
    assert rows[-1] == ["the same calls timed without the profiler", "0.029", ""]
    assert acc.long_gaps == pytest.approx((SHORT_GAP_US + 1) * 1e-3)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("triton_red_fused_add_native_layer_norm_7", "Triton: LayerNorm (+ residual add)"),
        ("triton_per_fused_native_group_norm_5", "Triton: other reductions"),
        (
            "triton_poi_fused_add_clone_convolution_native_group_norm_12",
            "Triton: pointwise (residual adds, concatenations, casts)",
        ),
        (
            "triton_red_fused_add_clone_convolution_geglu_interleaved_native_layer_norm_32",
            "Triton: LayerNorm (+ residual add)",
        ),
        ("geglu_tma_persistent", "GEGLU kernel"),
        ("scale_shift_apply", "GroupNorm kernels"),
        ("group_apply", "GroupNorm kernels"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention (SDPA: cuDNN, PyTorch's flash)"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention (SDPA: cuDNN, PyTorch's flash)"),
        ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention (FlashAttention-3/4)"),
        (
            "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor0000",
            "attention (FlashAttention-3/4)",
        ),
        # cuDNN's convolutions: "execute" must not read as CuTe's attention
        (
            "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_"
            "execute_segment_k_off_kernel__5x_cudnn",
            "convolutions (cuDNN)",
        ),
        (
            "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_128x128_32x5_nhwc_align8>",
            "convolutions (cuDNN)",
        ),
        ("nvjet_sm90_tst_128x160_64x5_1x2_h_bz_coopA_bias_TNT", "matmuls (cuBLAS)"),
        ("Memset (Device)", "memset / memcpy"),
        ("void at::native::elementwise_kernel", "other"),
    ],
)
def test_kernels_are_grouped_by_kind(name: str, kind: str) -> None:
    assert kind_of(name) == kind


def test_samples_are_empty_where_the_gpu_cannot_be_read() -> None:
    import torch
    from step_timeline import sm_clocks

    if torch.cuda.is_available():
        pytest.skip("this GPU can be read")
    with sm_clocks(torch.device("cpu")) as samples:
        pass
    assert samples.clocks == [] and samples.watts == []


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
    assert "The 2 longest kernels:" in timeline.table(largest=2)


def test_table_lists_the_longest_kernels_after_the_accounting() -> None:
    from step_timeline import Samples, Timeline

    long_name = "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90" + "x" * 120
    acc = account([Span(long_name, 0.0, 30.0), Span("nvjet_a", 31.0, 40.0)], calls=1)
    timed = Samples(clocks=[1800, 1830, 1815], watts=[600.0, 700.0, 650.0])
    text = Timeline(acc, timed_ms=0.04, while_timed=timed, while_profiled=Samples()).table(largest=1)
    assert "| **span of the profiled calls** | **0.040** |" in text
    assert "SM clock while timed: 1800-1830 MHz, median 1815 (3 readings)" in text and "while profiled" not in text
    assert "power while timed: median 650 W, max 700 W (about 0.03 J a call)" in text  # 650 W x 0.04 ms
    listing = text.split("The 1 longest kernels:")[1]
    assert f"| {long_name[:97]}... | attention (FlashAttention-3/4) | 1 | 0.030 |" in listing
    assert "nvjet_a" not in listing
