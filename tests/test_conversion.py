"""ANN -> SNN conversion: fidelity on real Fashion-MNIST, thresholds against hand-computed references, errors."""
import copy

import pytest
import torch
import torch.nn as nn

from conftest import loader
from snn_adv.conversion import convert, hybrid_init
from snn_adv.encoding import PoissonEncoder
from snn_adv.models import build_classifier, get_thresholds

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def agreement(ann, snn, x, timesteps, seed=0):
    snn.timesteps = timesteps
    snn.encoder.manual_seed(seed)
    with torch.no_grad():
        return (snn(x).argmax(1) == ann(x).argmax(1)).float().mean().item()


def test_snn_conv_agrees_with_its_ann_more_as_t_grows(trained_pair):
    ann, snn, x, _ = trained_pair
    x = x[:300]
    rates = [agreement(ann, snn, x, t) for t in (8, 32, 128)]
    assert rates[0] < rates[1] <= rates[2] + 0.01
    assert rates[2] >= 0.95


def test_converted_net_is_if_with_copied_weights(trained_pair):
    ann, snn, _, _ = trained_pair
    assert all(node.leak == 1.0 for node in snn.neurons()) and len(snn.neurons()) == 4
    before = copy.deepcopy(ann.state_dict())
    for p in snn.parameters():
        p.data.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in ann.state_dict().items())


def test_first_two_thresholds_match_a_hand_computation(fmnist):
    """Layer 1: max of conv1 over the Poisson spikes. Layer 2: max of conv2(avgpool(IF spikes of layer 1))."""
    torch.manual_seed(0)
    ann = build_classifier("vgg-tiny", "fashion-mnist-bundled").eval()
    images = fmnist.train_x[:40]
    snn = convert(ann, loader(images, fmnist.train_y[:40], batch_size=40), timesteps=10, percentile=100.0, seed=3,
                  progress=False)
    spikes = PoissonEncoder(seed=3)(ann.normalize(images), 10)
    body = ann.body
    with torch.no_grad():
        current1 = torch.stack([body[0](s) for s in spikes])
        th1 = current1.max().item()
        u, out = torch.zeros_like(current1[0]), []
        for c in current1:
            u = u + c
            s = (u >= th1).float()
            u = u - th1 * s
            out.append(s)
        th2 = torch.stack([body[3](body[2](s)) for s in out]).max().item()
    assert get_thresholds(snn.body)[:2] == pytest.approx([th1, th2], rel=1e-5)


def test_percentile_threshold_is_the_quantile_of_the_current_and_deterministic(trained_pair, fmnist):
    ann, images = trained_pair.ann, fmnist.train_x[:100]
    calibration = loader(images, fmnist.train_y[:100], batch_size=100)
    kw = dict(timesteps=16, seed=1, progress=False)
    high = get_thresholds(convert(ann, calibration, percentile=100.0, **kw).body)
    low = get_thresholds(convert(ann, calibration, percentile=99.0, **kw).body)
    assert low == get_thresholds(convert(ann, calibration, percentile=99.0, **kw).body)
    with torch.no_grad():
        current = ann.body[0](PoissonEncoder(seed=1)(ann.normalize(images), 16).flatten(0, 1))
    assert low[0] == pytest.approx(torch.quantile(current.flatten(), 0.99).item(), rel=2e-2)  # from a 2^21 sample
    assert high[0] == pytest.approx(current.max().item(), rel=1e-6) and low[0] < high[0]


def test_time_chunked_calibration_gives_the_same_maximum_scale(trained_pair, fmnist):
    """Chunks draw the Poisson spikes in pieces (other samples, same law): thresholds agree statistically."""
    calibration = loader(fmnist.train_x[:100], fmnist.train_y[:100])
    whole = get_thresholds(convert(trained_pair.ann, calibration, 24, seed=2, progress=False).body)
    chunked = get_thresholds(convert(trained_pair.ann, calibration, 24, seed=2, time_chunk=8, progress=False).body)
    assert chunked == pytest.approx(whole, rel=0.03)


def test_spikingjelly_method_uses_ratios_of_ann_activation_scales(trained_pair, fmnist):
    ann = trained_pair.ann
    images = fmnist.train_x[:100]
    snn = convert(ann, loader(images, fmnist.train_y[:100], batch_size=100), 64, method="spikingjelly",
                  percentile=100.0, progress=False)
    with torch.no_grad():
        h, scales = ann.normalize(images), []
        for m in ann.body:
            h = m(h)
            if isinstance(m, nn.ReLU):
                scales.append(h.max().item())
    expected = [s / p for s, p in zip(scales, [1.0] + scales[:-1])]
    assert get_thresholds(snn.body) == pytest.approx(expected, rel=1e-5)
    assert agreement(ann, snn, trained_pair.x[:200], 64) >= 0.9


def test_spikingjelly_method_refuses_residual_networks(fmnist):
    ann = build_classifier("resnet20", "fashion-mnist-bundled", width=4)
    with pytest.raises(ValueError, match="threshold-balancing"):
        convert(ann, loader(fmnist.train_x[:4], fmnist.train_y[:4]), 4, method="spikingjelly")


def test_hybrid_init_scales_thresholds_and_sets_leak(trained_pair):
    snn = trained_pair.snn
    hybrid = hybrid_init(snn, timesteps=6)
    assert get_thresholds(hybrid.body) == pytest.approx([0.7 * t for t in get_thresholds(snn.body)])
    assert hybrid.leak == 0.99 and hybrid.timesteps == 6
    assert snn.leak == 1.0 and snn.timesteps == 32  # the converted net is left as it was
    with pytest.raises(ValueError, match="'threshold_scale' = 0"):
        hybrid_init(snn, 6, threshold_scale=0)
    with pytest.raises(ValueError, match="'leak' = 0"):
        hybrid_init(snn, 6, leak=0)
    with pytest.raises(TypeError, match="SpikingClassifier"):
        hybrid_init(trained_pair.ann, 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(timesteps=0), "'timesteps' = 0"),
    (dict(method="rate-norm"), "'method' = 'rate-norm'"),
    (dict(percentile=0.0), "'percentile' = 0"),
    (dict(percentile=101.0), "'percentile' = 101"),
    (dict(max_batches=0), "'max_batches' = 0"),
])
def test_bad_arguments(trained_pair, fmnist, kwargs, match):
    args = dict(timesteps=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        convert(trained_pair.ann, loader(fmnist.train_x[:4], fmnist.train_y[:4]), **args)
    with pytest.raises(TypeError, match="AnnClassifier"):
        convert(trained_pair.snn, loader(fmnist.train_x[:4], fmnist.train_y[:4]), 4)


def test_empty_calibration_loader(trained_pair):
    with pytest.raises(ValueError, match="no batches"):
        convert(trained_pair.ann, [], 4, progress=False)


@pytest.mark.parametrize("method", ["threshold-balancing", "spikingjelly"])
def test_ann_with_batchnorm_converts_as_its_folded_ann(trained_pair, fmnist, method):
    """A BatchNorm after the first convolution is folded: same thresholds and logits as converting the folded ANN."""
    from snn_adv.classifier import AnnClassifier
    from snn_adv.models import fold_batchnorm

    torch.manual_seed(5)
    ann = trained_pair.ann
    batchnorm = nn.BatchNorm2d(ann.body[0].out_channels).eval()
    batchnorm.running_mean.uniform_(-0.5, 0.5)
    batchnorm.running_var.uniform_(0.5, 2)
    batchnorm.weight.data.uniform_(0.5, 2)
    body = nn.Sequential(ann.body[0], batchnorm, *ann.body[1:])
    make = lambda b: AnnClassifier(b, mean=ann.mean.flatten().tolist(), std=ann.std.flatten().tolist()).eval()
    calibration = loader(fmnist.train_x[:40], fmnist.train_y[:40], batch_size=40)
    kwargs = dict(timesteps=4, method=method, percentile=100.0, seed=1, progress=False)
    snn, reference = convert(make(body), calibration, **kwargs), convert(make(fold_batchnorm(body)), calibration, **kwargs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    assert get_thresholds(snn.body) == pytest.approx(get_thresholds(reference.body), rel=1e-5)
    x = fmnist.test_x[:8]
    snn.encoder.manual_seed(0), reference.encoder.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(snn(x), reference(x), rtol=1e-4, atol=1e-4)
