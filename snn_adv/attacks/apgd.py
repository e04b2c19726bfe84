r"""Auto-PGD (Croce and Hein, ICML 2020): PGD with momentum and a step size halved at checkpoints when progress
stalls, with the cross-entropy or the DLR loss, and its targeted variant APGD-T over the top classes.

Our own implementation (not a wrapper of torchattacks' or AutoAttack's) so that it runs under every gradient mode,
averages gradients, objectives and logits over EOT draws of a Poisson model, draws its random start from the
attack's seeded stream, and tells the protocol the adversarial margin of every sample. It follows the reference
algorithm step for step and is tested against torchattacks' APGD on a deterministic ANN.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_fraction, check_positive_int
from .base import Attack, project

__all__ = ["APGD", "checkpoint_iterations", "dlr_loss", "margin", "targeted_dlr_loss"]

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per sample: negative exactly when the sample is misclassified."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return true - other


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Difference of logits ratio (to ascend): ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``, ``pi`` the
    classes sorted by logit; invariant to shifts and scalings of the logits."""
    ordered = logits.sort(1, descending=True).values
    return -margin(logits, labels) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Targeted DLR (to ascend): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``."""
    ordered = logits.sort(1, descending=True).values
    gap = logits.gather(1, labels[:, None])[:, 0] - logits.gather(1, targets[:, None])[:, 0]
    return -gap / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def checkpoint_iterations(steps: int) -> List[int]:
    """The iterations (1-based) after which APGD checks its progress: the first after ``0.22*steps``, then at
    intervals shrinking by ``0.03*steps`` down to ``0.06*steps`` (each at least 1), as in the reference code."""
    first, shortest, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    points, interval, at = [], first, first
    while at <= steps:
        points.append(at)
        interval = max(interval - decrease, shortest)
        at += interval
    return points


class APGD(Attack):
    r"""L-infinity APGD. From a random point ``x_0`` on the eps-ball's surface (``x + eps*t/|t|_inf``, ``t``
    uniform in [-1, 1]), with step ``eta = 2*eps``::

        z_{k+1} = P(x_k + eta * sign(g_k))
        x_{k+1} = P(x_k + a*(z_{k+1} - x_k) + (1 - a)*(x_k - x_{k-1})),   a = 1 at k = 0, else 0.75

    At each checkpoint ``w_j`` (:func:`checkpoint_iterations`) a sample's step is halved and it restarts from its
    best point when the objective rose in at most ``rho`` of the iterations since ``w_{j-1}``, or when its step was
    not halved at ``w_{j-1}`` and its best objective has not improved since. ``g_k``, the objective and the logits
    are means over ``eot`` draws. A sample counts as fooled when the mean logits misclassify it; it returns the
    first point that did (``keep='first'``) or the last iterate that did (``keep='last'``, the rule of AutoAttack's
    code), else the point of smallest margin ``z_y - max_j z_j`` over all runs. On a deterministic model both
    fool; on a random one the first fooling point of a few draws sits at the boundary and often does not fool
    another draw, while later iterates have climbed the loss further.

    :param steps: iterations per run (the reference default is 100).
    :param loss: ``'ce'`` (cross-entropy) or ``'dlr'``.
    :param target_classes: 0: untargeted; ``k > 0``: APGD-T, one run per target class ranked 2..k+1 by the clean
        logits, with the targeted DLR loss (``loss`` must be ``'dlr'``).
    :param restarts: runs per objective, each on the samples not yet fooled.
    :param rho: the progress fraction of the step-size rule (0.75).
    :param keep: which fooling point a run returns, ``'first'`` or ``'last'``.

    Other arguments as :class:`~snn_adv.attacks.base.Attack` (its ``targeted`` is not supported).
    """

    name = "apgd"
    #: first step relative to eps
    initial_step = 2.0

    def __init__(self, model, eps: float = 8 / 255, steps: int = 100, loss: str = "ce", target_classes: int = 0,
                 restarts: int = 1, rho: float = 0.75, keep: str = "first", **kwargs):
        if kwargs.get("targeted"):
            raise ValueError("argument 'targeted': APGD attacks the true label; use target_classes=k for APGD-T")
        super().__init__(model, eps, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.loss_name = check_choice("loss", loss, ("ce", "dlr"))
        if isinstance(target_classes, bool) or not isinstance(target_classes, int) or target_classes < 0:
            raise ValueError(f"argument 'target_classes' = {target_classes!r}: must be an integer >= 0")
        if target_classes and loss != "dlr":
            raise ValueError("argument 'loss': APGD-T (target_classes > 0) uses the targeted DLR loss; set loss='dlr'")
        self.target_classes = target_classes
        self.restarts = check_positive_int("restarts", restarts)
        self.rho = check_fraction("rho", rho)
        self.keep = check_choice("keep", keep, ("first", "last"))

    def settings(self) -> Dict:
        return {**super().settings(), "steps": self.steps, "loss": self.loss_name,
                "target_classes": self.target_classes, "restarts": self.restarts, "rho": self.rho,
                # absent at 'first', so that the keys of results computed before the option hold
                **({} if self.keep == "first" else {"keep": self.keep})}

    # ---------------------------------------------------------------- one run
    def random_start(self, images: torch.Tensor) -> torch.Tensor:
        """A uniform direction scaled onto the eps-ball's surface, clipped to [0, 1]."""
        t = self.random_uniform(images, -1.0, 1.0)
        scale = t.flatten(1).abs().amax(1).clamp(min=1e-12).view(-1, *([1] * (images.dim() - 1)))
        return (images + self.eps * t / scale).clamp(0.0, 1.0)

    def begin(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-run state of the update rule (step sizes per sample)."""
        return {"step": torch.full((len(images),) + (1,) * (images.dim() - 1), self.initial_step * self.eps,
                                   dtype=images.dtype, device=images.device)}

    def update(self, x: torch.Tensor, images: torch.Tensor, grad: torch.Tensor, iteration: int,
               state: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The next point (momentum step of APGD)."""
        previous = state.get("previous", x)
        a = 1.0 if iteration == 0 else 0.75
        z = project(x + state["step"] * grad.sign(), images, self.eps)
        state["previous"] = x
        return project(x + a * (z - x) + (1 - a) * (x - previous), images, self.eps)

    def at_checkpoint(self, state: Dict[str, torch.Tensor], history: List[torch.Tensor], interval: int,
                      best: torch.Tensor, best_at_last: torch.Tensor) -> torch.Tensor:
        """Which samples halve their step and go back to their best point (see the class docstring)."""
        rises = sum((history[-1 - c] > history[-2 - c]).to(torch.int64) for c in range(interval))
        stalled = rises <= self.rho * interval
        no_progress = ~state["halved"] & (best <= best_at_last)
        reduce = stalled | no_progress
        state["halved"] = reduce
        state["step"][reduce] /= 2.0
        return reduce

    def run(self, images: torch.Tensor, labels: torch.Tensor,
            objective: Objective) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run: ``(point, margin, fooled)`` per sample: the first (``keep='first'``) or last fooling point where
        one was found, else the best point (highest objective), with the margin of the mean logits there."""
        x = self.random_start(images)
        state = self.begin(images)
        state["halved"] = torch.ones(len(images), dtype=torch.bool, device=images.device)
        grad, value, logits = self.objective_gradient(x, labels, objective)
        best_x, best_value, best_grad = x.clone(), value.clone(), grad.clone()
        best_margin = margin(logits, labels)
        fooled = best_margin < 0
        fooled_x = x.clone()
        history = [value]
        best_at_last = best_value.clone()
        checkpoints = checkpoint_iterations(self.steps)
        last_checkpoint = 0
        for i in range(self.steps):
            with torch.no_grad():
                x = self.update(x, images, grad, i, state)
            grad, value, logits = self.objective_gradient(x, labels, objective)
            with torch.no_grad():
                m = margin(logits, labels)
                newly = (m < 0) & ~fooled if self.keep == "first" else m < 0
                fooled_x[newly], fooled = x[newly], fooled | newly
                improved = value > best_value
                best_x[improved], best_value[improved], best_grad[improved] = x[improved], value[improved], grad[improved]
                best_margin[improved] = m[improved]
                history.append(value)
                if i + 1 in checkpoints:
                    reduce = self.at_checkpoint(state, history, i + 1 - last_checkpoint, best_value, best_at_last)
                    x, grad = x.clone(), grad.clone()
                    x[reduce], grad[reduce] = best_x[reduce], best_grad[reduce]
                    best_at_last, last_checkpoint = best_value.clone(), i + 1
        point = torch.where(fooled.view(-1, *([1] * (images.dim() - 1))), fooled_x, best_x)
        return point, torch.where(fooled, torch.full_like(best_margin, -1.0), best_margin), fooled

    # ---------------------------------------------------------------- all runs
    def target_lists(self, images: torch.Tensor, labels: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """One entry per run family: ``None`` (untargeted), or for APGD-T the target class of every sample, the
        classes ranked 2, 3, ... by the clean logits (mean over ``eot`` draws)."""
        if not self.target_classes:
            return [None]
        with torch.no_grad():
            logits = sum(self.model(images) for _ in range(self.eot)) / self.eot
        ranked = logits.scatter(1, labels[:, None], float("-inf")).argsort(1, descending=True)
        return [ranked[:, r] for r in range(min(self.target_classes, logits.shape[1] - 1))]

    def objective(self, targets: Optional[torch.Tensor]) -> Objective:
        """The per-sample objective of a run (``targets``: APGD-T's target class per sample)."""
        if targets is not None:
            return lambda logits, labels: targeted_dlr_loss(logits, labels, targets)
        return cross_entropy if self.loss_name == "ce" else dlr_loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = images.clone()
        best_margin = torch.full((len(images),), float("inf"), device=images.device)
        fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for targets in self.target_lists(images, labels):
            for _ in range(self.restarts):
                rows = (~fooled).nonzero()[:, 0]
                if len(rows) == 0:
                    return adversarial
                objective = self.objective(None if targets is None else targets[rows])
                point, m, hit = self.run(images[rows], labels[rows], objective)
                better = hit | (m < best_margin[rows])
                adversarial[rows[better]] = point[better]
                best_margin[rows[better]] = m[better]
                fooled[rows[hit]] = True
        return adversarial
