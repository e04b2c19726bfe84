"""SpikingClassifier / AnnClassifier: determinism, no state leak, input contract, readouts, input gradient."""
import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

from snn_adv.classifier import AnnClassifier, SpikingClassifier
from snn_adv.encoding import DirectEncoder, PoissonEncoder
from snn_adv.neurons import LeakyLIFNode

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def small_body(seed: int = 0, channels: int = 2, size: int = 6, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    body = nn.Sequential(
        layer.Conv2d(channels, 4, 3, padding=1, bias=False), LeakyLIFNode(0.9, 0.5),
        layer.Flatten(), layer.Linear(4 * size * size, classes, bias=False),
    )
    functional.set_step_mode(body, "m")
    return body


def snn(encoder=None, timesteps=6, **kwargs) -> SpikingClassifier:
    return SpikingClassifier(small_body(), encoder or PoissonEncoder(seed=0), timesteps, mean=(0.5, 0.5),
                             std=(0.5, 0.5), input_size=(6, 6), **kwargs)


def images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_membrane_readout_is_mean_over_time_of_the_body():
    model = snn(DirectEncoder())
    x = images(0)
    logits = model(x)
    functional.reset_net(model)
    seq = model.body(((x - 0.5) / 0.5).unsqueeze(0).repeat(6, 1, 1, 1, 1))
    assert logits.shape == (3, 4)
    torch.testing.assert_close(logits, seq.mean(0))


def test_same_seed_same_logits_whatever_ran_in_between():
    model = snn()
    x, other = images(0), images(1, n=5)
    first = model(x)
    model.encoder.manual_seed(0)
    again = model(x)
    model(other)  # another batch (other size) in between
    with torch.no_grad():
        model(other)
    model.encoder.manual_seed(0)
    after = model(x)
    assert torch.equal(first, again) and torch.equal(first, after)
    assert torch.equal(first, snn()(x))  # a freshly built twin agrees


def test_no_state_leak_between_calls():
    model = snn(DirectEncoder())
    x = images(0)
    alone = model(x)
    model(images(2) * 0 + 1)  # drive every neuron hard
    assert torch.equal(model(x), alone)
    # and the state after a call is what that call left, not an accumulation
    for node in model.neurons():
        assert node.v.shape == (3, 4, 6, 6)


def test_input_gradient_in_eval_mode():
    model = snn().eval()
    x = images(0).requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0
    model.train()
    model.encoder.manual_seed(0)
    (grad_train,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2])), x)
    assert torch.equal(grad, grad_train)


def test_spike_readout_is_a_firing_rate():
    model = snn(DirectEncoder(), readout="spikes", timesteps=8)
    x = images(0)
    logits = model(x)
    assert ((logits * 8 - (logits * 8).round()).abs() < 1e-6).all() and logits.min() >= 0 and logits.max() <= 1
    functional.reset_net(model)
    currents = model.body(((x - 0.5) / 0.5).unsqueeze(0).repeat(8, 1, 1, 1, 1))
    v, spikes = torch.zeros_like(currents[0]), []
    for current in currents:  # IF output neurons, threshold 1, soft reset
        v = v + current
        spikes.append((v >= 1).float())
        v = v - spikes[-1]
    torch.testing.assert_close(logits, torch.stack(spikes).mean(0))
    assert logits.sum() > 0


def test_knobs_change_on_a_built_model():
    model = snn()
    model.timesteps = 3
    model.set_leak(0.5)
    assert model.leak == 0.5 and all(n.leak == 0.5 for n in model.neurons())
    model.encoder = DirectEncoder()
    assert model(images(0)).shape == (3, 4)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="timesteps"):
            model.timesteps = bad
    with pytest.raises(ValueError, match="leak"):
        model.set_leak(0.0)
    with pytest.raises(ValueError, match="readout"):
        snn(readout="rate")


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (lambda x: x + 0.5, ValueError, r"\[0, 1\]"),
        (lambda x: x - 0.5, ValueError, r"\[0, 1\]"),
        (lambda x: x.index_put((torch.tensor([0]),), torch.tensor(math.nan)), ValueError, "finite"),
        (lambda x: x.index_put((torch.tensor([1]),), torch.tensor(math.inf)), ValueError, "finite"),
        (lambda x: x[:, :1], ValueError, "channel"),
        (lambda x: x[0], ValueError, "rank 4"),
        (lambda x: x.unsqueeze(0), ValueError, "rank 4"),
        (lambda x: x[:, :, :5, :5], ValueError, "size"),
        (lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point"),
        (lambda x: x.numpy(), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, error, match):
    x = images(0)
    for model in (snn(), AnnClassifier(nn.Flatten(), mean=(0.5, 0.5), std=(0.5, 0.5), input_size=(6, 6))):
        with pytest.raises(error, match=match):
            model(bad(x))


def test_ann_classifier_normalises():
    body = nn.Sequential(nn.Flatten(), nn.Linear(72, 3))
    model = AnnClassifier(body, mean=(0.2, 0.4), std=(0.5, 0.25))
    x = images(0)
    mean = torch.tensor([0.2, 0.4]).reshape(1, 2, 1, 1)
    std = torch.tensor([0.5, 0.25]).reshape(1, 2, 1, 1)
    torch.testing.assert_close(model(x), body((x - mean) / std))
    assert model.kind == "ann" and snn().kind == "snn"


@pytest.mark.parametrize("mean,std", [((0.5,), (0.0,)), ((0.5, 0.5), (0.5,))])
def test_bad_normalisation_raises(mean, std):
    with pytest.raises(ValueError, match="std"):
        AnnClassifier(nn.Flatten(), mean=mean, std=std)


@pytest.mark.parametrize("chunk", [1, 5, 12])
def test_time_chunks_give_the_same_logits_and_input_gradient(trained_pair, chunk):
    """Running the body a few timesteps at a time (state carried) is the same computation as one pass."""
    snn = trained_pair.snn
    snn.timesteps = 12
    x = trained_pair.x[:8].clone().requires_grad_(True)
    results = []
    for time_chunk in (None, chunk):
        snn.time_chunk = time_chunk
        snn.encoder.manual_seed(3)
        logits = snn(x)
        (grad,) = torch.autograd.grad(logits.logsumexp(1).sum(), x)
        results.append((logits.detach(), grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_models(dtype):
    """float64/16/bfloat16 images give the float32 model's logits of the cast images, and a gradient in their dtype."""
    for model in (snn(DirectEncoder()), AnnClassifier(small_body_ann(), mean=(0.5, 0.5), std=(0.5, 0.5))):
        x = images(0).to(dtype).requires_grad_(True)
        logits = model(x)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, model(x.detach().float()))
        logits.sum().backward()
        assert x.grad is not None and x.grad.dtype == dtype


def small_body_ann() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))


def test_out_of_range_values_are_printed_so_that_they_show():
    x = images(0)
    x[0, 0, 0, 0] = 1.0000001
    with pytest.raises(ValueError, match=r"range \[.*, 1\.000000119"):
        snn()(x)


def test_channels_known_from_the_first_convolution_with_a_one_value_normalisation():
    model = AnnClassifier(small_body_ann(), mean=(0.5,), std=(0.5,))
    assert model.in_channels == 2
    with pytest.raises(ValueError, match=r"must have 2 channel\(s\)"):
        model(torch.rand(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"must have 2 channel\(s\)"):
        SpikingClassifier(small_body(), mean=(0.5,), std=(0.5,))(torch.rand(1, 1, 6, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.gpu
def test_images_on_another_device_are_refused_before_any_work():
    with pytest.raises(ValueError, match="is on device cuda:0, the model on cpu"):
        snn()(images(0).cuda())


def test_images_on_another_device_message():
    from snn_adv.validation import check_images

    with pytest.raises(ValueError, match=r"on device cpu, the model on meta: move one of them"):
        check_images(images(0), device=torch.device("meta"))


def test_timesteps_that_cannot_fit_in_memory_fail_before_allocating():
    model = snn()
    model.timesteps = 10**12  # [T, 3, 2, 6, 6] float32: 864 TB
    with pytest.raises(ValueError, match=r"'timesteps' = 1000000000000: the encoded input .* alone needs .* GiB, more than"):
        model(images(0))


def test_forgotten_set_step_mode_is_caught_with_the_fix():
    body = small_body()
    functional.set_step_mode(body, "s")
    with pytest.raises(ValueError, match=r"single-step SpikingJelly modules \(0, 1, 2, \.\.\.\).*set_step_mode\(body, 'm'\)"):
        SpikingClassifier(body, DirectEncoder(), 4, mean=(0.5, 0.5), std=(0.5, 0.5))(images(0))


def test_a_bare_body_given_where_a_classifier_is_expected_gets_a_hint():
    from snn_adv.classifier import check_classifier

    with pytest.raises(TypeError, match=r"bare multistep SpikingJelly network.*wrap it, SpikingClassifier\(body"):
        check_classifier(small_body())
    model = snn()
    assert check_classifier(model) is model and isinstance(check_classifier(small_body_ann()), nn.Module)


def test_labels_and_seeds():
    from snn_adv.validation import check_labels, check_seed

    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        labels = check_labels(torch.tensor([0, 3, 1], dtype=dtype), 4, 3)
        assert labels.dtype == torch.int64 and labels.tolist() == [0, 3, 1]
        torch.nn.functional.cross_entropy(torch.zeros(3, 4), labels)  # what crashed with int32 labels
    assert check_seed("seed", 2**63 - 1) == 2**63 - 1 and check_seed("seed", None) is None
    for bad in (2**64, -1, 1.5, True, "0"):
        with pytest.raises(ValueError, match=r"'seed' = .*integer in \[0, 2\*\*63 - 1\]"):
            check_seed("seed", bad)
    with pytest.raises(ValueError, match="must be an integer"):
        check_seed("seed", None, allow_none=False)


def test_attacks_and_evaluate_apply_the_input_checks():
    """The checks reach the doors users call: int32 labels work in an attack, an overflowing seed and a bare body
    are refused by the attack and by evaluate with the checks' messages."""
    from snn_adv import evaluate
    from snn_adv.attacks import FGSM

    model, x = snn(), images(0)
    labels = torch.tensor([0, 3, 1], dtype=torch.int32)
    adversarial = FGSM(model, eps=0.1)(x, labels)
    assert adversarial.shape == x.shape and (adversarial - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match=r"'seed' = .*integer in \[0, 2\*\*63 - 1\]"):
        FGSM(model, eps=0.1, seed=2**64)
    with pytest.raises(ValueError, match=r"'seed' = .*integer in \[0, 2\*\*63 - 1\]"):
        evaluate(model, (x, labels.long()), None, seed=2**64, progress=False)
    for call in (lambda: FGSM(small_body(), eps=0.1), lambda: evaluate(small_body(), (x, labels.long()), None, progress=False)):
        with pytest.raises(TypeError, match="bare multistep SpikingJelly network"):
            call()
