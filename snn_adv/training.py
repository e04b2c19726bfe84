"""Training for every kind of classifier: ANN (SGD or Adam, step or cosine schedule) and SNN-BP (surrogate-gradient
BPTT through the multistep neurons; Adam, lr 1e-4, Rathi et al. 2020). The loop is the same because both kinds
map images in [0, 1] to logits; only the defaults differ (:func:`train_ann`, :func:`train_snn`).

Memory of BPTT. Autograd keeps, per neuron layer, the pre-reset membrane ``h`` for all T (the fused
:class:`~snn_adv.neurons.LeakyLIFNode` stores only ``h``, not spikes, resets or surrogate values), and each conv or
linear layer keeps its input ``[T, N, ...]``: memory grows as ``T x batch``. Measured (saved-tensor hooks, VGG5 on
3x32x32): 3.0 MiB per image and timestep, so T = 100 needs 9.5 GiB at batch 32 and 19 GiB at batch 64.
``micro_batch`` splits every batch into pieces whose gradients are accumulated before the optimiser step: the
update is the full batch's while only ``T x micro_batch`` activations are alive, so ``batch_size=64,
micro_batch=32`` (or 16: 4.7 GiB) trains VGG5 at T = 100 on a 24 GiB GPU.
"""
from __future__ import annotations

import itertools
import math
import pickle
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .adversarial_training import ADVERSARIAL_SECTION, AdversarialTraining
from .classifier import ImageClassifier
from .io import PathLike, atomic_write
from .progress import describe, log, progress as progress_bar
from .schema import FLAG, POSITIVE, POSITIVE_INT, Value
from .validation import check_choice, check_positive, check_positive_int

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TRAIN_FIELDS", "evaluate_clean", "lr_factor", "seed_everything",
           "train", "train_ann", "train_snn"]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
#: arithmetic of the training forward: float32, or bfloat16 autocast (mixed precision: weights, optimiser and the
#: backward's accumulation stay float32; about 1.9x faster for VGG5 on a CPU with AVX-512 BF16)
PRECISIONS = ("float32", "bfloat16")
#: the keyword arguments of :func:`train` a config's model recipe may set, and what each may hold (the model zoo
#: sets seed, progress and checkpoint itself; a test holds this to train's signature)
TRAIN_FIELDS = {"epochs": POSITIVE_INT, "lr": Value("number", minimum=1e-12), "optimizer": Value("str", choices=OPTIMIZERS),
                "schedule": Value("str", choices=SCHEDULES), "momentum": POSITIVE, "weight_decay": POSITIVE,
                "micro_batch": POSITIVE_INT, "max_batches": POSITIVE_INT, "nesterov": FLAG,
                "warmup_epochs": Value("int", minimum=0), "precision": Value("str", choices=PRECISIONS),
                "adversarial": ADVERSARIAL_SECTION}


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (weight init, dropout, augmentation, Poisson draws
    of unseeded encoders). Data order is seeded separately by the loader's own generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_clean(model: ImageClassifier, loader: Iterable, max_batches: Optional[int] = None, progress: bool = False) -> Dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` of ``model`` (in eval mode, no gradients) over ``loader``."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    batches = itertools.islice(loader, max_batches) if max_batches is not None else loader
    with torch.no_grad():
        for images, labels in progress_bar(batches, "evaluate", unit="batch", enabled=None if progress else False):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    model.train(was_training)
    if count == 0:
        raise ValueError("argument 'loader' yielded no batches")
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _optimizer(params, name: str, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if nesterov:
        raise ValueError("argument 'nesterov' = True: only for optimizer 'sgd'")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def lr_factor(epoch: int, schedule: str, epochs: int, warmup_epochs: int = 0) -> float:
    """Multiplier of the base lr in epoch ``epoch`` (0-based): a linear warm-up ``(epoch + 1) / (warmup_epochs + 1)``
    for the first ``warmup_epochs``, then over the remaining ``R = epochs - warmup_epochs`` epochs (``e`` counted
    from the end of the warm-up): cosine ``(1 + cos(pi e / R)) / 2``; step: x0.1 at 50 % and x0.01 at 75 % of ``R``;
    constant 1."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    e, remaining = epoch - warmup_epochs, epochs - warmup_epochs
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / remaining))
    if schedule == "step":
        milestones = sorted({max(1, int(remaining * 0.5)), max(1, int(remaining * 0.75))})
        return 0.1 ** sum(e >= m for m in milestones)
    return 1.0


def train(
    model: ImageClassifier,
    train_loader: Iterable,
    test_loader: Optional[Iterable] = None,
    epochs: int = 10,
    optimizer: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    nesterov: bool = False,
    warmup_epochs: int = 0,
    seed: int = 0,
    micro_batch: Optional[int] = None,
    max_batches: Optional[int] = None,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[Dict[str, float]], None]] = None,
    on_epoch_start: Optional[Callable[[int], None]] = None,
    checkpoint: Optional[PathLike] = None,
    precision: str = "float32",
    adversarial: Optional[Mapping[str, Any]] = None,
) -> List[Dict[str, float]]:
    """Train ``model`` in place with cross-entropy on its logits; returns one record per epoch
    ``{epoch, lr, train_loss, train_accuracy, test_loss, test_accuracy}`` (test entries when ``test_loader``).

    :param optimizer: ``'sgd'`` (with ``momentum``, Nesterov's if ``nesterov``) or ``'adam'``.
    :param schedule: per-epoch lr schedule ``'cosine'``, ``'step'`` or ``'constant'`` after ``warmup_epochs`` of
        linear warm-up (:func:`lr_factor`).
    :param seed: seeds the global generators first (dropout, augmentation, unseeded Poisson draws).
    :param micro_batch: split each batch into pieces of this size and accumulate gradients (bounds BPTT memory).
    :param max_batches: stop each epoch after this many batches (quick runs).
    :param on_epoch_end: called with each epoch's record.
    :param on_epoch_start: called with each epoch's number (from 1) before it runs, resumed or not (e.g. a
        sampler's ``set_epoch``).
    :param precision: ``'float32'``, or ``'bfloat16'`` for the forward under :func:`torch.autocast` (mixed
        precision; see :data:`PRECISIONS`), the adversarial examples' crafting included (their forwards and
        backwards are most of an adversarial epoch's arithmetic; the examples themselves stay float32, as mixed
        precision adversarial training does, Wong et al. 2020). Evaluation is unaffected: a trained model runs in
        float32.
    :param adversarial: adversarial training (:class:`~snn_adv.adversarial_training.AdversarialTraining` or a mapping
        of its fields: ``method`` ``'pgd'`` (Madry), ``'fast'`` (FGSM with a random start, Wong et al.) or
        ``'trades'`` or ``'trades-rfgsm'`` (Ozdenizci and Legenstein's), ``eps``, ``alpha``, ``steps``, ``beta``, ``eot``, ``grad_mode``): each batch is crafted on the
        model being trained; ``train_loss`` / ``train_accuracy`` are then the method's loss and accuracy.
    :param checkpoint: a file holding the training state after each epoch (model, optimiser, schedule, history and
        every random generator), written atomically. Where it exists, training resumes after its last epoch, so a
        killed run loses at most the epoch in progress and ends with the same weights as an uninterrupted one. It
        is refused if it was written with other training arguments.
    """
    epochs = check_positive_int("epochs", epochs)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("precision", precision, PRECISIONS)
    lr, weight_decay = check_positive("lr", lr), float(weight_decay)
    if weight_decay < 0:
        raise ValueError(f"argument 'weight_decay' = {weight_decay}: must be >= 0")
    micro_batch = check_positive_int("micro_batch", micro_batch) if micro_batch is not None else None
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or not 0 <= warmup_epochs < epochs:
        raise ValueError(f"argument 'warmup_epochs' = {warmup_epochs!r}: must be an integer in [0, epochs - 1] = [0, {epochs - 1}]")
    recipe = AdversarialTraining.from_spec(adversarial)
    seed_everything(seed)
    device = _device_of(model)
    crafting = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, optimizer, lr, momentum, weight_decay, bool(nesterov))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: lr_factor(epoch, schedule, epochs, warmup_epochs))
    history: List[Dict[str, float]] = []
    arguments = {"epochs": epochs, "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                 "schedule": schedule, "nesterov": bool(nesterov), "warmup_epochs": warmup_epochs, "seed": seed,
                 "micro_batch": micro_batch, "max_batches": max_batches, "precision": precision}
    if recipe is not None:
        arguments["adversarial"] = recipe.settings()
    if checkpoint is not None and Path(checkpoint).is_file():
        history = _resume(checkpoint, arguments, model, opt, sched)
        if progress:
            log(f"train {describe(model)}: resumed from {Path(checkpoint).name} after epoch {len(history)}")
    elif progress:
        log(f"train {describe(model)} (seed {seed}): {epochs} epochs, {optimizer} lr {lr:g}")
    for epoch in range(len(history) + 1, epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        loss_sum, correct, count = 0.0, 0, 0
        batches = itertools.islice(train_loader, max_batches) if max_batches is not None else train_loader
        bar = progress_bar(batches, f"epoch {epoch}/{epochs}", unit="batch", enabled=None if progress else False,
                           total=max_batches if max_batches is not None else _len_or_none(train_loader))
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            opt.zero_grad(set_to_none=True)
            size = micro_batch or len(labels)
            for piece in range(0, len(labels), size):
                x, y = images[piece : piece + size], labels[piece : piece + size]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    crafted = None if recipe is None else recipe.craft(crafting, x, y)  # the attack's forwards too
                    if recipe is None:
                        logits = model(x)
                        loss = F.cross_entropy(logits, y, reduction="sum")
                    else:
                        loss, logits = recipe.loss(model, x, y, crafted)
                (loss / len(labels)).backward()
                loss_sum += loss.item()
                correct += (logits.argmax(1) == y).sum().item()
            count += len(labels)
            opt.step()
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}: lower 'lr'")
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{correct / count:.3f}")
        if count == 0:
            raise ValueError(f"argument 'train_loader' yielded no images in epoch {epoch} (an empty dataset or "
                             "subset, or a loader that is exhausted after one pass): nothing to train on")
        record = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / count,
                  "train_accuracy": correct / count}
        sched.step()
        if test_loader is not None:
            test = evaluate_clean(model, test_loader)
            record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        history.append(record)
        if progress:
            log(f"  {describe(model)} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in record.items()))
        if checkpoint is not None and epoch < epochs:
            _save_training_state(checkpoint, arguments, model, opt, sched, history)
        if on_epoch_end is not None:
            on_epoch_end(record)
    model.eval()
    return history


def _save_training_state(path: PathLike, arguments: Dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
                         sched: Any, history: List[Dict[str, float]]) -> None:
    """Write everything the next epoch depends on (rank 0 only under torchrun)."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"arguments": arguments, "history": history, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "rng": {
                 "python": random.getstate(), "torch": torch.get_rng_state(),
                 # numpy's key array as a tensor, so that the file loads with torch's safe (weights-only) unpickler
                 "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}}
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def _resume(path: PathLike, arguments: Dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
            sched: Any) -> List[Dict[str, float]]:
    """Restore the state :func:`_save_training_state` wrote; return the finished epochs' history."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except pickle.UnpicklingError as error:
        raise ValueError(f"training checkpoint {str(path)!r} holds objects that safe loading refuses ({error!s:.120}): "
                         "delete it to train from scratch") from error
    if state["arguments"] != arguments:
        raise ValueError(f"training checkpoint {str(path)!r} was written with other training arguments "
                         f"({state['arguments']}, now {arguments}): delete it to train from scratch")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng = state["rng"]
    random.setstate(rng["python"])
    name, keys, position, has_gauss, cached_gaussian = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return list(state["history"])


def _len_or_none(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def train_ann(model: ImageClassifier, train_loader: Iterable, test_loader: Optional[Iterable] = None, **kwargs) -> List[Dict[str, float]]:
    """:func:`train` with the ANN defaults: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule."""
    return train(model, train_loader, test_loader, **kwargs)


def train_snn(model: ImageClassifier, train_loader: Iterable, test_loader: Optional[Iterable] = None, **kwargs) -> List[Dict[str, float]]:
    """:func:`train` with the SNN-BP defaults of Rathi et al.: Adam, lr 1e-4, no weight decay, constant lr.

    Start from :func:`snn_adv.conversion.hybrid_init` (converted net, thresholds x0.7, leak 0.99, small T).
    """
    for key, value in (("optimizer", "adam"), ("lr", 1e-4), ("weight_decay", 0.0), ("schedule", "constant")):
        kwargs.setdefault(key, value)
    return train(model, train_loader, test_loader, **kwargs)
