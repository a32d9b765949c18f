"""The latent diffusion UNet (CompVis ``UNetModel``) as an ldmkit denoiser.

Submodule names and Sequential indexes follow the original, so a CompVis state dict loads
unchanged once the ``model.diffusion_model.`` prefix is stripped.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

import ldmkit
from ldmkit import Conditioning
from ldmkit.errors import InputError
from ldmkit_unet.attention import AttentionBlock
from ldmkit_unet.compvis import UNetCompVis
from ldmkit_unet.diffusers import UNetDiffusers
from ldmkit_unet.embeddings import timestep_embedding
from ldmkit_unet.layers import (
    TimestepEmbedSequential,
    concat_channels,
    normalization,
    repeat_rows,
    zero_module,
)
from ldmkit_unet.params import UNetParams, attention_heads
from ldmkit_unet.resblocks import Downsample, ResBlock, Upsample
from ldmkit_unet.transformer import SpatialTransformer

log = logging.getLogger(__name__)


class UNet(UNetCompVis, UNetDiffusers, ldmkit.Denoiser):
    """Time- and context-conditioned UNet of Rombach et al. (2022) predicting eps, x0 or v.

    Conditioning: ``cond.concat`` (B, C_c, h, w) is concatenated to ``x_t`` (``in_channels`` counts
    both), ``cond.crossattn`` (B, L, context_dim) feeds the spatial transformers, ``cond.vector``
    (B,) holds class ids for ``label_emb`` when ``num_classes`` is set.
    """

    name = "unet"
    example_params = {
        "image_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [2],
        "num_head_channels": 16,
        "use_spatial_transformer": True,
        "context_dim": 8,
    }
    Params = UNetParams
    params: UNetParams

    def example_inputs(self, batch: int) -> tuple[Tensor, Tensor, Conditioning]:
        p = self.params
        g = torch.Generator().manual_seed(11)
        x = torch.randn(batch, p.in_channels, p.image_size, p.image_size, generator=g)  # (B, C, h, w)
        t = torch.linspace(1, 999, batch).long()  # (B,) distinct, so mixed-up samples show
        context = torch.randn(batch, 3, p.context_dim, generator=g) if p.context_dim else None  # (B, L, D)
        labels = torch.arange(batch) % p.num_classes if p.num_classes else None  # (B,)
        return x, t, Conditioning(crossattn=context, vector=labels)

    def __init__(self, params: UNetParams) -> None:
        super().__init__(params)
        p = params
        self.prediction = p.prediction
        self.in_channels = p.in_channels
        self.out_channels = p.out_channels
        self.model_channels = p.model_channels
        self.num_classes = p.num_classes
        self.context_dim = p.context_dim
        self.size_multiple = 2 ** (len(p.channel_mult) - 1)  # each level but the last halves the latent
        if p.use_checkpoint or p.use_fp16:
            log.debug("use_checkpoint/use_fp16 are accepted for config compatibility and ignored")

        time_embed_dim = p.model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(p.model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        if p.num_classes is not None:
            self.label_emb = nn.Embedding(p.num_classes, time_embed_dim)

        def res(ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                ch_in,
                time_embed_dim,
                p.dropout,
                out_channels=ch_out,
                use_scale_shift_norm=p.use_scale_shift_norm,
                up=up,
                down=down,
            )

        def attn(ch: int, upsample: bool = False) -> nn.Module:
            heads, dim_head = attention_heads(p, ch, upsample)
            if p.use_spatial_transformer:
                return SpatialTransformer(ch, heads, dim_head, depth=p.transformer_depth, context_dim=p.context_dim)
            return AttentionBlock(ch, heads, use_new_attention_order=p.use_new_attention_order)

        attention_at = set(p.attention_resolutions)
        last_level = len(p.channel_mult) - 1

        # Encoder: a stem convolution, then per level num_res_blocks blocks and a downsampler.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(p.in_channels, p.model_channels, 3, padding=1))]
        )
        skip_widths = [p.model_channels]  # width of every encoder output, consumed by the decoder
        ch, ds = p.model_channels, 1
        for level, mult in enumerate(p.channel_mult):
            for _ in range(p.num_res_blocks):
                layers: list[nn.Module] = [res(ch, p.model_channels * mult)]
                ch = p.model_channels * mult
                if ds in attention_at:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_widths.append(ch)
            if level != last_level:
                down = res(ch, ch, down=True) if p.resblock_updown else Downsample(ch, p.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_widths.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        # Decoder: per level num_res_blocks + 1 blocks, each eating one skip connection.
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(p.channel_mult))):
            for i in range(p.num_res_blocks + 1):
                layers = [res(ch + skip_widths.pop(), p.model_channels * mult)]
                ch = p.model_channels * mult
                if ds in attention_at:
                    layers.append(attn(ch, upsample=True))
                if level and i == p.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if p.resblock_updown else Upsample(ch, p.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        # The original builds the final convolution from model_channels; ch equals it whenever
        # channel_mult[0] == 1, and using ch keeps other first multipliers runnable.
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, p.out_channels, 3, padding=1)),
        )
        self._downsample = 2**last_level

    def forward(self, x_t: Tensor, t: Tensor, cond: ldmkit.Conditioning) -> Tensor:
        """x_t (B, C, h, w), t (B,) timesteps, cond -> (B, out_channels, h, w)."""
        x, context, y = self._inputs(x_t, cond, x_t.shape[0])
        return self._run(x, self._timesteps(t, x.shape[0]), context, y)

    def forward_guided(self, x_t: Tensor, t: Tensor, both: ldmkit.Conditioning) -> Tensor:
        """x_t (B, C, h, w), t (B,), ``both`` with 2B rows [uncond; cond] -> (2B, out_channels, h, w).

        The two halves see the same x_t and t, so when they differ only in cross-attention context
        (no class ids, and a concat of B rows that they share) they agree until the first
        cross-attention: that prefix (the stem, the first residual block, the first
        self-attention) runs once on B rows instead of 2B.
        """
        shared_concat = both.concat is None or both.concat.shape[0] == x_t.shape[0]
        if not shared_concat or both.vector is not None or both.crossattn is None:
            return super().forward_guided(x_t, t, both)
        x, context, _ = self._inputs(x_t, both, 2 * x_t.shape[0])
        t = self._timesteps(t, x.shape[0])
        return self._run(x, torch.cat([t, t]), context, None)

    def _run(self, x: Tensor, t: Tensor, context: Tensor | None, y: Tensor | None) -> Tensor:
        """The network on checked inputs: x (B, C, h, w), t (R,) with R = B, or R = k * B when k
        context rows share each row of x (blocks before the first cross-attention then run on B rows).
        """
        # the stem's dtype, not the time embedding's: the fast path may swap linears for fp8 ones without a weight
        dtype = next(self.input_blocks[0].parameters()).dtype  # the stem convolution's weight
        t_emb = timestep_embedding(t, self.model_channels).to(dtype)  # (R, mc)
        emb = self.time_embed(t_emb)  # (R, 4 * mc)
        if y is not None:
            emb = emb + self.label_emb(y)  # (R, 4 * mc)

        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)  # (B or R, C, h', w')
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = concat_channels(h, repeat_rows(skips.pop(), h.shape[0]))  # (B or R, C + C_skip, h', w')
            h = module(h, emb, context)
        return repeat_rows(self.out(h), emb.shape[0])  # (R, out_channels, h, w)

    # -- input checks --------------------------------------------------------------------------
    def _inputs(
        self, x_t: Tensor, cond: ldmkit.Conditioning, batch: int
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The network input, context and class ids from ``cond`` (``batch`` rows); InputError on a mismatch."""
        if x_t.dim() != 4:
            raise InputError(f"x_t must be (B, C, h, w), got shape {tuple(x_t.shape)}")
        _, _, height, width = x_t.shape
        if height % self._downsample or width % self._downsample:
            raise InputError(
                f"spatial size {height}x{width} is not divisible by {self._downsample}, "
                "the UNet's total downsampling factor"
            )
        x = x_t
        if cond.concat is not None:
            rows = x_t.shape[0]  # concat joins x_t, row by row
            if cond.concat.dim() != 4 or cond.concat.shape[0] != rows or cond.concat.shape[2:] != x_t.shape[2:]:
                raise InputError(
                    f"cond.concat must be (B={rows}, C, {height}, {width}), got shape {tuple(cond.concat.shape)}"
                )
            x = torch.cat([x_t, cond.concat], dim=1)  # (B, C + C_concat, h, w)
        if x.shape[1] != self.in_channels:
            concat = 0 if cond.concat is None else cond.concat.shape[1]
            missing = " (is cond.concat missing?)" if cond.concat is None and x.shape[1] < self.in_channels else ""
            raise InputError(
                f"the UNet takes {self.in_channels} input channels but got {x_t.shape[1]} latent "
                f"+ {concat} concat channels{missing}"
            )

        context = cond.crossattn
        if self.context_dim is not None:
            if context is None:
                raise InputError(
                    f"this UNet uses cross-attention and needs cond.crossattn (B, L, {self.context_dim}); it is missing"
                )
            if context.dim() != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
                raise InputError(
                    f"cond.crossattn must be (B={batch}, L, {self.context_dim}), got shape {tuple(context.shape)}"
                )
        elif context is not None:
            raise InputError("cond.crossattn was given but this UNet has no cross-attention (context_dim is unset)")

        y = cond.vector
        if self.num_classes is not None:
            if y is None:
                raise InputError("this UNet is class-conditional and needs cond.vector (B,) class ids; it is missing")
            if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype.is_complex:
                got = f"{y.dtype} {tuple(y.shape)}"
                raise InputError(f"cond.vector must hold (B={batch},) integer class ids, got {got}")
            # the range check reads values on the host: skipped while a CUDA graph is captured (it would sync)
            capturing = y.is_cuda and torch.cuda.is_current_stream_capturing()
            if y.numel() and not capturing and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise InputError(f"class ids must lie in [0, {self.num_classes}), got {y.tolist()}")
        elif y is not None:
            raise InputError("cond.vector was given but this UNet is not class-conditional (num_classes is unset)")
        return x, context, y

    @staticmethod
    def _timesteps(t: Tensor | int | float, batch: int) -> Tensor:
        """Broadcast a scalar timestep to (B,); check a vector's length."""
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise InputError(f"t must be a scalar or hold one timestep per sample (B={batch},), got {tuple(t.shape)}")
        return t
