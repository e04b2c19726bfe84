"""What an evaluation gives: :class:`EvaluationResult` (per-image, per-seed outcomes with their intervals; merged,
restricted, worst cases, saved and loaded) and the paired tests between results (:func:`compare`,
:func:`compare_to_bound`), built on the array-level statistics of :mod:`snn_adv.stats`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io import atomic_write_json
from ..stats import Comparison, accuracy_interval, bound_test, paired_difference

__all__ = ["EvaluationResult", "OUTCOMES", "compare", "compare_to_bound", "jsonable", "paired_outcomes"]


#: what :meth:`EvaluationResult.accuracy` can measure: clean, adversarial, robust (clean and adversarial correct)
OUTCOMES = ("clean", "adversarial", "robust")


def jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (keys sorted, other objects their ``str``): what results compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class EvaluationResult:
    r"""Per-sample outcomes of one target under one attack, on ``n`` images and ``S`` scoring seeds.

    :ivar index: [N] global indices of the images (sorted after :meth:`merge`).
    :ivar label: [N] their labels.
    :ivar clean_correct: [N, S] bool, correct on the clean image under scoring seed ``s``.
    :ivar adversarial_correct: [N, S] bool, correct on every member's adversarial image under seed ``s``.
    :ivar member_correct: [M, N, S] bool per member of a worst case, else None.
    :ivar scoring_seeds: the S scoring seeds.
    :ivar settings: how the numbers were made (attack, models, seeds, provenance).

    Accuracies average over images and seeds; intervals resample images (see :mod:`snn_adv.stats`).
    """

    def __init__(self, index, label, clean_correct, adversarial_correct, member_correct=None,
                 scoring_seeds: Sequence[int] = (0,), settings: Optional[Dict[str, Any]] = None):
        self.index = np.asarray(index, dtype=np.int64)
        self.label = np.asarray(label, dtype=np.int64)
        self.clean_correct = np.asarray(clean_correct, dtype=bool)
        self.adversarial_correct = np.asarray(adversarial_correct, dtype=bool)
        self.member_correct = None if member_correct is None else np.asarray(member_correct, dtype=bool)
        self.scoring_seeds = [int(s) for s in scoring_seeds]
        self.settings = dict(settings or {})
        #: [M, N, ...] adversarial images of each member, kept by ``evaluate(..., keep_adversarial=True)``
        self.adversarial_examples: Optional[torch.Tensor] = None
        n, s = len(self.index), len(self.scoring_seeds)
        for name, array, shape in [("label", self.label, (n,)), ("clean_correct", self.clean_correct, (n, s)),
                                   ("adversarial_correct", self.adversarial_correct, (n, s))]:
            if array.shape != shape:
                raise ValueError(f"argument '{name}': shape {array.shape}, expected {shape} (n images, S seeds)")
        if self.member_correct is not None and self.member_correct.shape[1:] != (n, s):
            raise ValueError(f"argument 'member_correct': shape {self.member_correct.shape}, expected [M, {n}, {s}]")

    # ---------------------------------------------------------------- numbers
    @property
    def n(self) -> int:
        """Number of images."""
        return len(self.index)

    def outcome(self, kind: str = "adversarial") -> np.ndarray:
        """[N, S] bool outcomes of ``kind`` (``'clean'``, ``'adversarial'`` or ``'robust'``)."""
        if kind == "clean":
            return self.clean_correct
        if kind == "adversarial":
            return self.adversarial_correct
        if kind == "robust":
            return self.clean_correct & self.adversarial_correct
        raise ValueError(f"argument 'kind' = {kind!r}: must be one of {', '.join(OUTCOMES)}")

    def per_image(self, kind: str = "adversarial") -> np.ndarray:
        """[N] per-image accuracy of ``kind``: the fraction of scoring seeds on which the image is correct."""
        return self.outcome(kind).mean(1)

    def accuracy(self, kind: str = "adversarial") -> float:
        """Accuracy of ``kind`` averaged over images and scoring seeds (NaN when empty)."""
        return float(self.outcome(kind).mean()) if self.n else float("nan")

    def accuracy_by_seed(self, kind: str = "adversarial") -> Dict[int, float]:
        """Accuracy of ``kind`` under each scoring seed."""
        return {s: float(v) for s, v in zip(self.scoring_seeds, self.outcome(kind).mean(0))}

    def member_accuracies(self) -> List[float]:
        """Adversarial accuracy of each member of a worst case (empty for a single attack)."""
        return [] if self.member_correct is None else [float(m.mean()) for m in self.member_correct]

    def confidence_interval(self, kind: str = "adversarial", level: float = 0.95) -> Tuple[float, float]:
        """``level`` interval of :meth:`accuracy` accounting for images and seeds: exact Clopper-Pearson when each
        image's outcome is the same on every seed, else the percentile bootstrap over images of the per-image mean
        over seeds (seeded: reproducible). See :func:`snn_adv.stats.accuracy_interval`."""
        return accuracy_interval(self.per_image(kind), level)

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy("clean")

    @property
    def adversarial_accuracy(self) -> float:
        return self.accuracy("adversarial")

    @property
    def robust_accuracy(self) -> float:
        return self.accuracy("robust")

    # ---------------------------------------------------------------- combining and storing
    @classmethod
    def merge(cls, results: Sequence["EvaluationResult"]) -> "EvaluationResult":
        """Join shards of one evaluation (any order) into the result of the unsharded run, samples sorted by index.

        :raises ValueError: on no results, different settings or scoring seeds, or an image in two shards.
        """
        results = list(results)
        if not results:
            raise ValueError("argument 'results' = []: need at least one result to merge")
        first = results[0]
        ignored = ("start_index", "provenance")
        common = {k: v for k, v in first.settings.items() if k not in ignored}
        for r in results[1:]:
            if r.scoring_seeds != first.scoring_seeds:
                raise ValueError(f"argument 'results': scoring seeds differ ({first.scoring_seeds} vs {r.scoring_seeds})")
            other = {k: v for k, v in r.settings.items() if k not in ignored}
            if jsonable(other) != jsonable(common):
                raise ValueError("argument 'results': shards of different evaluations (their settings differ)")
            if (r.member_correct is None) != (first.member_correct is None):
                raise ValueError("argument 'results': some shards have per-member outcomes, others not")
        index = np.concatenate([r.index for r in results])
        order = np.argsort(index, kind="stable")
        if len(np.unique(index)) != len(index):
            raise ValueError("argument 'results': an image index occurs in two shards")
        members = None if first.member_correct is None else np.concatenate([r.member_correct for r in results], 1)[:, order]
        settings = dict(first.settings, start_index=int(index.min()) if len(index) else 0)
        return cls(index[order], np.concatenate([r.label for r in results])[order],
                   np.concatenate([r.clean_correct for r in results])[order],
                   np.concatenate([r.adversarial_correct for r in results])[order], members, first.scoring_seeds,
                   settings)

    @classmethod
    def worst_case(cls, results: Sequence["EvaluationResult"], names: Optional[Sequence[str]] = None) -> "EvaluationResult":
        r"""The per-sample worst case over separate evaluations of one target on the same images (e.g. every attack
        of a table): correct on image ``i`` under scoring seed ``s`` only if correct under every evaluation,
        ``adversarial[i, s] = AND_k results[k].adversarial[i, s]`` (the members keep each one's outcomes).

        Meaningful because every evaluation of a target scores seed ``s`` of an image on the same Poisson draw
        (the engine's scoring streams): the worst case is then over attacks, never over noise. Identical clean
        outcomes in every result are required, and check just that (same target, images, seeds and draws).

        :raises ValueError: on fewer than two results, or results on other images, seeds or clean outcomes.
        """
        results = list(results)
        if len(results) < 2:
            raise ValueError(f"argument 'results': a worst case needs at least two results, got {len(results)}")
        first = results[0]
        for k, r in enumerate(results[1:], 1):
            if not (np.array_equal(r.index, first.index) and np.array_equal(r.label, first.label)
                    and r.scoring_seeds == first.scoring_seeds):
                raise ValueError(f"argument 'results': result {k} is on other images or scoring seeds than result 0")
            if not np.array_equal(r.clean_correct, first.clean_correct):
                raise ValueError(f"argument 'results': result {k} has other clean outcomes than result 0 (another "
                                 "target, or other Poisson draws): its worst case would be over noise")
        members = np.stack([r.adversarial_correct for r in results])
        attacks = [r.settings.get("attack") for r in results]
        settings = {"setting": first.settings.get("setting"), "target": first.settings.get("target"),
                    "attack": {"name": "per_sample_worst_case", "members": list(names) if names else attacks}}
        return cls(first.index, first.label, first.clean_correct, members.all(0), members, first.scoring_seeds,
                   settings)

    def restricted(self, index: Sequence[int]) -> "EvaluationResult":
        """This result on the images of global indices ``index`` (each one of its own), in that order: e.g. the
        images two evaluations on nested sets share, for a paired test between them.

        :raises ValueError: when an index is not among this result's images.
        """
        index = np.asarray(index, dtype=np.int64)
        position = {int(i): p for p, i in enumerate(self.index)}
        missing = [int(i) for i in index if int(i) not in position]
        if missing:
            raise ValueError(f"argument 'index': image(s) {missing[:5]} not in this result (it has {self.n} images)")
        rows = np.asarray([position[int(i)] for i in index], dtype=np.int64)
        members = None if self.member_correct is None else self.member_correct[:, rows]
        return EvaluationResult(index, self.label[rows], self.clean_correct[rows], self.adversarial_correct[rows],
                                members, self.scoring_seeds, self.settings)

    def summary(self, level: float = 0.95) -> Dict[str, Any]:
        """Accuracy and ``level`` interval of every kind, and the number of images and seeds."""
        out: Dict[str, Any] = {"n": self.n, "scoring_seeds": list(self.scoring_seeds), "level": level}
        for kind in OUTCOMES:
            low, high = self.confidence_interval(kind, level) if self.n else (float("nan"), float("nan"))
            out[kind] = {"accuracy": self.accuracy(kind), "low": low, "high": high}
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (outcomes as 0/1 lists); :meth:`from_dict` reads it back exactly."""
        return {
            "summary": self.summary(),
            "index": self.index.tolist(),
            "label": self.label.tolist(),
            "scoring_seeds": list(self.scoring_seeds),
            "clean_correct": self.clean_correct.astype(int).tolist(),
            "adversarial_correct": self.adversarial_correct.astype(int).tolist(),
            "member_correct": None if self.member_correct is None else self.member_correct.astype(int).tolist(),
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationResult":
        """Rebuild a result from :meth:`to_dict` (the always empty ``checks`` list of older files is ignored)."""
        missing = [k for k in ("index", "label", "scoring_seeds", "clean_correct", "adversarial_correct") if k not in data]
        if missing:
            raise ValueError(f"argument 'data': not an evaluation result, missing keys {missing}")
        seeds = data["scoring_seeds"]
        n, s = len(data["index"]), len(seeds)
        shape = lambda key: np.asarray(data[key], dtype=bool).reshape(n, s)  # noqa: E731 (empty lists keep shape)
        members = data.get("member_correct")
        return cls(data["index"], data["label"], shape("clean_correct"), shape("adversarial_correct"),
                   None if members is None else np.asarray(members, dtype=bool).reshape(-1, n, s), seeds,
                   data.get("settings"))

    def save(self, path) -> None:
        """Write :meth:`to_dict` atomically as JSON."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "EvaluationResult":
        """Read a result written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        def part(kind: str) -> str:
            low, high = self.confidence_interval(kind)
            return f"{kind}={100 * self.accuracy(kind):.1f}% [{100 * low:.1f}, {100 * high:.1f}]"

        attack = self.settings.get("attack") or {}
        head = f"EvaluationResult(n={self.n}, seeds={len(self.scoring_seeds)}"
        if not self.n:
            return head + ")"
        setting = self.settings.get("setting", "?")
        what = setting if setting == "clean" else f"{setting} {attack.get('name', '?') if isinstance(attack, Mapping) else attack}"
        return (f"{head}, {what}: {part('clean')}, {part('adversarial')}"
                + (f", noise={self.settings['noise']}" if self.settings.get("noise") else "") + ")")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvaluationResult):
            return NotImplemented
        return jsonable(self.to_dict()) == jsonable(other.to_dict())


def paired_outcomes(a: EvaluationResult, kind_a: str, b: EvaluationResult, kind_b: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image accuracies (mean over seeds) of ``a`` and ``b`` on the same images, in the same order.

    :raises ValueError: when the two results were not computed on the same image indices and labels.
    """
    if a.index.shape != b.index.shape or not np.array_equal(a.index, b.index):
        raise ValueError("arguments 'a' and 'b': results on different images (their 'index' arrays differ); a paired "
                         "test needs the same images in both")
    if not np.array_equal(a.label, b.label):
        raise ValueError("arguments 'a' and 'b': the same image indices carry different labels (different data sets)")
    return a.per_image(kind_a), b.per_image(kind_b)


def compare(a: EvaluationResult, b: EvaluationResult, kind_a: str = "adversarial", kind_b: str = "adversarial",
            level: float = 0.95, alternative: str = "two-sided", seed: int = 0) -> Comparison:
    """Paired test of ``accuracy(a, kind_a) - accuracy(b, kind_b)`` on the same images:
    :func:`snn_adv.stats.paired_difference` of their per-image accuracies (:func:`paired_outcomes`).

    E.g. whitebox vs blackbox: ``compare(whitebox, blackbox)``; clean vs adversarial of one result:
    ``compare(r, r, 'clean', 'adversarial')``. ``seed`` seeds the Monte Carlo test; a one-sided interval ends at
    -1 or 1 (a difference of accuracies).
    """
    return paired_difference(*paired_outcomes(a, kind_a, b, kind_b), level, alternative, seed, limits=(-1.0, 1.0))


def compare_to_bound(result: EvaluationResult, kind: str, bound: float, level: float = 0.95, seed: int = 0) -> Comparison:
    """One-sided test of ``H0: accuracy(result, kind) <= bound`` (:func:`snn_adv.stats.bound_test`)."""
    return bound_test(result.per_image(kind), bound, level, seed)
