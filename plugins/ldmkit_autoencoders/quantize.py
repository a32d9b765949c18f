"""Nearest-neighbour vector quantization with a straight-through gradient (VQ-VAE / VQGAN codebook).

The module keeps the reference names: ``embedding`` (the codebook, n_embed x embed_dim) and, when
only a subset of codes is in use, the buffer ``used`` that maps remapped indices to codebook rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldmkit.errors import InputError


class VectorQuantizer(nn.Module):
    """Replaces each latent vector by its nearest codebook entry.

    ``legacy=True`` reproduces the reference loss, where ``beta`` weights the codebook term
    instead of the commitment term; ``legacy=False`` puts it on the commitment term.
    """

    used: Tensor  # buffer (U,): the codebook rows in use, registered only with ``remap``

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        beta: float = 0.25,
        remap: list[int] | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
    ) -> None:
        super().__init__()
        self.n_e = n_embed
        self.e_dim = embed_dim
        self.beta = beta
        self.legacy = legacy
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        self.remap = remap is not None
        self.unknown_index: str | int = unknown_index
        if remap is not None:
            self.register_buffer("used", torch.tensor(remap, dtype=torch.long))
            self.re_embed = len(remap)
            if unknown_index == "extra":
                # codes outside ``used`` get one extra index past the used ones
                self.unknown_index = self.re_embed
                self.re_embed += 1
        else:
            self.re_embed = n_embed

    # -- index remapping ------------------------------------------------------------------------
    def remap_to_used(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Codebook rows (B, ...) -> positions in ``used``; unused rows get ``unknown_index``."""
        shape = indices.shape
        flat = indices.reshape(shape[0], -1)  # (B, N)
        used = self.used.to(flat)
        match = flat[:, :, None] == used[None, None, :]  # (B, N, U)
        out = match.long().argmax(-1)  # (B, N)
        unknown = ~match.any(-1)  # (B, N)
        if self.unknown_index == "random":
            device = generator.device if generator is not None else out.device
            n = int(unknown.sum())
            out[unknown] = torch.randint(0, self.re_embed, (n,), generator=generator, device=device).to(out.device)
        else:
            out[unknown] = int(self.unknown_index)
        return out.reshape(shape)

    def unmap_to_all(self, indices: Tensor) -> Tensor:
        """Positions in ``used`` (B, ...) -> codebook rows; the extra 'unknown' index maps to ``used[0]``."""
        shape = indices.shape
        flat = indices.reshape(shape[0], -1).clone()  # (B, N); cloned: the caller's tensor stays intact
        if self.re_embed > self.used.shape[0]:
            flat[flat >= self.used.shape[0]] = 0
        return self.used.to(flat.device)[flat].reshape(shape)

    # -- quantization ---------------------------------------------------------------------------
    def _nearest(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, C, h, w) -> (z (B, h, w, C), nearest codes (B, h, w, C), codebook rows (N,))."""
        if z.ndim != 4 or z.shape[1] != self.e_dim:
            raise InputError(f"quantizer expects latents (B, {self.e_dim}, h, w), got {tuple(z.shape)}")
        z = z.permute(0, 2, 3, 1).contiguous()  # (B, h, w, C)
        z_flat = z.view(-1, self.e_dim)  # (N, C)
        codebook = self.embedding.weight  # (n_embed, C)
        # squared distances expanded as |z|^2 + |e|^2 - 2 z.e, as the reference computes them
        dist = (
            torch.sum(z_flat**2, dim=1, keepdim=True)
            + torch.sum(codebook**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", z_flat, codebook.t())
        )  # (N, n_embed)
        indices = torch.argmin(dist, dim=1)  # (N,)
        return z, self.embedding(indices).view(z.shape), indices

    @staticmethod
    def _straight_through(z: Tensor, z_q: Tensor) -> Tensor:
        """Forward value z_q, gradient of z; (B, h, w, C) -> (B, C, h, w)."""
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous()

    def snap(self, z: Tensor) -> Tensor:
        """Only the quantized latents (B, C, h, w): no loss, no index remapping (so no random draws)."""
        z, z_q, _ = self._nearest(z)
        return self._straight_through(z, z_q)

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, C, h, w) -> (quantized (B, C, h, w), codebook loss (), indices).

        Indices are (B*h*w,) or, with ``sane_index_shape``, (B, h, w); with a remap they index
        ``used``. ``generator`` draws the replacement of unknown codes when ``unknown_index='random'``.
        """
        z, z_q, indices = self._nearest(z)
        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        commitment_term = torch.mean((z_q.detach() - z) ** 2)
        if self.legacy:
            loss = commitment_term + self.beta * codebook_term
        else:
            loss = self.beta * commitment_term + codebook_term
        quant = self._straight_through(z, z_q)  # (B, C, h, w)
        if self.remap:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1), generator).reshape(-1)
        if self.sane_index_shape:
            indices = indices.reshape(z.shape[0], z.shape[1], z.shape[2])  # (B, h, w)
        return quant, loss, indices

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, int, int, int] | None = None) -> Tensor:
        """Indices -> codebook vectors: (N, C), or (B, C, h, w) when ``shape`` = (B, h, w, C) is given."""
        limit = self.re_embed if self.remap else self.n_e
        if bool(((indices < 0) | (indices >= limit)).any()):
            raise InputError(f"code indices must lie in [0, {limit}), got values outside that range")
        if self.remap:
            batch = shape[0] if shape is not None else 1
            indices = self.unmap_to_all(indices.reshape(batch, -1))
        indices = indices.reshape(-1)
        z_q = self.embedding(indices)  # (N, C)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
        return z_q
