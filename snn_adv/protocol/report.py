"""What the protocol reports: one headline, a per-stage table, a cost plot and every per-image outcome."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..cells import markdown_table
from ..evaluation.checks import Check
from ..evaluation.result import EvaluationResult
from ..io import atomic_write, atomic_write_json
from ..plots import format_eps, plot_lines

__all__ = ["FORWARD_COST", "ProtocolReport", "StageRecord"]

#: a forward pass without backward, in forward-backward passes: 1.25 s vs 2.3 s per 100 images for the CIFAR-10
#: SNN-BP at T = 8 on 2 CPU cores (DESIGN.md's measured costs)
FORWARD_COST = 0.5


@dataclasses.dataclass
class StageRecord:
    """One stage as run: its settings, what it cost, how many pairs it broke and the cumulative robust outcome."""

    settings: Dict[str, Any]
    record: Dict[str, Any]
    cumulative: EvaluationResult
    broken: int = 0

    @classmethod
    def not_applicable(cls, stage, reason: str, cumulative: EvaluationResult) -> "StageRecord":
        return cls(stage.settings(), {"name": stage.name, "status": "not applicable", "reason": reason, "attacked": 0,
                                      "gradient_passes": 0, "forward_passes": 0, "seconds": 0.0}, cumulative)

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def reason(self) -> Optional[str]:
        return self.record.get("reason")

    def cost(self, n: int) -> float:
        """Forward-backward passes per image (a forward alone counts :data:`FORWARD_COST`)."""
        return (self.record["gradient_passes"] + FORWARD_COST * self.record["forward_passes"]) / n


def _interval_text(result: EvaluationResult) -> str:
    low, high = result.confidence_interval("adversarial")
    return f"{100 * result.adversarial_accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


@dataclasses.dataclass
class ProtocolReport:
    """The outcome of :func:`~snn_adv.protocol.robust_accuracy`.

    :ivar result: the final robust outcome per (image, scoring seed) as an :class:`EvaluationResult` (its
        ``adversarial`` accuracy is the robust accuracy, with its interval).
    :ivar every_draw: robust on the scoring draw *and* on every fresh draw (random models; else None).
    :ivar broken_by: [N, S]: -2 clean misclassified, -1 robust, ``k`` broken by stage ``k`` (``stage_names[k-1]``;
        ``len(stage_names) + 1``: the certificate).
    """

    version: str
    battery: str
    eps: float
    norm: str
    random: bool
    fresh_draws: int
    clean: EvaluationResult
    result: EvaluationResult
    every_draw: Optional[EvaluationResult]
    stages: List[StageRecord]
    certificate: Dict[str, Any]
    checks: List[Check]
    broken_by: np.ndarray
    stage_names: List[str]
    costs: Dict[str, Dict[str, Any]]
    provenance: Dict[str, Any]

    # ---------------------------------------------------------------- numbers
    @property
    def robust_accuracy(self) -> float:
        return self.result.adversarial_accuracy

    @property
    def failed_checks(self) -> List[Check]:
        return [c for c in self.checks if c.passed is False]

    @property
    def converged(self) -> bool:
        return bool(self.certificate.get("converged", self.certificate.get("stage") is None))

    @property
    def verdict(self) -> str:
        """``unreliable: <checks>``, ``not converged`` or ``converged``."""
        if self.failed_checks:
            return "unreliable: " + ", ".join(c.name for c in self.failed_checks)
        return "converged" if self.converged else "not converged"

    def total_cost(self) -> float:
        """Forward-backward passes per image over the whole protocol (clean, stages, certificate, large-eps check)."""
        n = self.result.n
        extra = [StageRecord({}, r, self.clean) for r in self.costs.values()]
        return sum(s.cost(n) for s in [*self.stages, *extra])

    def total_seconds(self) -> float:
        """Wall time of the protocol as its stages recorded it (clean, stages, certificate, large-eps check; a resumed
        run keeps each stage's first time); the gradient-scale probe and the fresh-draw re-scoring are not timed."""
        return round(sum(r["seconds"] for r in [*(s.record for s in self.stages), *self.costs.values()]), 1)

    def headline(self) -> str:
        """One line: ``robust accuracy 4.0 [2.1, 6.3] % (snn-v2, Linf 8/255, 1000 images x 3 draws, converged)``."""
        what = (f"{self.version}, {self.norm} {format_eps(self.eps)}, {self.result.n} images x "
                f"{len(self.result.scoring_seeds)} draws")
        verdict = self.verdict
        if verdict == "not converged":
            comparison = self.certificate["comparison"]
            verdict += (f": the certificate removed {100 * self.certificate['removed']:.1f} points, "
                        f"p = {comparison['p_value']:.3g}")
        line = f"robust accuracy {_interval_text(self.result)} % ({what}, {verdict})"
        if self.every_draw is not None:
            line += f"; on every draw (+{self._fresh_draws()} fresh): {_interval_text(self.every_draw)} %"
        return line

    def _fresh_draws(self) -> int:
        return int(self.provenance.get("fresh_draws", 0)) or 8

    # ---------------------------------------------------------------- rendering
    def rows(self) -> List[Dict[str, Any]]:
        """One row per stage (clean first): status, images attacked, pairs broken, cumulative accuracy, cost."""
        n = self.result.n
        clean = StageRecord({}, self.costs["clean"], self.clean)
        rows, total = [], clean.cost(n)
        low, high = self.clean.confidence_interval("clean")
        rows.append({"stage": "clean", "status": "", "attacked": 0, "broken": 0,
                     "accuracy": self.clean.clean_accuracy, "low": low, "high": high, "cost": total,
                     "cumulative_cost": total, "seconds": clean.record["seconds"]})
        for stage in self.stages:
            total += stage.cost(n)
            low, high = stage.cumulative.confidence_interval("adversarial")
            rows.append({"stage": stage.name, "status": stage.status + (f" ({stage.reason})" if stage.status in (
                "not applicable",) else ""), "attacked": stage.record["attacked"], "broken": stage.broken,
                "accuracy": stage.cumulative.adversarial_accuracy, "low": low, "high": high,
                "cost": stage.cost(n), "cumulative_cost": total, "seconds": stage.record["seconds"]})
        return rows

    def table_markdown(self) -> str:
        columns = {"stage": "stage", "status": "status", "attacked": "images attacked", "broken": "pairs broken",
                   "accuracy": "robust accuracy %", "low": "robust accuracy %_low", "high": "robust accuracy %_high",
                   "cost": "cost (fwd-bwd passes / image)", "cumulative_cost": "cumulative cost", "seconds": "seconds"}
        percent, rounded = {"accuracy", "low", "high"}, {"cost", "cumulative_cost"}
        shown = [{columns[key]: round(100 * value, 1) if key in percent else round(value, 1) if key in rounded
                  else value for key, value in row.items()} for row in self.rows()]
        lines = [f"# Robustness protocol {self.version} (battery {self.battery})", "", self.headline(), "",
                 markdown_table(shown, list(columns.values())).rstrip("\n")]
        lines += ["", "Self-checks:", ""] + [check.report_line() for check in self.checks]
        if self.certificate.get("stage"):
            c = self.certificate
            lines += ["", f"Certificate: {c['stage']} again with {c['effort']}x iterations and EOT draws and "
                          f"{c['restarts']} restarts on the survivors broke {c['broken']} pairs "
                          f"({100 * c['removed']:.2f} points, one-sided p = {c['comparison']['p_value']:.3g}): "
                          f"{'converged' if c['converged'] else 'not converged'} (converged: at most 0.5 points "
                          "and not significant)."]
        lines += ["", f"Total cost {self.total_cost():.1f} forward-backward passes per image (a forward alone "
                      f"counts {FORWARD_COST}), whole protocol."]
        return "\n".join(lines) + "\n"

    def plot(self, path: Union[str, Path]) -> Path:
        """Robust accuracy (with its interval) against cumulative cost over the cascade."""
        points = [(r["cumulative_cost"], 100 * r["accuracy"], 100 * r["low"], 100 * r["high"]) for r in self.rows()]
        return plot_lines({"robust accuracy": points}, path, xlabel="cumulative cost (forward-backward passes per image)",
                          ylabel="robust accuracy (%)", title=f"protocol {self.version}", eps=self.eps,
                          note="stages: " + ", ".join(r["stage"] for r in self.rows()))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "headline": self.headline(), "version": self.version, "battery": self.battery, "eps": self.eps,
            "norm": self.norm, "random_model": self.random, "fresh_draws": self.fresh_draws, "verdict": self.verdict,
            "robust_accuracy": self.result.summary()["adversarial"],
            "robust_on_every_draw": None if self.every_draw is None else self.every_draw.summary()["adversarial"],
            "clean": self.clean.summary()["clean"], "stages": self.rows(),
            "stage_settings": [s.settings for s in self.stages], "certificate": self.certificate,
            "checks": [c.to_dict() for c in self.checks], "total_cost": self.total_cost(),
            "seconds": self.total_seconds(),
            "index": self.result.index.tolist(), "label": self.result.label.tolist(),
            "scoring_seeds": self.result.scoring_seeds,
            "clean_correct": self.clean.clean_correct.astype(int).tolist(),
            "robust": self.result.adversarial_correct.astype(int).tolist(),
            "robust_on_every_draw_outcomes": None if self.every_draw is None
            else self.every_draw.adversarial_correct.astype(int).tolist(),
            "broken_by": self.broken_by.tolist(), "broken_by_names": {str(k + 1): name for k, name in
                                                                      enumerate(self.stage_names)} | {
                str(len(self.stage_names) + 1): "certificate", "-1": "robust", "-2": "clean misclassified"},
            "provenance": self.provenance,
        }

    def save(self, out: Union[str, Path]) -> None:
        """``report.json``, ``table.md`` and ``cost.png`` in ``out``."""
        out = Path(out)
        atomic_write_json(out / "report.json", self.to_dict())
        with atomic_write(out / "table.md", "w") as handle:
            handle.write(self.table_markdown())
        self.plot(out / "cost.png")

    def __str__(self) -> str:
        return self.headline()
