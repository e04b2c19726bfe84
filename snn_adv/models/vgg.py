"""VGG bodies as in the code of Rathi et al. (ICLR 2020) and Sharmin et al. (ECCV 2020): bias-free 3x3
convolutions and linear layers, ReLU, 2x2 average pooling (spike-friendly, unlike max pooling), dropout.

``cfg`` entries: an int is ``conv3x3(out=int) + ReLU``, ``'A'`` is ``AvgPool2d(2)``, ``'D'`` is ``Dropout``.
The body is one ``nn.Sequential`` (features, Flatten, classifier) so that its spiking twin is a layer-by-layer map.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch.nn as nn

from ..validation import check_fraction, check_positive_int

__all__ = ["VGG_CONFIGS", "he_init", "make_vgg", "vgg5", "vgg11"]

#: VGG5  = conv64-avgpool-conv128-dropout-conv128-avgpool-fc-fc-fc(K)             (hidden 1024)
#: VGG11 = 8 convs, 4 avgpools (as Rathi's VGG11), then fc-fc-fc(K)                 (hidden 4096)
VGG_CONFIGS = {
    "vgg5": ([64, "A", 128, "D", 128, "A"], 1024),
    "vgg11": ([64, "A", 128, "A", 256, "D", 256, "A", 512, "D", 512, "A", 512, "D", 512], 4096),
}


def he_init(module: nn.Module) -> None:
    """He initialisation for the ReLU layers (no biases to initialise)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def make_vgg(
    cfg: Sequence[Union[int, str]],
    hidden: int,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: Union[int, Tuple[int, int]] = 32,
    dropout: float = 0.2,
    fc_dropout: float = 0.5,
) -> nn.Sequential:
    """A VGG body from a layer list; ``input_size`` fixes the flattened width of the first linear layer.

    :param dropout: rate of the ``'D'`` entries between convolutions; ``fc_dropout``: after each hidden fc layer.
    """
    in_channels, num_classes, hidden = (check_positive_int(n, v) for n, v in
                                        (("in_channels", in_channels), ("num_classes", num_classes), ("hidden", hidden)))
    check_fraction("dropout", dropout)
    check_fraction("fc_dropout", fc_dropout)
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    height, width = check_positive_int("input_size", height), check_positive_int("input_size", width)
    layers: List[nn.Module] = []
    channels = in_channels
    for entry in cfg:
        if entry == "A":
            if height < 2 or width < 2:
                raise ValueError(f"argument 'input_size' = {input_size}: too small for {cfg.count('A')} 2x2 poolings")
            layers.append(nn.AvgPool2d(2))
            height, width = height // 2, width // 2
        elif entry == "D":
            layers.append(nn.Dropout(dropout))
        else:
            layers += [nn.Conv2d(channels, int(entry), 3, padding=1, bias=False), nn.ReLU()]
            channels = int(entry)
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, hidden, bias=False), nn.ReLU(), nn.Dropout(fc_dropout),
        nn.Linear(hidden, hidden, bias=False), nn.ReLU(), nn.Dropout(fc_dropout),
        nn.Linear(hidden, num_classes, bias=False),
    ]
    body = nn.Sequential(*layers)
    body.apply(he_init)
    return body


def vgg5(in_channels: int = 3, num_classes: int = 10, input_size: Union[int, Tuple[int, int]] = 32, **kwargs) -> nn.Sequential:
    """VGG5: conv64-avgpool-conv128-dropout-conv128-avgpool-fc1024-fc1024-fc(K)."""
    cfg, hidden = VGG_CONFIGS["vgg5"]
    return make_vgg(cfg, kwargs.pop("hidden", hidden), in_channels, num_classes, input_size, **kwargs)


def vgg11(in_channels: int = 3, num_classes: int = 10, input_size: Union[int, Tuple[int, int]] = 32, **kwargs) -> nn.Sequential:
    """VGG11: conv64-A-conv128-A-conv256-D-conv256-A-conv512-D-conv512-A-conv512-D-conv512-fc4096-fc4096-fc(K)."""
    cfg, hidden = VGG_CONFIGS["vgg11"]
    return make_vgg(cfg, kwargs.pop("hidden", hidden), in_channels, num_classes, input_size, **kwargs)
