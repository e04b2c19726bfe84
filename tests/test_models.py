"""snn_adv.models: the paper's layer layouts, and the spiking twin against a hand-written per-timestep simulation."""

import pytest
import torch
import torch.nn as nn

from snn_adv.classifier import AnnClassifier, SpikingClassifier
from snn_adv.encoding import DirectEncoder
from snn_adv.models import (BasicBlock, build_classifier, get_thresholds, resnet20, set_thresholds, spiking_twin,
                            vgg5, vgg11, vgg_tiny)
from snn_adv.neurons import LeakyLIFNode


def layout(body: nn.Module):
    """Compact description of a VGG body: 'c64', 'a', 'd', 'f1024'... (ReLU and Flatten left out)."""
    out = []
    for m in body:
        if isinstance(m, nn.Conv2d):
            out.append(f"c{m.out_channels}")
        elif isinstance(m, nn.AvgPool2d):
            out.append("a")
        elif isinstance(m, nn.Dropout) and m.p > 0:
            out.append("d")
        elif isinstance(m, nn.Linear):
            out.append(f"f{m.out_features}")
    return out


def test_vgg5_is_the_papers_network():
    body = vgg5()
    assert layout(body) == ["c64", "a", "c128", "d", "c128", "a", "f1024", "d", "f1024", "d", "f10"]
    assert body[-1].in_features == 1024 and [m for m in body if isinstance(m, nn.Linear)][0].in_features == 128 * 8 * 8
    assert all(not isinstance(m, (nn.MaxPool2d, nn.BatchNorm2d)) for m in body.modules())


@pytest.mark.parametrize("factory", [vgg5, vgg11, resnet20])
@pytest.mark.parametrize("channels,size,classes", [(3, 32, 10), (1, 28, 10), (3, 32, 100)])
def test_bodies_are_bias_free_and_fit_each_dataset(factory, channels, size, classes):
    body = factory(in_channels=channels, num_classes=classes, input_size=size).eval()
    assert all(m.bias is None for m in body.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert body(torch.rand(2, channels, size, size)).shape == (2, classes)


def test_depths():
    convs = lambda b, k: sum(isinstance(m, nn.Conv2d) and m.kernel_size == (k, k) for m in b.modules())
    linears = lambda b: sum(isinstance(m, nn.Linear) for m in b.modules())
    assert (convs(vgg11(), 3), linears(vgg11())) == (8, 3)
    assert (convs(resnet20(), 3), linears(resnet20())) == (19, 1)  # 3 + 4 stages x 2 blocks x 2, + fc = 20
    assert sum(isinstance(m, BasicBlock) for m in resnet20().modules()) == 8


def reference_snn(body: nn.Sequential, x_seq: torch.Tensor, thresholds, leak: float) -> torch.Tensor:
    """Per-timestep simulation of an ANN body as an SNN, written from the paper's equations:
    u = leak*u + I; s = u >= th; u -= th*s; ReLU -> that neuron, other layers applied to each step."""
    out = []
    state = {}
    for t in range(x_seq.shape[0]):
        h = x_seq[t]
        k = 0
        for i, m in enumerate(body):
            if isinstance(m, nn.ReLU):
                u = leak * state.get(i, torch.zeros_like(h)) + h
                s = (u >= thresholds[k]).float()
                state[i] = u - thresholds[k] * s
                h, k = s, k + 1
            else:
                h = m(h)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("leak", [1.0, 0.9])
def test_twin_matches_a_hand_written_simulation(leak):
    torch.manual_seed(0)
    body = vgg_tiny(hidden=32).eval()
    thresholds = [0.5, 0.8, 1.2, 0.7]
    twin = spiking_twin(body, leak=leak, thresholds=thresholds).eval()
    x_seq = torch.randn(6, 3, 1, 28, 28)
    expected = reference_snn(body, x_seq, thresholds, leak)
    assert torch.allclose(twin(x_seq), expected, atol=1e-5)
    assert expected.abs().sum() > 0  # the input reached the output


def test_twin_shares_weights_and_swaps_every_relu():
    body = resnet20(width=8)
    twin = spiking_twin(body)
    assert {id(p) for p in twin.parameters()} == {id(p) for p in body.parameters()}
    relus = sum(isinstance(m, nn.ReLU) for m in body.modules())  # counted after twinning: the ANN is untouched
    nodes = [m for m in twin.modules() if isinstance(m, LeakyLIFNode)]
    assert len(nodes) == relus == 19 and not any(isinstance(m, nn.ReLU) for m in twin.modules())


def test_residual_block_twin_sums_currents_before_the_junction_neuron():
    torch.manual_seed(1)
    block = BasicBlock.make(4, 8, stride=2, dropout=0.0).eval()
    twin = spiking_twin(block, thresholds=[0.3, 0.4]).eval()
    x_seq = (torch.rand(5, 2, 4, 8, 8) < 0.5).float()
    u1 = torch.zeros(2, 8, 4, 4)
    u2 = torch.zeros(2, 8, 4, 4)
    expected = []
    for t in range(5):
        u1 = u1 + block.residual[0](x_seq[t])
        s1 = (u1 >= 0.3).float()
        u1 = u1 - 0.3 * s1
        u2 = u2 + block.residual[3](s1) + block.shortcut(x_seq[t])
        s2 = (u2 >= 0.4).float()
        u2 = u2 - 0.4 * s2
        expected.append(s2)
    assert torch.equal(twin(x_seq), torch.stack(expected))


def test_thresholds_are_checked():
    twin = spiking_twin(vgg_tiny())
    set_thresholds(twin, [1.0, 2.0, 3.0, 4.0])
    assert get_thresholds(twin) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="3 values: this network has 4 neuron layers"):
        set_thresholds(twin, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"'thresholds\[1\]' = -1"):
        set_thresholds(twin, [1.0, -1.0, 3.0, 4.0])


def test_build_classifier_records_how_to_rebuild():
    ann = build_classifier("vgg5", "cifar10")
    assert isinstance(ann, AnnClassifier) and ann.arch == {"name": "vgg5", "dataset": "cifar10", "kwargs": {}}
    snn = build_classifier("vgg-tiny", "fashion-mnist", kind="snn", timesteps=4, leak=0.99, encoder=DirectEncoder(), hidden=16)
    assert isinstance(snn, SpikingClassifier) and snn.timesteps == 4 and snn.leak == 0.99
    assert snn.arch["kwargs"] == {"hidden": 16}
    assert snn(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="channel"):
        snn(torch.rand(3, 3, 28, 28))


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="vgg7", dataset="cifar10"), "'arch' = 'vgg7'"),
    (dict(arch="vgg5", dataset="svhn"), "'dataset' = 'svhn'"),
    (dict(arch="vgg5", dataset="cifar10", kind="cnn"), "'kind' = 'cnn'"),
    (dict(arch="vgg5", dataset="cifar10", kind="snn", timesteps=0), "'timesteps' = 0"),
    (dict(arch="vgg5", dataset="cifar10", kind="snn", leak=1.5), "'leak' = 1.5"),
    (dict(arch="vgg5", dataset="cifar10", dropout=2.0), "'dropout' = 2.0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_classifier(**kwargs)


def test_input_too_small():
    with pytest.raises(ValueError, match="'input_size' = 8"):
        resnet20(input_size=8)
    with pytest.raises(ValueError, match="'input_size' = 1"):
        vgg11(input_size=1)


def test_spiking_avgpool_matches_spikingjelly_and_saves_no_input():
    """Same values and input gradients as SpikingJelly's multistep AvgPool2d, and no saved activation."""
    from spikingjelly.activation_based import layer

    from snn_adv.models.spiking import AvgPool2d

    x = (torch.rand(3, 2, 4, 9, 9) < 0.3).float().requires_grad_(True)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)):
        ours, theirs = AvgPool2d(step_mode="m", **kwargs), layer.AvgPool2d(step_mode="m", **kwargs)
        y, y_ref = ours(x), theirs(x)
        torch.testing.assert_close(y, y_ref)
        w = torch.randn_like(y)
        (g,) = torch.autograd.grad((y * w).sum(), x)
        (g_ref,) = torch.autograd.grad((y_ref * w).sum(), x)
        torch.testing.assert_close(g, g_ref)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        AvgPool2d(2, step_mode="m")(x)
    assert saved == []


def sj_single_step_body() -> nn.Sequential:
    """A tiny ANN written with SpikingJelly's single-step layers (subclasses of torch's)."""
    from spikingjelly.activation_based import layer

    return nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), nn.ReLU(), layer.AvgPool2d(2), layer.Dropout(0.5),
                         layer.Flatten(), layer.Linear(4 * 14 * 14, 16), nn.ReLU(), layer.Linear(16, 10))


def test_twin_of_spikingjelly_single_step_layers_matches_the_simulation_and_uses_our_pool():
    from spikingjelly.activation_based import layer

    from snn_adv.models.spiking import AvgPool2d

    torch.manual_seed(2)
    body = sj_single_step_body().eval()
    twin = spiking_twin(body, thresholds=[0.3, 0.6]).eval()
    x_seq = torch.rand(5, 2, 1, 28, 28)
    expected = reference_snn(body, x_seq, [0.3, 0.6], leak=1.0)
    torch.testing.assert_close(twin(x_seq), expected)
    pools = [m for m in twin.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 1 and type(pools[0]) is AvgPool2d
    assert all(getattr(m, "step_mode", "m") == "m" for m in twin.modules() if isinstance(m, (layer.Conv2d, layer.Linear)))


def test_hand_built_spikingjelly_pool_becomes_our_memory_saving_pool():
    from spikingjelly.activation_based import layer

    from snn_adv.models.spiking import AvgPool2d

    twin = spiking_twin(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), layer.AvgPool2d(2, step_mode="m"), nn.AvgPool2d(2)))
    assert [type(m) for m in twin.modules() if isinstance(m, nn.AvgPool2d)] == [AvgPool2d, AvgPool2d]


def randomise_batchnorms(body: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            if m.affine:
                nn.init.uniform_(m.weight, 0.5, 2)
                nn.init.uniform_(m.bias, -1, 1)
    return body


class ResidualBlockWithBatchNorm(nn.Module):
    """torchvision's BasicBlock layout: named conv/bn attributes composed in forward."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=True), nn.BatchNorm2d(channels, affine=False)

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class DataDependent(nn.Sequential):
    """A Sequential that torch.fx cannot trace (control flow on a tensor value)."""

    def forward(self, x):
        return super().forward(x) if x.sum() > -1e9 else x


def bn_bodies():
    from spikingjelly.activation_based import layer

    return {
        "sequential": nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                                    nn.Flatten(), nn.Linear(4 * 13 * 13, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
        "residual": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), layer.BatchNorm2d(4), nn.ReLU(),
                                  ResidualBlockWithBatchNorm(4), nn.Flatten(), nn.Linear(4 * 28 * 28, 3)),
        "untraceable": DataDependent(layer.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4 * 26 * 26, 3)),
    }


@pytest.mark.parametrize("name", ["sequential", "residual", "untraceable"])
def test_batchnorm_folding_keeps_the_ann_outputs_and_the_twin_is_the_folded_anns(name):
    from snn_adv.models import fold_batchnorm

    torch.manual_seed(3)
    body = randomise_batchnorms(bn_bodies()[name]).eval()
    folded = fold_batchnorm(body).eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    before = body(x)
    torch.testing.assert_close(folded(x), before, rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body.modules())  # the input is unchanged
    twin = spiking_twin(body).eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in twin.modules())
    x_seq = torch.rand(3, 2, 1, 28, 28) * 4
    torch.testing.assert_close(twin(x_seq), spiking_twin(folded).eval()(x_seq), rtol=1e-5, atol=1e-5)


def test_folded_conv_weights_match_the_closed_form():
    from snn_adv.models.folding import folded_layer

    torch.manual_seed(4)
    conv, bn = nn.Conv2d(2, 3, 1, bias=True), randomise_batchnorms(nn.BatchNorm2d(3))
    folded = folded_layer(conv, bn)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(folded.bias, s * (conv.bias - bn.running_mean) + bn.bias)
    with pytest.raises(ValueError, match="running statistics"):
        folded_layer(conv, nn.BatchNorm2d(3, track_running_stats=False))


@pytest.mark.parametrize("bad,names", [
    (nn.MaxPool2d(2), ["MaxPool2d", "AvgPool2d"]),
    (nn.AdaptiveMaxPool2d(1), ["AdaptiveMaxPool2d", "AvgPool2d"]),
    (nn.GELU(), ["GELU", "nn.ReLU"]),
    (nn.SiLU(), ["SiLU", "nn.ReLU"]),
    (nn.LayerNorm(2), ["LayerNorm", "BatchNorm"]),
    (nn.BatchNorm2d(2), ["BatchNorm2d", "right after a Conv"]),  # after a ReLU: cannot be folded
    (nn.Softmax(dim=1), ["Softmax", "logits"]),
])
def test_layers_without_a_spiking_counterpart_are_refused_with_what_to_do(bad, names):
    with pytest.raises(TypeError) as error:
        spiking_twin(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), bad)))
    assert all(name in str(error.value) for name in [*names, "('1.1')"]), str(error.value)


def test_memory_saving_pools_swaps_hand_built_pools_keeping_outputs_and_gradients():
    import copy

    from spikingjelly.activation_based import functional, layer

    from snn_adv.models import memory_saving_pools
    from snn_adv.models.spiking import AvgPool2d

    torch.manual_seed(6)
    net = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), LeakyLIFNode(leak=0.9), layer.AvgPool2d(2),
                        nn.Sequential(layer.AvgPool2d(3, stride=2, padding=1)), layer.Flatten(), layer.Linear(4 * 7 * 7, 3))
    functional.set_step_mode(net, "m")
    swapped = memory_saving_pools(copy.deepcopy(net))
    assert [type(m) for m in swapped.modules() if isinstance(m, nn.AvgPool2d)] == [AvgPool2d, AvgPool2d]
    assert all(m.step_mode == "m" for m in swapped.modules() if isinstance(m, nn.AvgPool2d))
    x = torch.rand(4, 2, 1, 28, 28, requires_grad=True)
    outputs, gradients = [], []
    for candidate in (net, swapped):
        functional.reset_net(candidate)
        y = candidate(x)
        outputs.append(y)
        gradients.append(torch.autograd.grad((y * torch.arange(3.0)).sum(), x)[0])
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(gradients[1], gradients[0])
