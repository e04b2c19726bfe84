"""The lr schedule with warm-up against torch's own schedulers and hand values; Nesterov SGD against torch's."""
import math

import pytest
import torch

from snn_adv.models import build_classifier
from snn_adv.training import lr_factor, train
from conftest import loader


@pytest.mark.parametrize("epochs", [1, 4, 7, 20])
def test_without_warmup_the_schedules_are_torchs(epochs):
    references = {"cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
                  "step": lambda opt: torch.optim.lr_scheduler.MultiStepLR(
                      opt, sorted({max(1, int(epochs * 0.5)), max(1, int(epochs * 0.75))}), gamma=0.1)}
    for schedule, make in references.items():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make(opt)
        for epoch in range(epochs):
            assert lr_factor(epoch, schedule, epochs) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
            opt.step()
            sched.step()
    assert lr_factor(3, "constant", epochs) == 1.0


def test_warmup_is_linear_then_the_schedule_restarts():
    assert [lr_factor(e, "cosine", 10, warmup_epochs=2) for e in range(3)] == [1 / 3, 2 / 3, 1.0]
    assert lr_factor(6, "cosine", 10, warmup_epochs=2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(9, "step", 10, warmup_epochs=2) == pytest.approx(0.01)  # 7 of 8 post-warm-up epochs


def test_train_uses_warmup_and_nesterov(fmnist):
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    data = loader(fmnist.train_x[:64], fmnist.train_y[:64], 32)
    history = train(model, data, epochs=3, lr=0.02, warmup_epochs=1, nesterov=True, progress=False)
    assert [r["lr"] for r in history] == pytest.approx([0.01, 0.02, 0.01])
    with pytest.raises(ValueError, match=r"'warmup_epochs' = 3: must be an integer in \[0, epochs - 1\]"):
        train(model, data, epochs=3, warmup_epochs=3, progress=False)
    with pytest.raises(ValueError, match="'nesterov' = True: only for optimizer 'sgd'"):
        train(model, data, epochs=1, optimizer="adam", nesterov=True, progress=False)


def test_nesterov_step_equals_torchs(fmnist):
    """One epoch of our loop with nesterov=True moves the weights as torch's Nesterov SGD does on the same batches."""
    data = loader(fmnist.train_x[:64], fmnist.train_y[:64], 32)
    torch.manual_seed(0)
    ours = build_classifier("vgg-tiny", "fashion-mnist-bundled", fc_dropout=0.0)
    reference = build_classifier("vgg-tiny", "fashion-mnist-bundled", fc_dropout=0.0)
    reference.load_state_dict(ours.state_dict())
    train(ours, data, epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, schedule="constant",
          progress=False)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    reference.train()
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
