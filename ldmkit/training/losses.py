"""Losses of first-stage training: patch-GAN discriminator, hinge loss, adaptive weight, perceptual distance.

State-dict names follow the reference (``main.N`` in the discriminator; ``net.sliceK.N``, ``linK.model.1``
and ``scaling_layer`` in the perceptual metric) so converted reference weights load unchanged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.errors import CheckpointError


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix): strided 4x4 convs, BatchNorm, LeakyReLU(0.2); one logit per patch."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=False),  # BatchNorm has the bias
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)  # (B, 1, h', w')


def _init_weights(module: nn.Module) -> None:
    # N(0, 0.02) convs and N(1, 0.02) BatchNorm scales, as the reference initializes the discriminator
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def disc_factor_at(factor: float, step: int, start: int) -> float:
    """The GAN factor: 0 before ``start``, ``factor`` from then on."""
    return factor if step >= start else 0.0


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """||grad nll|| / (||grad g|| + 1e-4) at the decoder's last layer, clamped to [0, 1e4], times ``disc_weight``."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


# -- perceptual distance (LPIPS-style) ------------------------------------------------------------------

_CONV_KEY = re.compile(r"^net\.slice(\d+)\.(\d+)\.weight$")


class ScalingLayer(nn.Module):
    """Shift and scale [-1, 1] images to the statistics the feature net was trained on."""

    shift: Tensor  # buffers
    scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Per-channel weights (a bias-free 1x1 conv) of one feature level."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class FeatureNet(nn.Module):
    """A VGG-like stack: ``sliceK`` = [max-pool (K > 1)] + (conv, ReLU) * n; one feature map per slice."""

    def __init__(self, slices: list[list[tuple[int, int, int, int]]]) -> None:
        """``slices[k]`` lists (module index, in channels, out channels, kernel) of each conv of slice k+1."""
        super().__init__()
        self.num_slices = len(slices)
        for k, convs in enumerate(slices, start=1):
            seq = nn.Sequential()
            if k > 1:
                seq.add_module(str(convs[0][0] - 1), nn.MaxPool2d(2, 2))
            for index, c_in, c_out, kernel in convs:
                seq.add_module(str(index), nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))
                seq.add_module(str(index + 1), nn.ReLU(inplace=False))
            setattr(self, f"slice{k}", seq)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for k in range(1, self.num_slices + 1):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)  # (B, C_k, H_k, W_k)
        return feats


class PerceptualLoss(nn.Module):
    """Learned perceptual distance: unit-normalized features, squared differences, learned channel weights,
    spatial mean, summed over levels. Frozen; its structure is read from the weights file."""

    def __init__(self, slices: list[list[tuple[int, int, int, int]]]) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = FeatureNet(slices)
        self.chns = [convs[-1][2] for convs in slices]
        for k, channels in enumerate(self.chns):
            setattr(self, f"lin{k}", NetLinLayer(channels))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> PerceptualLoss:
        """Build the net that the safetensors file ``path`` describes and load it strictly."""
        from ldmkit.checkpoints import load_state_dict

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"perceptual_weights: {path}: no such file")
        try:  # the core's loader checks the header (shapes, offsets), links and finiteness first
            state = load_state_dict(path)
        except CheckpointError as exc:
            raise CheckpointError(f"perceptual_weights: {exc}") from None
        model = cls(_slices_from_state(state, path))
        result = model.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - {"scaling_layer.shift", "scaling_layer.scale"}
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"perceptual_weights: {path}: missing {sorted(missing)[:4]}, unexpected {result.unexpected_keys[:4]}"
            )
        return model

    def forward(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        """(B, 3, H, W) x 2 -> (B, 1, 1, 1) distances."""
        feats0 = self.net(self.scaling_layer(images))
        feats1 = self.net(self.scaling_layer(reconstructions))
        total = None
        for k, (a, b) in enumerate(zip(feats0, feats1, strict=True)):
            diff = (_unit(a) - _unit(b)) ** 2  # (B, C_k, H_k, W_k)
            level = getattr(self, f"lin{k}").model(diff).mean(dim=[2, 3], keepdim=True)  # (B, 1, 1, 1)
            total = level if total is None else total + level
        assert total is not None
        return total


def _unit(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def _slices_from_state(state: dict[str, Tensor], path: Path) -> list[list[tuple[int, int, int, int]]]:
    convs: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for key, value in state.items():
        match = _CONV_KEY.match(key)
        if match and value.dim() == 4:
            c_out, c_in, kernel, _ = value.shape
            convs[int(match.group(1))].append((int(match.group(2)), c_in, c_out, kernel))
    if not convs or sorted(convs) != list(range(1, len(convs) + 1)):
        raise CheckpointError(f"perceptual_weights: {path}: no 'net.sliceK.N.weight' convolutions for K = 1, 2, ...")
    slices = [sorted(convs[k]) for k in sorted(convs)]
    expected = 0
    for k, items in enumerate(slices, start=1):
        expected += 1 if k > 1 else 0  # the max-pool opening every later slice
        for index, *_ in items:
            if index != expected:
                raise CheckpointError(
                    f"perceptual_weights: {path}: slice{k} has a conv at {index}, expected one at {expected} "
                    "(a VGG-like layout: pool, then conv/ReLU pairs)"
                )
            expected += 2
    return slices
