r"""Gradient modes: how an attack differentiates through the spiking neurons of its source model.

Every mode keeps the forward pass (the spikes, hence the logits) exactly as it is and changes only the backward
rule of each spiking layer: a mode gives each neuron a :class:`~snn_adv.neurons.BackwardRule` (the spike's
derivative ``sg``, whether the membrane path over time is kept, whether the input gradient is averaged over time);
the neuron differentiates its own dynamics with it. A mode is installed for the duration of one attack call by
:func:`gradient_mode`, a context manager that always restores the neurons (``surrogate_function``,
``backward_rule``) on exit.

Notation for one :class:`~snn_adv.neurons.LeakyLIFNode` layer over ``T`` steps (input current ``I[t]``, pre-reset
membrane ``h[t] = leak*v[t-1] + I[t]``, spikes ``s[t] = H(h[t] - v_th)``, soft reset ``v[t] = h[t] - v_th*s[t]``,
incoming gradient ``g[t] = dL/ds[t]``, ``sg`` a surrogate derivative ``ds/dh``):

``bptt`` (default; the paper's)
    Surrogate BPTT through the unrolling with the model's own surrogate, or the attacker's (``surrogate=``)::

        dL/dh[t] = g[t]*sg(h[t]-v_th) + dL/dv[t]*(1 - v_th*sg(h[t]-v_th)),   dL/dv[t-1] = leak*dL/dh[t]

    With the straight-through Poisson encoder the input gradient is ``dL/dx = sum_t dL/ds_t`` (the encoder's
    spikes).
``rate`` (RGA, Bu et al. CVPR 2023)
    The layer is seen as its firing rate ``r = f(Ibar)`` of the mean input current ``Ibar = mean_t I[t]``, so
    ``dL/dI[t] = f'(Ibar) * mean_t' g[t']``, with the piecewise-linear rate model of the RGA code: ``f'`` is
    ``gamma`` on ``[0, (1-leak)*v_th]`` (sub-threshold leaky regime) and ``(1 - gamma*(1-leak)*v_th) /
    (v_th*(beta - (1-leak)))`` on ``[(1-leak)*v_th, beta*v_th]`` (so ``f`` rises from 0 to 1 over
    ``[0, beta*v_th]``), 0 elsewhere. For IF neurons (leak 1) this is ``1/(beta*v_th)`` on ``[0, beta*v_th]``.
    (The reference code writes ``f'(Ibar)*g[t]`` per step; after the time-independent layers below and the
    encoder's sum over t both give the same input gradient.)
``hart`` (Hao et al. ICLR 2024)
    Rate and temporal information: the temporal path through the membrane is cut (``v[t-1]`` detached) and each
    step's surrogate gradient is kept, then averaged over time::

        dL/dI[t] = mean_t' g[t'] * sg_w(h[t'] - v_th),    sg_w(x) = max(0, w - |x|) / w**2

    ``w`` (``width``) is HART's surrogate width ``gamma``: it sets how much temporal information (how far
    from the threshold a membrane still passes gradient) enters the rate gradient.
``assg`` (adaptive sharpness, Wang et al. arXiv 2512.22522)
    BPTT with an ATan surrogate ``sg(x) = (alpha/2) / (1 + (pi/2*alpha*x)^2)`` whose sharpness is per neuron and
    per step, following the membrane statistics over the attack's iterations::

        M[t] <- b1*M[t] + (1-b1)*|x[t]|,  D[t] <- b2*D[t] + (1-b2)*| |x[t]| - M[t] |,  x = h - v_th
        alpha[t] = a / (M[t] + relax*D[t] + 1e-4),   a = 2*tan(pi*A)/pi

    (``M = 1, D = 0`` at the start of each attack call; ``A`` bounds the expected gradient-vanishing degree.)
``pdsg`` (potential-dependent surrogate, Lun et al. CVPR 2025)
    BPTT with a Gaussian surrogate whose scale is the spread of the membrane potential itself::

        sg(x[t]) = exp(-((x - sigma/2) / (sqrt(2)*sigma))^2) / (sqrt(2*pi)*sigma)

    with ``sigma[t]`` the standard deviation of ``h[0..t]`` over time, batch and space, per channel for
    convolutional layers (``[T, N, C, H, W]``) and over the whole layer otherwise.

``cycle`` (an ensemble of the above taken in turn)
    The ``k``-th input gradient of an attack call (all its EOT draws) goes through member ``k mod M``: an EOT over
    gradient rules along one trajectory, at the cost of one rule. Sign steps (PGD, APGD) ignore each member's
    scale, so the members need no common normalisation.

Modes other than ``bptt`` act through :attr:`LeakyLIFNode.backward_rule`, so they need our neuron;
``bptt`` with an attacker surrogate swaps ``surrogate_function`` and works on stock SpikingJelly neurons too.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..frameworks import foreign_neurons_note
from ..neurons import (BackwardRule, LeakyLIFNode, PiecewiseLinear, spiking_neurons, supports_backward_rules,
                       surrogate_derivative)
from ..validation import check_choice, check_fraction, check_positive

__all__ = [
    "GradientMode",
    "BPTT",
    "RateGradient",
    "HART",
    "ASSG",
    "PDSG",
    "CyclingGradient",
    "GRADIENT_MODES",
    "resolve_gradient_mode",
    "gradient_mode",
]

Surrogate = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------------------------
class GradientMode:
    """Base class. :meth:`install` patches the neurons of a model; :func:`gradient_mode` restores them."""

    name = "mode"
    #: whether the mode needs :class:`LeakyLIFNode` (a ``backward_rule``) rather than any SpikingJelly neuron
    needs_backward_rule = True

    def settings(self) -> Dict:
        """The mode and its parameters, for result provenance."""
        return {"name": self.name}

    def install(self, nodes: List[nn.Module]) -> None:
        """Patch ``nodes`` for one attack call (called inside :func:`gradient_mode`, which restores them)."""
        for node in nodes:
            node.backward_rule = self.rule_for(node)

    def before_gradient(self) -> None:
        """Called by an attack before each of its input gradients (its EOT draws count as one); nothing by default."""

    def rule_for(self, node: LeakyLIFNode) -> BackwardRule:
        """The backward rule ``node`` gets for one attack call."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "name")
        return f"{type(self).__name__}({params})"


class BPTT(GradientMode):
    """Surrogate BPTT (the paper's attack); with ``surrogate``, the attacker's surrogate replaces the model's.

    :param surrogate: any SpikingJelly surrogate module (``surrogate.ATan(alpha=4.0)``, ``PiecewiseLinear(...)``),
        or ``None`` for the surrogate each neuron was trained with.
    """

    name = "bptt"
    needs_backward_rule = False

    def __init__(self, surrogate: Optional[Surrogate] = None):
        self.surrogate = surrogate

    def settings(self) -> Dict:
        return {"name": self.name, "surrogate": None if self.surrogate is None else repr(self.surrogate)}

    def install(self, nodes: List[nn.Module]) -> None:
        if self.surrogate is not None:
            for node in nodes:
                node.surrogate_function = self.surrogate


class RateGradient(GradientMode):
    """RGA (Bu et al. CVPR 2023): backward by the derivative of the firing rate w.r.t. the mean input current.

    :param beta: the rate model reaches 1 at ``Ibar = beta * v_th`` (the RGA code uses 2).
    :param gamma: slope in the sub-threshold leaky regime ``[0, (1-leak)*v_th]`` (RGA code: 0.2).
    """

    name = "rate"

    def __init__(self, beta: float = 2.0, gamma: float = 0.2):
        self.beta = check_positive("beta", beta)
        self.gamma = check_positive("gamma", gamma)

    def settings(self) -> Dict:
        return {"name": self.name, "beta": self.beta, "gamma": self.gamma}

    def rate_derivative(self, mean_current: torch.Tensor, leak: float, v_th: float) -> torch.Tensor:
        """``f'(Ibar)`` of the piecewise-linear rate model (see the module docstring)."""
        knee = (1.0 - leak) * v_th
        top = self.beta * v_th
        if knee >= top:
            raise ValueError(f"argument 'beta' = {self.beta}: must exceed 1 - leak = {1.0 - leak:g} for this neuron")
        slope = (1.0 - self.gamma * knee) / (top - knee)
        low = (mean_current >= 0) & (mean_current < knee)
        high = (mean_current >= knee) & (mean_current <= top)
        return low.to(mean_current) * self.gamma + high.to(mean_current) * slope

    def rule_for(self, node: LeakyLIFNode) -> BackwardRule:
        def derivative(node: LeakyLIFNode, x_seq: torch.Tensor, h_seq: torch.Tensor) -> torch.Tensor:
            factor = self.rate_derivative(x_seq.mean(0, keepdim=True), float(node.leak), float(node.v_threshold))
            return factor.expand_as(x_seq)

        return BackwardRule(derivative, temporal=False, time_average=True)


class HART(GradientMode):
    """HART (Hao et al. ICLR 2024): per-step surrogate gradients without the temporal path, averaged over time.

    :param width: HART's surrogate width ``gamma`` (``sg(x) = max(0, w-|x|)/w**2``, unit area).
    :param surrogate: use this surrogate for the per-step factor instead of HART's triangle.
    """

    name = "hart"

    def __init__(self, width: float = 1.0, surrogate: Optional[Surrogate] = None):
        self.width = check_positive("width", width)
        self.surrogate = surrogate if surrogate is not None else PiecewiseLinear(gamma=1.0, width=self.width)
        self._custom_surrogate = surrogate is not None

    def settings(self) -> Dict:
        return {"name": self.name, "width": self.width, "surrogate": repr(self.surrogate) if self._custom_surrogate else None}

    def rule_for(self, node: LeakyLIFNode) -> BackwardRule:
        def derivative(node: LeakyLIFNode, x_seq: torch.Tensor, h_seq: torch.Tensor) -> torch.Tensor:
            return surrogate_derivative(self.surrogate, h_seq - node.v_threshold)

        return BackwardRule(derivative, temporal=False, time_average=True)


class ASSG(GradientMode):
    """Adaptive sharpness surrogate (Wang et al., arXiv 2512.22522): ATan surrogate, per-neuron per-step
    sharpness from running membrane statistics over the attack's iterations (reset every attack call).

    :param vanishing: ``A``, upper bound of the expected gradient-vanishing degree (``a = 2*tan(pi*A)/pi``), in (0, 0.5).
    :param relax: weight of the dispersion ``D`` in the denominator.
    :param momentum: ``(b1, b2)`` of the running first and dispersion moments.
    """

    name = "assg"

    def __init__(self, vanishing: float = 0.4, relax: float = 1.5, momentum=(0.9, 0.9)):
        self.vanishing = check_fraction("vanishing", vanishing)
        if not 0.0 < self.vanishing < 0.5:
            raise ValueError(f"argument 'vanishing' = {vanishing!r}: must lie in (0, 0.5)")
        self.relax = check_fraction("relax", relax, high=math.inf)
        self.momentum = tuple(check_fraction("momentum", m) for m in momentum)
        self.scale = 2.0 * math.tan(math.pi * self.vanishing) / math.pi

    def settings(self) -> Dict:
        return {"name": self.name, "vanishing": self.vanishing, "relax": self.relax, "momentum": list(self.momentum)}

    def rule_for(self, node: LeakyLIFNode) -> BackwardRule:
        state: Dict[str, torch.Tensor] = {}  # fresh per install, i.e. per attack call
        b1, b2 = self.momentum

        def derivative(node: LeakyLIFNode, x_seq: torch.Tensor, h_seq: torch.Tensor) -> torch.Tensor:
            x = (h_seq - node.v_threshold).abs()
            if "M" not in state or state["M"].shape != x.shape:
                state["M"], state["D"] = torch.ones_like(x), torch.zeros_like(x)
            state["M"] = b1 * state["M"] + (1 - b1) * x
            state["D"] = b2 * state["D"] + (1 - b2) * (x - state["M"]).abs()
            alpha = self.scale / (state["M"] + self.relax * state["D"] + 1e-4)
            return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)

        return BackwardRule(derivative)


class PDSG(GradientMode):
    """Potential-dependent surrogate (Lun et al. CVPR 2025): Gaussian surrogate scaled by the membrane spread."""

    name = "pdsg"

    @staticmethod
    def cumulative_std(h_seq: torch.Tensor) -> torch.Tensor:
        """``sigma[t]`` = std of ``h[0..t]`` over time, batch and space (per channel when ``h`` is [T,N,C,H,W]),
        broadcastable against ``h_seq``; zero spreads become 1."""
        dims = (1, 3, 4) if h_seq.dim() == 5 else tuple(range(1, h_seq.dim()))
        count_per_step = math.prod(h_seq.shape[d] for d in dims)
        total = h_seq.sum(dim=dims, keepdim=True).cumsum(0)
        total_sq = (h_seq * h_seq).sum(dim=dims, keepdim=True).cumsum(0)
        steps = torch.arange(1, h_seq.shape[0] + 1, device=h_seq.device, dtype=h_seq.dtype)
        count = (steps * count_per_step).reshape(-1, *([1] * (h_seq.dim() - 1)))
        variance = (total_sq - total * total / count) / (count - 1).clamp(min=1)
        sigma = variance.clamp(min=0).sqrt()
        return torch.where(sigma > 0, sigma, torch.ones_like(sigma))

    def rule_for(self, node: LeakyLIFNode) -> BackwardRule:
        def derivative(node: LeakyLIFNode, x_seq: torch.Tensor, h_seq: torch.Tensor) -> torch.Tensor:
            sigma = self.cumulative_std(h_seq)
            x = h_seq - node.v_threshold
            return torch.exp(-(((x - 0.5 * sigma) / (math.sqrt(2) * sigma)) ** 2)) / (math.sqrt(2 * math.pi) * sigma)

        return BackwardRule(derivative)


class CyclingGradient(GradientMode):
    """Members taken in turn, one per input gradient of an attack call (see the module docstring, ``cycle``).

    :param members: the gradient modes, in order; not :class:`ASSG` (its statistics follow one rule's iterations)
        nor another cycle.
    """

    name = "cycle"

    def __init__(self, members: Sequence[GradientMode]):
        self.members = list(members)
        if not self.members:
            raise ValueError("argument 'members': give at least one gradient mode")
        for member in self.members:
            if not isinstance(member, GradientMode) or isinstance(member, (ASSG, CyclingGradient)):
                raise ValueError(f"argument 'members': {member!r} cannot take turns (ASSG's statistics and a nested "
                                 "cycle follow their own iterations); give BPTT, RateGradient, HART or PDSG instances")
        self.needs_backward_rule = any(m.needs_backward_rule for m in self.members)
        self._nodes: List[nn.Module] = []
        self._saved: List[Tuple[nn.Module, Any, Any]] = []
        self._turn = 0

    def settings(self) -> Dict:
        return {"name": self.name, "members": [m.settings() for m in self.members]}

    def install(self, nodes: List[nn.Module]) -> None:
        self._nodes, self._saved, self._turn = nodes, _neuron_state(nodes), -1

    def before_gradient(self) -> None:
        self._turn += 1
        _restore_neurons(self._saved)
        self.members[self._turn % len(self.members)].install(self._nodes)


GRADIENT_MODES: Dict[str, type] = {cls.name: cls for cls in (BPTT, RateGradient, HART, ASSG, PDSG)}


def resolve_gradient_mode(mode: Union[str, GradientMode], surrogate: Optional[Surrogate] = None) -> GradientMode:
    """A :class:`GradientMode` from a name (``'bptt'``, ``'rate'``, ``'hart'``, ``'assg'``, ``'pdsg'``) or instance.

    ``surrogate`` (the attacker's choice) applies to ``'bptt'`` and ``'hart'``; other modes define their own.
    """
    if isinstance(mode, GradientMode):
        if surrogate is not None:
            raise ValueError("argument 'surrogate': give it to the GradientMode instance, not next to it")
        return mode
    check_choice("grad_mode", mode, GRADIENT_MODES)
    if surrogate is not None:
        if mode not in ("bptt", "hart"):
            raise ValueError(f"argument 'surrogate' = {surrogate!r}: only grad_mode 'bptt' or 'hart' takes a surrogate, got {mode!r}")
        return GRADIENT_MODES[mode](surrogate=surrogate)
    return GRADIENT_MODES[mode]()


@contextlib.contextmanager
def gradient_mode(model: nn.Module, mode: Union[str, GradientMode] = "bptt", surrogate: Optional[Surrogate] = None) -> Iterator[GradientMode]:
    """Install a gradient mode on every spiking neuron of ``model`` for the ``with`` block; always restores.

    An ANN (no spiking neurons) accepts only ``'bptt'`` without a surrogate (its gradient is exact).
    """
    resolved = resolve_gradient_mode(mode, surrogate)
    nodes = spiking_neurons(model)
    is_default = isinstance(resolved, BPTT) and resolved.surrogate is None
    if not nodes and not is_default:
        foreign = foreign_neurons_note(model)
        raise ValueError(f"argument 'grad_mode' = {resolved!r}: needs SpikingJelly neurons; "
                         + (f"this model's are not: {foreign}" if foreign else "this model has no spiking neurons"))
    if resolved.needs_backward_rule:
        stock = sorted({type(n).__name__ for n in nodes if not supports_backward_rules(n)})
        if stock:
            raise ValueError(
                f"argument 'grad_mode' = {resolved.name!r}: needs snn_adv.neurons.LeakyLIFNode neurons whose dynamics "
                f"are charge/reset_after_spike, the model has {stock}; use 'bptt' (optionally with surrogate=...) for "
                "stock SpikingJelly neurons or neurons that override SpikingJelly's step hooks"
            )
    saved = _neuron_state(nodes)
    try:
        resolved.install(nodes)
        yield resolved
    finally:
        _restore_neurons(saved)


def _neuron_state(nodes: List[nn.Module]) -> List[Tuple[nn.Module, Any, Any]]:
    """What a gradient mode may patch on each neuron: its surrogate and backward rule."""
    return [(n, n.surrogate_function, getattr(n, "backward_rule", None)) for n in nodes]


def _restore_neurons(saved: List[Tuple[nn.Module, Any, Any]]) -> None:
    for node, surrogate_function, rule in saved:
        node.surrogate_function = surrogate_function
        if isinstance(node, LeakyLIFNode):
            node.backward_rule = rule
