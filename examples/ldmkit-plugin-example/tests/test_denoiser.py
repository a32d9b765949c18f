"""The example denoiser passes ldmkit's denoiser conformance checks and renames the original's keys."""

from __future__ import annotations

import torch

from ldmkit.conversions import CompVisContext
from ldmkit.testing import DenoiserConformance
from ldmkit_plugin_example.denoiser import COMPVIS_TARGET, TinyUNet


class TestTinyUNet(DenoiserConformance):
    component_cls = TinyUNet
    params = {"in_channels": 4, "out_channels": 4, "width": 16}


def test_compvis_translation() -> None:
    context = CompVisContext(section="unet_config", target=COMPVIS_TARGET, parameterization="v")
    params = TinyUNet.params_from_compvis({"in_channels": 3, "model_channels": 8}, context)
    assert params == {"in_channels": 3, "out_channels": 3, "width": 8, "prediction": "v"}
    model = TinyUNet.from_params(params)
    original = {
        k.replace("conv_in.", "in_conv.").replace("conv_out.", "out_conv."): v for k, v in model.state_dict().items()
    }
    original = {
        k.replace("time_embed.", "time_proj.").replace("conv_mid.", "mid_conv."): v for k, v in original.items()
    }
    renamed = TinyUNet.state_dict_from_compvis(original, model.params)
    assert renamed.keys() == model.state_dict().keys()
    assert all(torch.equal(renamed[k], v) for k, v in model.state_dict().items())
