r"""The one evaluation engine: craft each adversarial batch once, score every target on every Poisson scoring seed.

For each batch of images (global indices ``i0 .. i0+B-1``) and each member ``m`` of the attack (one attack, or the
members of a :class:`~snn_adv.attacks.WorstCase`), the engine

1. crafts ``x_adv[m]`` on the crafting model (the target: whitebox; ``source``: blackbox) inside the *crafting
   stream* ``derive_seed(seed, "craft", i0, m)`` (the attack's random start and torch's global RNG: distinct per
   member) with the crafting model's encoders on ``derive_seed(seed, "craft-noise", i0)`` (the same for every
   member, so identical copies of a deterministic attack craft identical batches);
2. checks the threat model: ``x_adv`` in [0, 1] and, when the attack declares ``eps``, in the L-inf eps-ball;
3. scores every target on the clean batch and on every ``x_adv[m]``, once per scoring seed ``s``, each forward
   inside the *scoring stream* ``derive_seed(seed, "score", s, i0)``: every member and every target sees the same
   Poisson draw of seed ``s``, so a worst case is over attacks, never over noise. The clean outcomes depend on
   nothing else: a :class:`CleanMemo` shared by several evaluations pays them once per target and batch.

A sample is adversarially correct when it is correct on every member's batch. Streams depend on the global index
of the batch's first sample, so shards of a run (``start_index``) merge (:meth:`EvaluationResult.merge`) to the
unsharded result. The caller's RNG state and the models' own encoder seeds are restored afterwards.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..attacks import WorstCase
from ..attacks.base import VANISHING_RATIO
from ..attacks.budget import NORMS, perturbation_norm
from ..classifier import check_classifier
from ..encoding import fixed_noise_seed, is_stochastic, stochastic_encoders
from ..io import provenance
from ..module_state import frozen_parameters, preserved_modes
from ..progress import progress as progress_bar
from ..seeds import derive_seed
from ..validation import check_positive_int, check_seed
from .result import EvaluationResult

__all__ = ["CleanMemo", "Evaluator", "check_attack_protocol", "evaluate", "describe_attack", "describe_model",
           "model_fingerprint", "seeded_stream"]

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]
Data = Union[Batches, Tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------------------------------
def describe_model(model: nn.Module) -> Dict[str, Any]:
    """Kind, architecture and SNN settings of a classifier, for result files."""
    info: Dict[str, Any] = {"class": type(model).__name__, "kind": getattr(model, "kind", None), "arch": getattr(model, "arch", None)}
    if getattr(model, "kind", None) == "snn":
        info.update(timesteps=model.timesteps, leak=getattr(model, "leak", None), encoder=model.encoder.settings())
    return info


def describe_attack(attack: Any) -> Dict[str, Any]:
    """``attack.settings()`` when it has one (ours); else its class and scalar attributes (torchattacks)."""
    if hasattr(attack, "settings"):
        return attack.settings()
    scalars = {k: v for k, v in vars(attack).items() if isinstance(v, (int, float, str, bool)) and not k.startswith("_")}
    return {"name": type(attack).__name__, **scalars}


def check_attack_protocol(attack: Any, model: nn.Module) -> None:
    """Refuse an attack whose protocol does not fit ``model``: AutoAttack other than ``version='rand'`` on a
    stochastic model (a Poisson encoder). Takes an attack object or a config entry
    ``{"name": "torchattacks", "class": "AutoAttack", "kwargs": {...}}``; call it when a config is loaded.

    AutoAttack's ``'standard'`` version returns the clean image for every sample it did not fool under its own
    draw of the noise; its documented protocol for randomised models is ``'rand'`` (APGD with EOT).
    """
    if isinstance(attack, Mapping):
        is_autoattack = attack.get("name") == "torchattacks" and attack.get("class") == "AutoAttack"
        version = (attack.get("kwargs") or {}).get("version", "standard")
    else:
        is_autoattack = type(attack).__name__ == "AutoAttack"
        version = getattr(attack, "version", "standard")
    if is_autoattack and version != "rand" and is_stochastic(model):
        raise ValueError(f"attack AutoAttack version={version!r} on a stochastic model (Poisson encoder): its "
                         "protocol for randomised models is version='rand' (EOT); set kwargs.version = 'rand', or "
                         "evaluate a fixed draw inside snn_adv.fixed_noise(model)")


# --------------------------------------------------------------------------------------------------------------
# Clean outcomes shared between evaluations
# --------------------------------------------------------------------------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (any dtype, any device), for digests."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """A digest of everything a classifier's forward depends on: every parameter and buffer (names, dtypes, shapes,
    values, device), its printed module tree (neuron thresholds, leaks, layers), :func:`describe_model` (timesteps,
    encoder), its readout and its fixed noise seed. Two models with one fingerprint compute the same function."""
    digest = hashlib.sha256()
    text = [repr(model), describe_model(model), getattr(model, "readout", None), fixed_noise_seed(model)]
    digest.update(json.dumps(text, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{tensor.device}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


class CleanMemo:
    r"""Clean outcomes of targets per batch, shared by the evaluations of a study (pass it to :func:`evaluate`).

    A target's clean forward under scoring seed ``s`` runs alone in the scoring stream ``derive_seed(seed, "score",
    s, first)``: its outcome depends on the target, the batch and that stream, never on the attack or the source.
    An evaluation that shares the memo takes it from an earlier one instead of paying the forward again, so a
    study pays each target's clean forwards once, with identical numbers.

    Entries are keyed by the target's content (:func:`model_fingerprint`), the batch's images and labels, the engine
    seed, the scoring seed and the batch's first index: a changed target or batch is a miss, never a stale hit.
    """

    def __init__(self) -> None:
        self._outcomes: Dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._outcomes)

    @staticmethod
    def batch_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
        """A digest of a batch's images (shape, dtype, values) and labels."""
        digest = hashlib.sha256(f"{tuple(images.shape)}:{images.dtype}".encode())
        for tensor in (images, labels):
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()

    @staticmethod
    def key(fingerprint: str, batch_digest: str, seed: int, scoring_seed: int, first: int) -> str:
        return f"{fingerprint}:{batch_digest}:{seed}:{scoring_seed}:{first}"

    def get(self, key: str) -> Optional[torch.Tensor]:
        return self._outcomes.get(key)

    def put(self, key: str, outcome: torch.Tensor) -> None:
        self._outcomes[key] = outcome


# --------------------------------------------------------------------------------------------------------------
# Engine pieces
# --------------------------------------------------------------------------------------------------------------
def _is_attack(obj: Any) -> bool:
    """An attack object knows the model it crafts on (ours, torchattacks', :class:`WorstCase`)."""
    return hasattr(obj, "model") and callable(obj)


def _build_attack(attack: Any, crafting: nn.Module) -> Any:
    """The attack object: ``attack`` itself, or ``attack(crafting)`` for a factory (class, partial, function)."""
    if attack is None or _is_attack(attack) or isinstance(attack, (list, tuple)):
        return attack
    if callable(attack):
        built = attack(crafting)
        if not _is_attack(built):
            raise TypeError(f"argument 'attack': the factory {attack!r} returned {type(built).__name__}, not an attack "
                            "(an object with a .model, called as attack(images, labels))")
        return built
    raise TypeError(f"argument 'attack' = {attack!r}: must be None, an attack, a WorstCase, a list of attacks or a "
                    "factory model -> attack")


def _members(attack: Any) -> List[Any]:
    if attack is None:
        return []
    if isinstance(attack, WorstCase):
        return list(attack.attacks)
    if isinstance(attack, (list, tuple)):
        if not attack:
            raise ValueError("argument 'attack' = []: a worst case needs at least one attack")
        return list(attack)
    return [attack]


def _check_threat_model(adversarial: torch.Tensor, images: torch.Tensor, eps: Optional[float], name: str,
                        norm: str = "Linf") -> None:
    """An attack's output must have the images' shape, stay in [0, 1] and (when it declares eps) in its eps-ball
    (L-inf, or the attack's ``norm`` 'L2')."""
    if adversarial.shape != images.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(adversarial.shape)} for images {tuple(images.shape)}")
    if not torch.isfinite(adversarial).all() or adversarial.min() < 0 or adversarial.max() > 1:
        raise RuntimeError(f"attack {name} returned images outside [0, 1] (range [{adversarial.min().item():.9g}, "
                           f"{adversarial.max().item():.9g}])")
    if eps is not None:
        norm = norm if norm in NORMS else "Linf"
        distance = perturbation_norm(adversarial - images, norm).max().item()
        if distance > eps * (1 + 1e-6) + 1e-5:
            raise RuntimeError(f"attack {name} left the eps-ball: {norm} distance {distance:.6g} > eps = {eps:.6g}")


def _batches(data: Data, batch_size: int) -> Batches:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if len(images) != len(labels):
            raise ValueError(f"argument 'data': {len(images)} images but {len(labels)} labels")
        return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError("argument 'data': must be an (images, labels) pair of tensors or an iterable of such batches")
    return data


def _check_seeds(scoring_seeds: Sequence[int]) -> List[int]:
    seeds = list(scoring_seeds) if isinstance(scoring_seeds, Iterable) and not isinstance(scoring_seeds, (str, bytes)) else None
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"argument 'scoring_seeds' = {scoring_seeds!r}: must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"argument 'scoring_seeds' = {scoring_seeds!r}: repeats a seed (identical draws would fake "
                         "the spread over seeds)")
    return seeds


@contextlib.contextmanager
def seeded_stream(seed: int, encoders: Sequence[Any], device: torch.device, encoder_seed: Optional[int] = None) -> Iterator[None]:
    """Seed torch's global RNG (forked: restored after the block) and the encoders' private streams.

    Encoders under :func:`~snn_adv.encoding.fixed_noise` keep their fixed draw.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for encoder in encoders:
            if fixed_noise_seed(encoder) is None:
                encoder.manual_seed(seed if encoder_seed is None else encoder_seed)
        yield


def _seed_attack(attack: Any, seed: Optional[int]) -> None:
    """Our attacks restart their stream (``manual_seed``); torchattacks' read their ``seed`` attribute per call."""
    if hasattr(attack, "manual_seed"):
        attack.manual_seed(seed)
    elif hasattr(attack, "seed"):
        attack.seed = seed


def _default_device(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class Evaluator:
    """One evaluation's settings, checked once: the targets scored, the model that crafts, the attack's members, the
    scoring seeds and the streams; :meth:`craft` and :meth:`score` do one batch each, :meth:`results` assembles the
    :class:`EvaluationResult` of every target. Arguments as :func:`evaluate`'s."""

    def __init__(self, targets: Union[nn.Module, Mapping[str, nn.Module]], attack: Any = None,
                 source: Optional[nn.Module] = None, *, seed: int = 0, scoring_seeds: Sequence[int] = (0,),
                 device: Optional[Union[str, torch.device]] = None, clean_memo: Optional[CleanMemo] = None,
                 crafting_key: Any = None):
        self.single = isinstance(targets, nn.Module)
        named = {"target": targets} if self.single else dict(targets) if isinstance(targets, Mapping) else None
        if not named or any(not isinstance(m, nn.Module) for m in named.values()):
            raise TypeError("argument 'targets': must be a classifier (torch.nn.Module) or a non-empty mapping name -> classifier")
        if source is not None and not isinstance(source, nn.Module):
            raise TypeError(f"argument 'source': must be None or a torch.nn.Module, got {type(source).__name__}")
        if source is None and len(named) > 1:
            raise ValueError(f"argument 'targets': {len(named)} targets without a 'source'; a whitebox evaluation "
                             "crafts on its one target: evaluate each target alone, or pass source=... (blackbox)")
        crafting = next(iter(named.values())) if source is None else source
        for name, model in [*named.items(), *([("source", source)] if source is not None else [])]:
            check_classifier(model, name)
        self.seed = check_seed("seed", seed, allow_none=False)
        self.seeds = _check_seeds(scoring_seeds)
        self.attack = _build_attack(attack, crafting)
        self.members = _members(self.attack)
        for member in self.members:
            check_attack_protocol(member, crafting)
            if getattr(member, "model", crafting) is not crafting:
                raise ValueError("argument 'attack': crafts on another model than "
                                 + ("'source'" if source is not None else "the target (pass source=... for a blackbox evaluation)"))
        self.fixed = {name: fixed_noise_seed(model) for name, model in named.items()}
        if len(self.seeds) > 1 and any(s is not None for s in self.fixed.values()):
            raise ValueError(f"argument 'scoring_seeds' = {self.seeds}: a target is under fixed_noise (one fixed draw); "
                             "scoring seeds would all give that draw: pass one scoring seed")
        self.targets, self.crafting, self.source = named, crafting, source
        self.device = torch.device(device) if device is not None else _default_device(next(iter(named.values())))
        self.crafting_key, self.clean_memo = crafting_key, clean_memo
        self.crafting_encoders = stochastic_encoders(crafting)
        self.target_encoders = {name: stochastic_encoders(model) for name, model in named.items()}
        self.names = [describe_attack(m).get("name", type(m).__name__) for m in self.members]
        self.fingerprints = {name: model_fingerprint(model) for name, model in named.items()} if clean_memo is not None else {}
        #: member -> smallest first-gradient ratio below VANISHING_RATIO seen so far
        self.vanishing: Dict[str, float] = {}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Models in eval mode with frozen parameters (any attack, torchattacks' and foolbox's too, wants dL/dx only);
        afterwards the encoders' and attacks' own seeds are restored."""
        encoders = {id(e): e for es in [self.crafting_encoders, *self.target_encoders.values()] for e in es}
        saved_seeds = {key: e.seed for key, e in encoders.items()}
        attack_seeds = [(m, m.seed) for m in self.members if hasattr(m, "seed")]
        try:
            with contextlib.ExitStack() as modes:
                for model in {id(m): m for m in [self.crafting, *self.targets.values()]}.values():
                    modes.enter_context(preserved_modes(model, training=False))
                    modes.enter_context(frozen_parameters(model))
                yield
        finally:
            for key, encoder in encoders.items():
                encoder.manual_seed(saved_seeds[key])
            for member, member_seed in attack_seeds:
                _seed_attack(member, member_seed)

    def craft(self, images: torch.Tensor, labels: torch.Tensor, first: int,
              rows: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Each member's adversarial batch, crafted in its stream (module docstring) on the samples ``rows`` flags
        (default all; the others keep their clean image), checked against the threat model."""
        adversarials = []
        for m, (member, name) in enumerate(zip(self.members, self.names)):
            if getattr(member, "eps", None) == 0 or (rows is not None and not rows.any()):
                adversarials.append(images)  # the 0-ball holds only the image; no sample to attack
                continue
            crafted_images, crafted_labels = (images, labels) if rows is None else (images[rows], labels[rows])
            key = () if self.crafting_key is None else (self.crafting_key,)
            craft = derive_seed(self.seed, "craft", *key, first, m)
            noise = derive_seed(self.seed, "craft-noise", *key, first)
            with seeded_stream(craft, self.crafting_encoders, self.device, encoder_seed=noise):
                _seed_attack(member, craft)
                crafted = member(crafted_images, crafted_labels).detach()
            ratio = getattr(member, "first_gradient_ratio", None)
            if ratio is not None and ratio < VANISHING_RATIO:
                self.vanishing[name] = min(ratio, self.vanishing.get(name, ratio))
            _check_threat_model(crafted, crafted_images, getattr(member, "eps", None), name,
                                getattr(member, "norm", "Linf"))
            adversarials.append(crafted if rows is None else images.index_put((rows,), crafted))
        return adversarials

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels: torch.Tensor, first: int,
              adversarials: Sequence[torch.Tensor]) -> Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]:
        """Per target: clean outcomes ``[B, S]`` and each member's adversarial outcomes ``[M, B, S]`` (None without
        members), every forward on the scoring stream of its seed; clean outcomes from the memo where it has them."""
        batch = CleanMemo.batch_digest(images, labels) if self.clean_memo is not None else ""
        scored = {}
        for name, model in self.targets.items():
            clean, per_member = [], []
            for s in self.seeds:
                def correct(x: torch.Tensor) -> torch.Tensor:
                    with seeded_stream(derive_seed(self.seed, "score", s, first), self.target_encoders[name], self.device):
                        return (model(x).argmax(1) == labels).cpu()

                key = None if self.clean_memo is None else self.clean_memo.key(self.fingerprints[name], batch, self.seed, s, first)
                clean_outcome = None if key is None else self.clean_memo.get(key)
                if clean_outcome is None:
                    clean_outcome = correct(images)
                    if key is not None:
                        self.clean_memo.put(key, clean_outcome)
                clean.append(clean_outcome)
                per_member.append([clean_outcome if x is images else correct(x) for x in adversarials])
            members = (np.stack([torch.stack([p[m] for p in per_member], 1).numpy() for m in range(len(self.members))])
                       if self.members else None)
            scored[name] = (torch.stack(clean, 1).numpy(), members)
        return scored

    def results(self, index: np.ndarray, labels: np.ndarray, clean: Mapping[str, np.ndarray],
                member_correct: Mapping[str, Optional[np.ndarray]], batch_size: int,
                start_index: int) -> Dict[str, EvaluationResult]:
        """The result of every target from its outcomes over all batches (clean ``[N, S]``, members ``[M, N, S]``)."""
        members = self.members
        whitebox = self.source is None or (len(self.targets) == 1 and self.source is next(iter(self.targets.values())))
        setting = "clean" if not members else "whitebox" if whitebox else "blackbox"
        attack_info = None if not members else (
            describe_attack(self.attack) if isinstance(self.attack, WorstCase) or len(members) == 1
            else {"name": "worst_case", "members": [describe_attack(m) for m in members]})
        results = {}
        for name, model in self.targets.items():
            outcomes = member_correct[name]
            settings = {
                "setting": setting,
                "attack": attack_info,
                "target": describe_model(model),
                "source": describe_model(self.crafting) if members else None,
                "seed": self.seed,
                "scoring_seeds": self.seeds,
                "batch_size": batch_size,
                "start_index": start_index,
                "noise": None if self.fixed[name] is None else f"fixed draw (seed {self.fixed[name]})",
                "provenance": provenance(),
            }
            if self.vanishing:  # the attack warned; the result says so too (no key when every gradient was usable)
                settings["vanishing_gradient"] = {"members": dict(self.vanishing), "threshold": VANISHING_RATIO}
            results[name] = EvaluationResult(index, labels, clean[name], outcomes.all(0) if members else clean[name].copy(),
                                             outcomes if len(members) > 1 else None, self.seeds, settings)
        return results


def evaluate(
    targets: Union[nn.Module, Mapping[str, nn.Module]],
    data: Data,
    attack: Any = None,
    source: Optional[nn.Module] = None,
    *,
    seed: int = 0,
    scoring_seeds: Sequence[int] = (0,),
    batch_size: int = 128,
    start_index: int = 0,
    max_samples: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = True,
    clean_memo: Optional[CleanMemo] = None,
    active: Optional[Union[Sequence[bool], np.ndarray, torch.Tensor]] = None,
    keep_adversarial: bool = False,
    crafting_key: Any = None,
) -> Union[EvaluationResult, Dict[str, EvaluationResult]]:
    """Clean and adversarial accuracy of one or several targets, per sample and per scoring seed.

    :param targets: a classifier of images in [0, 1] (ANN or SNN), or a mapping name -> classifier (the result is
        then a dict with the same keys).
    :param data: an iterable of ``(images, labels)`` batches (a DataLoader, a shard of one), or one
        ``(images, labels)`` pair of tensors split into ``batch_size`` batches.
    :param attack: ``None`` (clean accuracy only); an attack ``attack(images, labels) -> adversarial`` with a
        ``.model`` (ours, torchattacks'); a :class:`~snn_adv.attacks.WorstCase` or a list of attacks (a sample is
        adversarially correct only if it survives every member); or a factory ``model -> attack`` (a class, a
        ``functools.partial``, a function) built on the crafting model.
    :param source: the crafting model. ``None``: whitebox, crafted on the target (exactly one target). A model:
        blackbox (transfer), crafted once and scored on every target.
    :param seed: base seed of the crafting and scoring streams (see the module docstring).
    :param scoring_seeds: the Poisson seeds each target is scored on (distinct integers).
    :param start_index: global index of this shard's first sample (sharded runs).
    :param max_samples: stop after this many samples.
    :param device: where to run (default: the first target's device).
    :param clean_memo: clean outcomes shared with other evaluations of the same targets (:class:`CleanMemo`): each
        target's clean forwards are taken from it where an earlier evaluation paid them, and stored for later ones.

    :param active: one flag per sample of ``data`` (in order): the attack crafts only on the flagged samples (a
        cascade attacking the survivors of earlier attacks); the others are scored as their clean images. Scoring
        still runs on whole batches, so every sample keeps the Poisson draw it has in an unrestricted evaluation.
    :param crafting_key: a name mixed into the crafting streams only (``derive_seed(seed, "craft", crafting_key,
        i0, m)``): evaluations with different keys craft from independent random starts and draws while scoring
        on the same Poisson draws (the protocol's stages and certificate). ``None``: the streams above.
    :param keep_adversarial: attach the adversarial images ``[M, N, ...]`` (CPU) of every member as the results'
        ``adversarial_examples`` (not saved with them).

    A member that declares ``eps = 0`` is not run: the 0-ball holds only the image, which is then its adversarial
    example, scored as the clean image (the same stream: the same outcome).
    :raises ValueError: on bad arguments or no data; ``RuntimeError`` when an attack breaks the threat model.
    """
    evaluator = Evaluator(targets, attack, source, seed=seed, scoring_seeds=scoring_seeds, device=device,
                          clean_memo=clean_memo, crafting_key=crafting_key)
    if isinstance(start_index, bool) or not isinstance(start_index, int) or start_index < 0:
        raise ValueError(f"argument 'start_index' = {start_index!r}: must be an integer >= 0")
    batch_size = check_positive_int("batch_size", batch_size)
    if max_samples is not None:
        max_samples = check_positive_int("max_samples", max_samples)
    active = None if active is None else torch.as_tensor(np.asarray(active, dtype=bool))
    names = list(evaluator.targets)
    index: List[np.ndarray] = []
    labels_seen: List[np.ndarray] = []
    clean: Dict[str, List[np.ndarray]] = {name: [] for name in names}
    member_correct: Dict[str, List[np.ndarray]] = {name: [] for name in names}
    kept: List[torch.Tensor] = []
    n_done = 0
    bar = progress_bar(_batches(data, batch_size), "evaluate", unit="batch", enabled=None if progress else False)
    try:
        with evaluator.session():
            for images, labels in bar:
                if max_samples is not None and n_done >= max_samples:
                    break
                if max_samples is not None:
                    images, labels = images[: max_samples - n_done], labels[: max_samples - n_done]
                images, labels = images.to(evaluator.device), labels.to(evaluator.device)
                first = start_index + n_done
                rows = None if active is None else _active_rows(active, n_done, len(labels)).to(evaluator.device)
                adversarials = evaluator.craft(images, labels, first, rows)
                if keep_adversarial and evaluator.members:
                    kept.append(torch.stack(adversarials).cpu())
                for name, (clean_batch, members_batch) in evaluator.score(images, labels, first, adversarials).items():
                    clean[name].append(clean_batch)
                    if members_batch is not None:
                        member_correct[name].append(members_batch)
                index.append(np.arange(first, first + len(labels)))
                labels_seen.append(labels.cpu().numpy())
                n_done += len(labels)
    finally:
        bar.close()
    if n_done == 0:
        raise ValueError("argument 'data': yielded no samples")
    results = evaluator.results(
        np.concatenate(index), np.concatenate(labels_seen), {name: np.concatenate(clean[name]) for name in names},
        {name: np.concatenate(member_correct[name], 1) if evaluator.members else None for name in names},
        batch_size, start_index)
    if keep_adversarial:
        for result in results.values():
            result.adversarial_examples = torch.cat(kept, 1) if kept else None
    return results["target"] if evaluator.single else results


def _active_rows(active: torch.Tensor, done: int, count: int) -> torch.Tensor:
    """The flags of samples ``done .. done+count-1``; refused when ``active`` has fewer."""
    if len(active) < done + count:
        raise ValueError(f"argument 'active': {len(active)} flags for at least {done + count} samples")
    return active[done:done + count]
