"""Training: seeded reproducibility, gradient accumulation equal to the full batch, SNN-BP beating SNN-conv at low
T, argument errors, and the train-ann -> convert -> train-snn command line."""
import copy

import pytest
import torch

from conftest import loader
from snn_adv import checkpoints
from snn_adv.cli import main
from snn_adv.conversion import hybrid_init
from snn_adv.encoding import DirectEncoder
from snn_adv.models import build_classifier
from snn_adv.training import evaluate_clean, train, train_ann, train_snn


def _small(fmnist, n=256):
    return loader(fmnist.train_x[:n], fmnist.train_y[:n], 32, shuffle=True, seed=0)


def test_ann_training_learns_and_reports_each_epoch(fmnist):
    torch.manual_seed(0)
    ann = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    test = loader(fmnist.test_x[:200], fmnist.test_y[:200], 200)
    before = evaluate_clean(ann, test)
    history = train_ann(ann, _small(fmnist, 1000), test, epochs=2, optimizer="adam", lr=3e-3, schedule="step", progress=False)
    assert [r["epoch"] for r in history] == [1, 2] and history[1]["lr"] < history[0]["lr"]  # step schedule
    assert history[-1]["test_loss"] < before["loss"] and history[-1]["test_accuracy"] > before["accuracy"] + 0.3
    assert history[-1]["test_accuracy"] == evaluate_clean(ann, test)["accuracy"]


def test_same_seed_same_weights(fmnist):
    def run(seed):
        torch.manual_seed(seed)  # weight init
        model = build_classifier("vgg-tiny", "fashion-mnist-bundled", fc_dropout=0.5)
        train(model, _small(fmnist), epochs=1, seed=seed, progress=False)
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_micro_batches_give_the_full_batch_update(fmnist, kind):
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind=kind, timesteps=4, encoder=DirectEncoder())
    twin, initial = copy.deepcopy(model), copy.deepcopy(model)
    data = loader(fmnist.train_x[:64], fmnist.train_y[:64], 64)
    train(model, data, epochs=1, optimizer="sgd", lr=0.1, progress=False)
    train(twin, data, epochs=1, optimizer="sgd", lr=0.1, micro_batch=16, progress=False)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(model.parameters(), initial.parameters()))  # a real step


def test_snn_bp_lowers_the_loss_and_beats_snn_conv_at_the_same_low_t(trained_pair, fmnist):
    timesteps = 6
    conv = trained_pair.snn
    conv.timesteps = timesteps
    test = loader(fmnist.test_x[:300], fmnist.test_y[:300], 300)
    train_data = loader(fmnist.train_x, fmnist.train_y, 32, shuffle=True)
    conv.encoder.manual_seed(5)
    conv_result = evaluate_clean(conv, test)
    hybrid = hybrid_init(conv, timesteps)
    hybrid.encoder.manual_seed(None)  # fresh Poisson draws while training (seeded through train's seed)
    start = evaluate_clean(hybrid, train_data, max_batches=20)
    history = train_snn(hybrid, train_data, epochs=1, lr=1e-3, seed=0, progress=False)
    assert evaluate_clean(hybrid, train_data, max_batches=20)["loss"] < start["loss"]
    assert history[0]["train_loss"] < start["loss"]
    hybrid.encoder.manual_seed(5)
    assert evaluate_clean(hybrid, test)["accuracy"] > conv_result["accuracy"] + 0.03


def test_an_empty_loader_is_an_error_not_a_zero_loss(fmnist):
    empty = loader(fmnist.train_x[:0], fmnist.train_y[:0], 32)
    with pytest.raises(ValueError, match="'train_loader' yielded no images in epoch 1"):
        train(build_classifier("vgg-tiny", "fashion-mnist-bundled"), empty, progress=False)
    exhausted = iter(_small(fmnist, 64))  # an iterator: one pass, then empty
    with pytest.raises(ValueError, match="in epoch 2"):
        train(build_classifier("vgg-tiny", "fashion-mnist-bundled"), exhausted, epochs=2, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "'epochs' = 0"),
    (dict(optimizer="rmsprop"), "'optimizer' = 'rmsprop'"),
    (dict(schedule="linear"), "'schedule' = 'linear'"),
    (dict(lr=-1.0), "'lr' = -1.0"),
    (dict(micro_batch=0), "'micro_batch' = 0"),
    (dict(weight_decay=-1.0), "'weight_decay' = -1.0"),
    (dict(precision="float16"), "'precision' = 'float16'"),
])
def test_bad_arguments(fmnist, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(build_classifier("vgg-tiny", "fashion-mnist-bundled"), _small(fmnist), **kwargs)


def test_cli_train_convert_train_snn(tmp_path, capsys):
    ann_path, conv_path, bp_path = tmp_path / "ann.pt", tmp_path / "conv.pt", tmp_path / "bp.pt"
    common = ["--test-subset", "100", "--no-progress"]
    assert main(["train-ann", "--arch", "vgg-tiny", "--epochs", "1", "--dataset", "fashion-mnist-bundled", "--subset", "300", "--out", str(ann_path), *common]) == 0
    assert main(["convert", str(ann_path), "--timesteps", "8", "--calibration-images", "100", "--out", str(conv_path),
                 *common]) == 0
    assert main(["train-snn", str(conv_path), "--timesteps", "4", "--epochs", "1", "--subset", "300", "--out", str(bp_path), *common]) == 0
    ann, conv, bp = (checkpoints.load(p) for p in (ann_path, conv_path, bp_path))
    assert (ann.kind, conv.kind, bp.kind) == ("ann", "snn", "snn")
    assert conv.leak == 1.0 and conv.timesteps == 8 and bp.leak == 0.99 and bp.timesteps == 4
    assert bp.metadata["method"] == "snn-bp" and conv.metadata["method"] == "snn-conv"
    assert "test_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", str(bp_path), "--timesteps", "0", "--out", str(tmp_path / "x.pt")])


def test_a_killed_training_resumes_from_its_last_epoch_to_the_same_weights(fmnist, tmp_path):
    import random

    import numpy as np
    from torch.utils.data import TensorDataset

    from snn_adv.distributed import distributed_loader

    dataset = TensorDataset(fmnist.train_x[:192], fmnist.train_y[:192])

    def run(init_seed, checkpoint=None, stop_after=None, epochs=3):
        torch.manual_seed(init_seed)
        model = build_classifier("vgg-tiny", "fashion-mnist-bundled", fc_dropout=0.5)  # dropout: the global RNG
        data, sampler = distributed_loader(dataset, 32, seed=3)

        def stop(record):
            if record["epoch"] == stop_after:
                raise KeyboardInterrupt  # the kill, after the epoch's state was written

        def start(epoch):
            sampler.set_epoch(epoch - 1)
            draws[epoch] = (random.random(), float(np.random.rand()))  # the host generators carry on too

        draws = {}
        history = train(model, data, epochs=epochs, seed=1, progress=False, checkpoint=checkpoint,
                        on_epoch_start=start, on_epoch_end=stop)
        return model, history, draws

    reference, reference_history, reference_draws = run(init_seed=5)
    state = tmp_path / "ann.pt.partial"
    with pytest.raises(KeyboardInterrupt):
        run(init_seed=5, checkpoint=state, stop_after=2)
    resumed, history, draws = run(init_seed=6, checkpoint=state)  # another init: the weights come from the state file
    assert history == reference_history and draws == {3: reference_draws[3]}
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="other training arguments"):
        run(init_seed=5, checkpoint=state, epochs=4)
    torch.save({"rng": np.random.get_state()}, state)  # a numpy array: refused by the safe unpickler, never run
    with pytest.raises(ValueError, match="safe loading refuses"):
        run(init_seed=5, checkpoint=state)


def test_bfloat16_training_runs_the_forward_in_bfloat16_keeps_float32_weights_and_learns(fmnist):
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    dtypes = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    history = train(model, _small(fmnist, 1000), epochs=2, optimizer="adam", lr=3e-3, precision="bfloat16",
                    progress=False)
    assert set(dtypes) == {torch.bfloat16} and all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    dtypes.clear()
    test = loader(fmnist.test_x[:200], fmnist.test_y[:200], 200)
    assert evaluate_clean(model, test)["accuracy"] > 0.6 and dtypes == [torch.float32]  # evaluation in float32


def test_bfloat16_training_of_an_snn_gives_its_float32_gradient_within_bfloat16_precision(trained_pair):
    """The SNN's layers keep a compact input for their backward (models/spiking.py), outside autocast's casts:
    their gradients must still come back in the parameters' dtype and agree with the float32 ones."""
    snn, x, y = trained_pair.snn, trained_pair.x[:32], trained_pair.y[:32]
    snn.train()
    gradients = {}
    for precision in ("float32", "bfloat16"):
        snn.zero_grad()
        torch.manual_seed(0)  # the same Poisson draw
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            torch.nn.functional.cross_entropy(snn(x), y).backward()
        gradients[precision] = {name: p.grad.clone() for name, p in snn.named_parameters() if p.grad is not None}
    assert gradients["float32"].keys() == gradients["bfloat16"].keys() and gradients["float32"]
    for name, reference in gradients["float32"].items():
        low = gradients["bfloat16"][name]
        assert low.dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(low.flatten(), reference.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
