"""Reference CNNs of the conversion and export tests, with random weights and batch-norm statistics."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

MAKERS = {
    "tv_resnet18": lambda: torchvision.models.resnet18(),
    "tv_mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "timm_resnet18": lambda: timm.create_model("resnet18", pretrained=False),
    "timm_resnet26d": lambda: timm.create_model("resnet26d", pretrained=False),  # avg-pool shortcuts
    "timm_lite0": lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False),  # Conv2dSame
    "timm_regnetx_002": lambda: timm.create_model("regnetx_002", pretrained=False),
}


def make(name: str) -> nn.Module:
    """Model ``name`` of :data:`MAKERS` in eval mode, seeded, with non-trivial running statistics (so that
    eval-mode batch norm is not the identity)."""
    torch.manual_seed(0)
    model = MAKERS[name]().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model
