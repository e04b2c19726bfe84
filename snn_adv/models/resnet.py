"""ResNet20 as in Rathi et al.'s hybrid-conversion code: no batch norm (it does not convert to IF neurons), bias-free
convolutions, average pooling, dropout; 3 pre-processing convs + 4 stages x 2 basic blocks x 2 convs + 1 fc = 20.

A :class:`BasicBlock` computes ``act(residual(x) + shortcut(x))``. Its spiking twin is the same class with the
ReLU ``act`` swapped for a spiking neuron (see :func:`snn_adv.models.spiking_twin`): the junction neuron integrates
the *sum of the currents* of both paths, the residual path's inner ReLU becomes a neuron too, and the shortcut (a
1x1 convolution when the shape changes, else the identity) carries the block's input spikes. This is the
residual adaptation of Sengupta et al. (2019) and Rathi et al. (2020); threshold balancing then sets one threshold
per neuron layer, the junction included.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn as nn

from ..validation import check_fraction, check_positive_int
from .vgg import he_init

__all__ = ["BasicBlock", "resnet20"]


class BasicBlock(nn.Module):
    """``act(residual(x) + shortcut(x))``; works unchanged on ``[N, ...]`` (ANN) and ``[T, N, ...]`` (twin)."""

    def __init__(self, residual: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.residual, self.shortcut, self.act = residual, shortcut, act

    @classmethod
    def make(cls, in_planes: int, planes: int, stride: int, dropout: float) -> "BasicBlock":
        residual = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
        )
        shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
                    if stride != 1 or in_planes != planes else nn.Identity())
        return cls(residual, shortcut, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


def resnet20(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: Union[int, Tuple[int, int]] = 32,
    dropout: float = 0.2,
    width: int = 64,
) -> nn.Sequential:
    """ResNet20: conv(w)-conv(w)-conv(w)-avgpool, stages of 2 blocks with 2w, 4w, 8w, 8w channels (strides 1, 2,
    2, 2), flatten, fc(K). ``width = 64`` is the paper's network."""
    in_channels, num_classes, width = (check_positive_int(n, v) for n, v in
                                       (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)))
    check_fraction("dropout", dropout)
    height, wid = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if min(height, wid) < 16:
        raise ValueError(f"argument 'input_size' = {input_size}: ResNet20 needs at least 16x16 inputs")
    layers: List[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.ReLU(), nn.Dropout(dropout),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(), nn.Dropout(dropout),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
    ]
    height, wid = height // 2, wid // 2
    planes_in = width
    for planes, stride in ((2 * width, 1), (4 * width, 2), (8 * width, 2), (8 * width, 2)):
        for block in range(2):
            layers.append(BasicBlock.make(planes_in, planes, stride if block == 0 else 1, dropout))
            planes_in = planes
        if stride == 2:  # 3x3 conv, padding 1, stride 2
            height, wid = (height - 1) // 2 + 1, (wid - 1) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(planes_in * height * wid, num_classes, bias=False)]
    body = nn.Sequential(*layers)
    body.apply(he_init)
    return body
