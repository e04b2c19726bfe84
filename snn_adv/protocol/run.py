r"""The protocol's cascade on the one evaluation engine: :func:`robust_accuracy`.

Every stage is one :func:`~snn_adv.evaluation.evaluate` call with the same engine ``seed``, so every stage scores
image ``i`` under scoring seed ``s`` on the same Poisson draw (common random numbers), and each stage crafts only
on the images that still have a robust (image, seed) pair (``active``): the pair ``(i, s)`` is robust after
stage ``k`` when it is clean-correct and correct on every stage's adversarial image under seed ``s``,
``robust_k[i, s] = clean[i, s] AND_{j <= k} correct_j[i, s]``. Stages craft from independent streams
(``crafting_key``). Each stage's result, cost and adversarial images are written to ``out/stages/`` as soon as it
ends (a kill costs at most the stage in progress; a rerun reads them back and writes the same report).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..attacks import AdaptedSpikingClassifier, NoInputGradientError
from ..attacks.apgd import margin
from ..attacks.gradients import gradient_mode
from ..classifier import check_classifier
from ..encoding import is_stochastic, stochastic_encoders
from ..evaluation.checks import Check, check_large_eps
from ..evaluation.engine import CleanMemo, evaluate, model_fingerprint, seeded_stream
from ..evaluation.result import EvaluationResult, compare
from ..io import atomic_write_bytes, atomic_write_json, provenance
from ..module_state import frozen_parameters, preserved_modes
from ..neurons import spiking_neurons
from ..progress import log
from ..seeds import canonical_json
from ..stats import paired_difference
from ..validation import check_fraction, check_positive_int
from .battery import CERTIFICATE, DEFAULT_VERSION, LARGE_EPS, VANISHING, Stage, battery_digest, large_eps_attack, stages_of
from .report import ProtocolReport, StageRecord

__all__ = ["CostMeter", "gradient_probe", "robust_accuracy", "vanishing_gradient_check"]

Data = Union[Tuple[torch.Tensor, torch.Tensor], Sequence[Tuple[torch.Tensor, torch.Tensor]]]


# --------------------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _encoder_seeds_kept(encoders: Sequence[Any]) -> Iterator[None]:
    """Give the encoders their seeds back after the block (a probe re-seeds their streams)."""
    saved = [e.seed for e in encoders]
    try:
        yield
    finally:
        for encoder, seed in zip(encoders, saved):
            encoder.manual_seed(seed)


def gradient_probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                   seed: int = 0) -> Dict[str, np.ndarray]:
    r"""The vanishing-gradient probe, per clean-correct image (margin ``m = z_y - max_{j != y} z_j > 0``; every
    forward on the same draw, seeded by ``seed``, so only the input differs):

    - ``ratio``: ``eps * |grad_x m|_1 / m``, the first-order change of the margin over the eps-ball relative to it
      (information: sign attacks ignore the gradient's scale);
    - ``drop_gradient``: ``(m(x) - m(x')) / m(x)`` at ``x' = clip(x - eps * sign(grad_x m))``, one sign step down
      the gradient (0 where the gradient is 0);
    - ``drop_random``: the same at ``x' = clip(x + eps * r)``, ``r`` uniform random signs (seeded).

    A gradient that tells an attack anything gives ``drop_gradient > drop_random``."""
    encoders = stochastic_encoders(model)
    signs = 2.0 * torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(seed)) - 1.0

    def margin_of(x: torch.Tensor) -> torch.Tensor:
        with seeded_stream(seed, encoders, images.device):
            return margin(model(x), labels)

    with _encoder_seeds_kept(encoders), preserved_modes(model, training=False), frozen_parameters(model), \
            gradient_mode(model, "bptt"):
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            m = margin_of(x)
            grad = torch.autograd.grad(m.sum(), x, allow_unused=True)[0] if m.requires_grad else None
        grad = torch.zeros_like(images) if grad is None else grad
        with torch.no_grad():
            down = margin_of((images - eps * grad.sign()).clamp(0, 1))
            random = margin_of((images + eps * signs.to(images)).clamp(0, 1))
    m = m.detach()
    correct = m > 0
    scale = m.abs().clamp(min=1e-12)
    probe = {"ratio": eps * grad.abs().flatten(1).sum(1) / scale, "drop_gradient": (m - down) / scale,
             "drop_random": (m - random) / scale}
    return {name: values[correct].cpu().numpy() for name, values in probe.items()}


def vanishing_gradient_check(probe: Mapping[str, np.ndarray], seed: int = 0) -> Check:
    """``vanishing_gradient`` from a :func:`gradient_probe`: passes when one sign step down the gradient lowers the
    margin more than a random sign step on significantly more images than the other way round (one-sided sign
    test, exact, at ``VANISHING['level']``: per image only which step lowered the margin more counts, so a few
    images with tiny margins cannot swamp it); no verdict (``None``) on fewer images than the test needs to decide
    (``0.5 ** n >= 1 - level``: 4 at 95 %)."""
    n = len(probe["ratio"])
    if 0.5 ** n >= 1 - VANISHING["level"]:  # even n images all in favour could not reach significance
        return Check("vanishing_gradient", None, f"{n} clean-correct images to probe: too few for the test to decide")
    better = probe["drop_gradient"] > probe["drop_random"]
    worse = probe["drop_gradient"] < probe["drop_random"]
    comparison = paired_difference(better.astype(float), worse.astype(float), VANISHING["level"], "greater", seed)
    informative = comparison.significant(VANISHING["level"])
    median = float(np.median(probe["ratio"]))
    return Check("vanishing_gradient", informative,
                 f"over {n} clean-correct images, one sign step of eps down the margin's gradient lowers the margin "
                 f"more than a random sign step on {int(better.sum())} and less on {int(worse.sum())} (mean drop "
                 f"{100 * probe['drop_gradient'].mean():.1f} % of the margin against "
                 f"{100 * probe['drop_random'].mean():.1f} %; sign test {comparison})"
                 + ("" if informative else " -- not significantly more often: the gradient tells an attack nothing")
                 + f"; median eps*|grad margin|_1/margin {median:.3g}",
                 {"comparison": comparison.to_dict(), "median_ratio": median})


class CostMeter:
    """Counts the images passed through the given models: with autograd recording (forward and backward) or not."""

    def __init__(self, models: Sequence[nn.Module]):
        self.gradient = self.forward = 0
        self._handles = [m.register_forward_pre_hook(self._count) for m in {id(m): m for m in models}.values()]

    def _count(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        n = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else 0
        if torch.is_grad_enabled() and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.gradient += n
        else:
            self.forward += n

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> "CostMeter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Replay:
    """An "attack" that returns stored adversarial images, in order, for re-scoring them on fresh draws."""

    name = "replay"

    def __init__(self, model: nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, eps: float, stage: str):
        self.model, self.clean, self.adversarial, self.eps, self.stage = model, clean, adversarial, eps, stage
        self.cursor = 0

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "eps": self.eps}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = slice(self.cursor, self.cursor + len(images))
        if not torch.equal(images.cpu(), self.clean[rows]):
            raise RuntimeError("replay: called on other images than those it stores")
        self.cursor += len(images)
        return self.adversarial[rows].to(images.device)


# --------------------------------------------------------------------------------------------------------------
# Resumable stage files
# --------------------------------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _StageStore:
    """``out/stages/NN-name.json`` (record, result, key, digests) and ``.pt`` (adversarial images); nothing on disk
    without ``out``. A file of other inputs (another key) or with a wrong digest is refused, never used."""

    def __init__(self, out: Optional[Path]):
        self.folder = None if out is None else Path(out) / "stages"

    def _paths(self, position: int, name: str) -> Tuple[Path, Path]:
        stem = f"{position:02d}-{name.replace('[', '-').replace(']', '')}"
        return self.folder / f"{stem}.json", self.folder / f"{stem}.pt"

    def load(self, position: int, name: str, key: str) -> Optional[Tuple[Dict, EvaluationResult, Optional[Dict]]]:
        if self.folder is None:
            return None
        path, tensors = self._paths(position, name)
        if not path.exists():
            return None
        stored = json.loads(path.read_text())
        body = {k: v for k, v in stored.items() if k != "digest"}
        if stored.get("digest") != _digest(canonical_json(body).encode()):
            raise ValueError(f"{path}: its content does not match its digest (edited or damaged); delete it to "
                             "recompute the stage")
        if body["key"] != key:
            raise ValueError(f"{path}: computed for other inputs (model, data, seeds, eps or battery); use another "
                             "--out folder, or delete the folder's stages/ to recompute")
        examples = None
        if body["examples_digest"] is not None:
            data = tensors.read_bytes() if tensors.exists() else b""
            if _digest(data) != body["examples_digest"]:
                raise ValueError(f"{tensors}: missing or damaged adversarial images; delete {path.name} to recompute")
            examples = torch.load(io.BytesIO(data), weights_only=True)
        return body["record"], EvaluationResult.from_dict(body["result"]), examples

    def save(self, position: int, name: str, key: str, record: Dict, result: EvaluationResult,
             examples: Optional[Dict]) -> None:
        if self.folder is None:
            return
        path, tensors = self._paths(position, name)
        examples_digest = None
        if examples is not None:
            buffer = io.BytesIO()
            torch.save(examples, buffer)
            atomic_write_bytes(tensors, buffer.getvalue())
            examples_digest = _digest(buffer.getvalue())
        body = {"key": key, "record": record, "result": result.to_dict(), "examples_digest": examples_digest}
        atomic_write_json(path, {**body, "digest": _digest(canonical_json(body).encode())})


# --------------------------------------------------------------------------------------------------------------
# The cascade
# --------------------------------------------------------------------------------------------------------------
def _tensors(data: Data) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
    else:
        batches = list(data)
        if not batches:
            raise ValueError("argument 'data': yielded no samples")
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"argument 'data': {len(images)} images and {len(labels)} labels; need as many, at least one")
    return images.detach().cpu(), labels.detach().cpu()


def _with_outcome(result: EvaluationResult, adversarial: np.ndarray, name: str) -> EvaluationResult:
    """``result`` with adversarial outcomes ``adversarial`` (a copy: a cumulative robust outcome at this point)."""
    return EvaluationResult(result.index, result.label, result.clean_correct, adversarial.copy(), None, result.scoring_seeds,
                            {**result.settings, "attack": {"name": name}})


def robust_accuracy(
    model: nn.Module,
    data: Data,
    eps: float = 8 / 255,
    norm: str = "Linf",
    version: str = DEFAULT_VERSION,
    sources: Optional[Mapping[str, nn.Module]] = None,
    *,
    seed: int = 0,
    scoring_seeds: Sequence[int] = (0, 1, 2),
    fresh_draws: int = 8,
    batch_size: int = 100,
    out: Optional[Union[str, Path]] = None,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> ProtocolReport:
    r"""Robust accuracy of ``model`` under the versioned battery ``version`` (:data:`~snn_adv.protocol.VERSIONS`),
    run as a cascade on the survivors, with a convergence certificate and self-checks.

    :param model: a classifier of images in [0, 1] (ANN, SNN, ``adapt``-ed stock SpikingJelly net, your own).
    :param data: ``(images, labels)`` tensors, or an iterable of such batches (held in memory).
    :param eps: L-infinity radius.
    :param norm: ``'Linf'`` (the only norm of the batteries so far).
    :param sources: name -> model: transfer stages crafted on each (e.g. the ANN an SNN was converted from).
    :param seed: engine seed: crafting and scoring streams (scoring draws are shared by every stage).
    :param scoring_seeds: the Poisson seeds each pair is scored on (a deterministic model needs only one).
    :param fresh_draws: K; the final survivors are re-scored on K further draws ("robust on every draw").
    :param out: folder for the resumable stage files and the report (``report.json``, ``table.md``, ``cost.png``).
        A stage resumed from a file that other code wrote (another source digest) is used, named in the report's
        ``provenance["stages_from_other_code"]`` (stage: commit) and warned about.
    :returns: the :class:`ProtocolReport`; its :meth:`~ProtocolReport.headline` is the one line to quote.
    :raises NoInputGradientError: when stock SpikingJelly neurons in ``eval()`` give no gradient (use ``adapt``).
    """
    check_classifier(model)
    if norm != "Linf":
        raise ValueError(f"argument 'norm' = {norm!r}: {version} is an L-infinity battery; use norm='Linf'")
    eps = check_fraction("eps", eps)
    fresh_draws = check_positive_int("fresh_draws", fresh_draws)
    sources = dict(sources or {})
    for name, source in sources.items():
        check_classifier(source, f"sources[{name!r}]")
    stages = stages_of(version, sources)
    images, labels = _tensors(data)
    n = len(images)
    device = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    _refuse_stock_neurons_without_gradient(model, images[:1].to(device), seed)
    random = is_stochastic(model, images[: min(8, n)].to(device))
    seeds = list(scoring_seeds)
    memo = CleanMemo()
    store = _StageStore(None if out is None else Path(out))
    common = dict(seed=seed, scoring_seeds=seeds, batch_size=batch_size, clean_memo=memo, progress=progress,
                  device=device)
    inputs = {"version": version, "battery": battery_digest(version), "eps": eps, "seed": seed, "scoring_seeds": seeds,
              "batch_size": batch_size, "model": model_fingerprint(model), "random": random,
              "sources": {k: model_fingerprint(v) for k, v in sources.items()},
              "data": CleanMemo.batch_digest(images, labels)}
    key = _digest(canonical_json(inputs).encode())
    here = provenance(seed=seed)
    other_code: Dict[str, str] = {}  # stage -> commit of the other code that wrote the file it was resumed from

    def run_stage(position: int, name: str, attack_of, crafting: nn.Module, active: np.ndarray, crafting_key: str):
        """One stage (cached): ``(record, result, examples)``."""
        nonlocal key
        key = _digest(canonical_json([key, name, crafting_key]).encode())
        cached = store.load(position, name, key)
        if cached is not None:
            written = cached[1].settings.get("provenance", {})
            if _code_of(written) != _code_of(here):
                other_code[name] = written.get("git_commit", "unknown")
            return cached
        start = time.perf_counter()
        status, reason, examples = "ran", None, None
        with CostMeter([model, crafting]) as meter:
            try:
                attack = attack_of() if active.any() else None
                result = evaluate(model, (images, labels), attack, source=None if crafting is model else crafting,
                                  active=active, keep_adversarial=attack is not None, crafting_key=crafting_key, **common)
                if attack is None:
                    status, reason = ("nothing left", "no robust pair left to attack") if position else ("clean", None)
            except NoInputGradientError as error:
                status, reason = "no input gradient", str(error)
                result = evaluate(model, (images, labels), None, **common)
        if status == "ran" and result.adversarial_examples is not None:
            rows = np.flatnonzero(active)
            examples = {"index": torch.as_tensor(rows), "images": result.adversarial_examples[0][rows].clone()}
        record = {"name": name, "status": status, "reason": reason, "attacked": int(active.sum()),
                  "gradient_passes": meter.gradient, "forward_passes": meter.forward,
                  "seconds": round(time.perf_counter() - start, 1)}
        store.save(position, name, key, record, result, examples)
        return record, result, examples

    # clean accuracy, then the stages, each on what the previous left robust
    records: List[StageRecord] = []
    clean_record, clean, _ = run_stage(0, "clean", lambda: None, model, np.zeros(n, dtype=bool), "clean")
    _remember_clean(memo, clean, model, images, labels, seed, batch_size)  # a resumed run pays what a fresh one pays
    robust = clean.clean_correct.copy()
    broken_by = np.where(robust, -1, -2)  # -2: clean misclassified, -1: robust, k: broken by stage k
    all_examples: Dict[str, Dict] = {}
    results: Dict[str, EvaluationResult] = {}
    for position, stage in enumerate(stages, 1):
        crafting = sources[stage.name[len("transfer["):-1]] if stage.transfer else model
        reason = stage.not_applicable(crafting)
        if reason is not None:
            records.append(StageRecord.not_applicable(stage, reason, _with_outcome(clean, robust, stage.name)))
            continue
        stage_random = random if crafting is model else is_stochastic(crafting, images[: min(8, n)].to(device))
        record, result, examples = run_stage(position, stage.name,
                                             lambda: stage.build(crafting, eps, stage_random), crafting,
                                             robust.any(1), stage.name)
        broken = robust & ~result.adversarial_correct
        broken_by[broken] = position
        robust &= result.adversarial_correct
        results[stage.name] = result
        if examples is not None:
            all_examples[stage.name] = examples
        records.append(StageRecord(stage.settings(), record, _with_outcome(clean, robust, stage.name), int(broken.sum())))
        log(f"protocol {version}: {stage.name}: {record['status']}, {int(broken.sum())} pairs broken, robust "
            f"{100 * robust.mean():.1f}% ({record['seconds']} s)")

    # convergence certificate: the gradient stage that broke the most pairs, again with more effort
    ran = [(r.broken, -i, stages[i]) for i, r in enumerate(records) if r.status == "ran" and not stages[i].gradient_free]
    before = _with_outcome(clean, robust, "battery")
    certificate: Dict[str, Any] = {"stage": None, **CERTIFICATE}
    if ran:
        strongest = max(ran, key=lambda item: item[:2])[2]
        crafting = sources[strongest.name[len("transfer["):-1]] if strongest.transfer else model
        stage_random = random if crafting is model else is_stochastic(crafting, images[: min(8, n)].to(device))
        record, result, examples = run_stage(
            len(stages) + 1, "certificate",
            lambda: strongest.build(crafting, eps, stage_random, CERTIFICATE["effort"], CERTIFICATE["restarts"]),
            crafting, robust.any(1), f"certificate:{strongest.name}")
        broken = robust & ~result.adversarial_correct
        broken_by[broken] = len(stages) + 1
        robust &= result.adversarial_correct
        if examples is not None:
            all_examples["certificate"] = examples
        after = _with_outcome(clean, robust, "battery + certificate")
        comparison = compare(before, after, alternative="greater")
        removed = before.adversarial_accuracy - after.adversarial_accuracy
        certificate.update(stage=strongest.name, record=record, broken=int(broken.sum()), removed=removed,
                           comparison=comparison.to_dict(),
                           converged=bool(removed <= 0.005 and not comparison.significant()))
        records.append(StageRecord({"name": "certificate", "attack": strongest.attack, "of": strongest.name},
                                   record, after, int(broken.sum())))
    final = _with_outcome(clean, robust, f"{version} battery")

    # robust on every draw: the survivors re-scored on fresh draws against every stage's adversarial image
    every_draw = None
    if random:
        survivors = np.flatnonzero(robust.any(1))
        every = robust.copy()
        if len(survivors):
            fresh = [max(seeds) + 1 + k for k in range(fresh_draws)]
            replays = []
            for name, ex in all_examples.items():
                position = {int(i): p for p, i in enumerate(ex["index"])}
                adversarial = images[survivors].clone()
                for row, i in enumerate(survivors):
                    if int(i) in position:
                        adversarial[row] = ex["images"][position[int(i)]]
                replays.append(_Replay(model, images[survivors], adversarial, eps, name))
            rescored = evaluate(model, (images[survivors], labels[survivors]), replays or None, seed=seed,
                                scoring_seeds=fresh, batch_size=batch_size, progress=progress, device=device,
                                crafting_key="fresh")
            on_every = (rescored.clean_correct & rescored.adversarial_correct).all(1)
            every[survivors] &= on_every[:, None]
        every_draw = _with_outcome(clean, every, "robust on every draw")

    # self-checks
    checks: List[Check] = []
    first = next((r for r in records if r.name == stages[0].name), None)
    own_ok = first is not None and first.status != "no input gradient"
    checks.append(Check("own_gradient", own_ok, "the model's own gradient reaches the input" if own_ok else
                        f"stage {stages[0].name}: {first.reason if first else 'did not run'}"))
    probe_rows = slice(0, min(VANISHING["images"], n))
    checks.append(vanishing_gradient_check(gradient_probe(model, images[probe_rows].to(device),
                                                          labels[probe_rows].to(device), eps, seed), seed))
    checks += _cascade_checks(records, stages, clean)
    large = run_stage(len(stages) + 2, "large-eps", lambda: large_eps_attack(model), model,
                      np.arange(n) < LARGE_EPS["images"], "large-eps")
    if large[0]["status"] == "ran":
        subset = large[1].restricted(np.arange(min(LARGE_EPS["images"], n)))
        checks.append(check_large_eps(subset, LARGE_EPS["eps"], LARGE_EPS["bound"]))
    else:
        checks.append(Check("large_eps_reaches_zero", False, f"large eps: {large[0]['reason']}"))

    report = ProtocolReport(version=version, battery=battery_digest(version), eps=eps, norm=norm, random=random,
                            fresh_draws=fresh_draws,
                            clean=clean, result=final, every_draw=every_draw, stages=records, certificate=certificate,
                            checks=checks, broken_by=broken_by, stage_names=[s.name for s in stages],
                            costs={"clean": clean_record, "large_eps": large[0]},
                            provenance={**here, **({"stages_from_other_code": other_code} if other_code else {})})
    if other_code:
        warnings.warn(f"robust_accuracy: resumed {len(other_code)} stage(s) from files written by other code "
                      f"({', '.join(f'{k} at {v}' for k, v in other_code.items())}); the report names them in "
                      f"provenance['stages_from_other_code']: delete those files to recompute them with this code",
                      stacklevel=2)
    if out is not None:
        report.save(out)
    log(report.headline())
    return report


def _code_of(provenance_record: Dict[str, Any]) -> Optional[str]:
    """What identifies the code that wrote a result: its source digest, else its commit."""
    return provenance_record.get("source_digest") or provenance_record.get("git_commit")


def _refuse_stock_neurons_without_gradient(model: nn.Module, images: torch.Tensor, seed: int) -> None:
    """Refuse, before any stage and whatever the clean accuracy, a model of stock SpikingJelly neurons in ``eval()``
    whose logits do not depend on the input in autograd (SpikingJelly 0.0.0.0.14's hard step): its message names the
    fix, ``snn_adv.adapt``. Stock neurons that do give a gradient in ``eval()`` are attacked like any other."""
    if isinstance(model, AdaptedSpikingClassifier) or not any(
            type(m).__module__.startswith("spikingjelly") and not m.training for m in spiking_neurons(model)):
        return
    encoders = stochastic_encoders(model)
    with _encoder_seeds_kept(encoders), preserved_modes(model, training=False), frozen_parameters(model), \
            torch.enable_grad(), seeded_stream(seed, encoders, images.device):
        connected = model(images.detach().requires_grad_(True)).requires_grad
    if not connected:
        raise NoInputGradientError(model, "the logits are not connected to the input in autograd")


def _remember_clean(memo: CleanMemo, clean: EvaluationResult, model: nn.Module, images: torch.Tensor,
                    labels: torch.Tensor, seed: int, batch_size: int) -> None:
    """Put the clean outcomes of ``clean`` (computed or read back) into ``memo``, batch by batch, as the engine
    stores them, so that no stage pays the clean forwards again."""
    fingerprint = model_fingerprint(model)
    for first in range(0, len(images), batch_size):
        rows = slice(first, first + batch_size)
        batch = CleanMemo.batch_digest(images[rows], labels[rows])
        for column, scoring_seed in enumerate(clean.scoring_seeds):
            memo.put(CleanMemo.key(fingerprint, batch, seed, scoring_seed, first),
                     torch.as_tensor(clean.clean_correct[rows, column]))


def _cascade_checks(records: Sequence[StageRecord], stages: Sequence[Stage], clean: EvaluationResult) -> List[Check]:
    """Whitebox not weaker than transfer, gradient-free not stronger: the suspicious stage broke significantly
    many pairs that every stage before it left robust (one-sided paired test of the cumulative outcomes before
    and after it; the later stage is credited with every earlier break, so only its own finds can fail it)."""
    checks = []
    by_name = {r.name: r for r in records}
    previous = clean
    for record, stage in zip(records, stages):
        if stage.transfer or stage.gradient_free:
            name = (f"whitebox_not_weaker_than_transfer[{stage.name[len('transfer['):-1]}]" if stage.transfer
                    else "gradient_free_not_stronger")
            if record.status != "ran":
                checks.append(Check(name, None, f"stage {stage.name}: {record.status}"))
            else:
                comparison = compare(previous, record.cumulative, alternative="greater")
                failed = comparison.significant()
                checks.append(Check(name, not failed, f"{stage.name} broke {record.broken} pairs the stages before it "
                                    f"left robust: {comparison}" + (" -- significant, possible gradient masking"
                                                                   if failed else ""),
                                    {"comparison": comparison.to_dict()}))
        previous = by_name[record.name].cumulative
    return checks
