"""Networks of other SNN frameworks as multistep bodies of a :class:`~snn_adv.classifier.SpikingClassifier`.

:func:`snn_adv.adapt` recognises a network by its neurons and wraps it here, so that every attack, evaluation and the
protocol take it like one of ours::

    images in [0, 1] -> (x - mean) / std -> our encoder -> [T, N, ...] -> body -> [T, N, K] -> mean over T

- **snnTorch** (``snntorch.Leaky`` and friends with ``init_hidden=True``, e.g. in an ``nn.Sequential``): the body
  calls the network once per timestep; the neurons keep their state between calls and are reset (``reset_mem``,
  snnTorch's per-neuron reset) before every forward. A tuple output ``(spk, mem)`` (a last neuron with
  ``output=True``) gives the logits by ``output``: spike counts over T (snnTorch's tutorials predict by them) or
  the mean membrane potential.
- **Norse** (a ``norse.torch.SequentialState`` or any module called as ``out, state = net(x, state)``): stepwise
  when its neurons are cells (``LIFCell``, ``LICell``...), one call per timestep with the state carried; on
  sequences when they are ``LIF``, ``LI``... (one call on the whole [T, N, ...]). Each forward starts from
  ``state = None``, Norse's fresh state.

Why our encoder and not theirs: snnTorch's ``spikegen.rate`` and Norse's ``PoissonEncoder`` sample with
``torch.bernoulli`` / a comparison, whose input gradient is exactly 0, so a gradient attack would see nothing. Ours
samples the same ``Bernoulli(x)`` spikes (``mean = 0, std = 1``, the frameworks' default) with the paper's
straight-through gradient ``dL/dx = sum_t dL/ds_t``, a private seeded stream and :func:`~snn_adv.fixed_noise`.

Neither framework is a dependency (extras ``snntorch`` and ``norse``); they are recognised by their classes' module
names, never imported here.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.nn as nn

from .neurons import spiking_neurons
from .validation import check_choice

__all__ = ["FRAMEWORKS", "NorseBody", "SnnTorchBody", "foreign_neurons", "foreign_neurons_note", "framework_of", "framework_body"]

#: the spiking frameworks :func:`snn_adv.adapt` takes, and their default input normalisation (mean, std): ours maps
#: [0, 1] to [-1, 1] for signed spikes (the paper); the others rate-code [0, 1] as it is
FRAMEWORKS = {"spikingjelly": ((0.5,), (0.5,)), "snntorch": ((0.0,), (1.0,)), "norse": ((0.0,), (1.0,))}

#: base classes (module, name) of each foreign framework's stateful neurons; stepwise and sequence kinds for Norse
_SNNTORCH_NEURON = ("snntorch", "SpikingNeuron")
_NORSE_STEPWISE = ("norse", "SNNCell", "SNNRecurrentCell")
_NORSE_SEQUENCE = ("norse", "SNN", "SNNRecurrent")


def _derives_from(module: nn.Module, package: str, *names: str) -> bool:
    """Whether a class in ``module``'s MRO is named one of ``names`` and defined in package ``package``."""
    return any(c.__name__ in names and c.__module__.split(".")[0] == package for c in type(module).__mro__)


def _snntorch_neurons(network: nn.Module) -> List[nn.Module]:
    return [m for m in network.modules() if _derives_from(m, *_SNNTORCH_NEURON)]


def _norse_neurons(network: nn.Module) -> List[nn.Module]:
    return [m for m in network.modules() if _derives_from(m, *_NORSE_STEPWISE) or _derives_from(m, *_NORSE_SEQUENCE)]


def foreign_neurons(network: nn.Module) -> List[nn.Module]:
    """The snnTorch and Norse neurons in ``network`` (module order): spiking, but without SpikingJelly's surrogate
    hooks, so the gradient modes that swap surrogates or backward rules cannot reach them."""
    return _snntorch_neurons(network) + _norse_neurons(network)


def foreign_neurons_note(network: nn.Module) -> Optional[str]:
    """Why a gradient mode or attacker surrogate cannot reach ``network``'s neurons when they are snnTorch's or
    Norse's (None when it has none): the one wording for the attacks and the protocol."""
    neurons = foreign_neurons(network)
    if not neurons:
        return None
    kinds = sorted({f"{type(m).__module__.split('.')[0]}.{type(m).__name__}" for m in neurons})
    return (f"its neurons ({', '.join(kinds)}) have no SpikingJelly surrogate or backward-rule hooks to swap; "
            "attacks use the network's own surrogate gradient (grad_mode 'bptt' without a surrogate)")


def framework_of(network: nn.Module) -> Optional[str]:
    """``'spikingjelly'``, ``'snntorch'`` or ``'norse'``: whose spiking neurons ``network`` holds (None: none).

    :raises ValueError: neurons of two frameworks in one network.
    """
    found = [name for name, present in (("spikingjelly", spiking_neurons(network)),
                                        ("snntorch", _snntorch_neurons(network)),
                                        ("norse", _norse_neurons(network))) if present]
    if len(found) > 1:
        raise ValueError(f"argument 'network' mixes neurons of {' and '.join(found)}; one framework per network")
    return found[0] if found else None


class SnnTorchBody(nn.Module):
    """A stepwise snnTorch network as a multistep body: ``[T, N, ...] -> [T, N, K]``, one call per timestep.

    :param network: snnTorch neurons with ``init_hidden=True`` (their state lives in the modules).
    :param output: ``'spikes'`` or ``'membrane'``: which of a tuple output ``(spk, mem)`` is the readout (a tensor
        output is taken as it is).
    """

    outputs = ("spikes", "membrane")

    def __init__(self, network: nn.Module, output: str = "spikes"):
        super().__init__()
        explicit = [type(m).__name__ for m in _snntorch_neurons(network) if not getattr(m, "init_hidden", True)]
        if explicit:
            raise ValueError(f"argument 'network': snnTorch neurons {sorted(set(explicit))} have init_hidden=False, "
                             "so the network passes their state itself; build them with init_hidden=True, or wrap a "
                             "network that loops over time itself ([T, N, ...] -> [T, N, K]) in "
                             "snn_adv.SpikingClassifier")
        self.network = network
        self.output = check_choice("output", output, self.outputs)

    def reset(self) -> None:
        """Zero every neuron's state (snnTorch's own per-neuron ``reset_mem``); also drops the last forward's graph."""
        for neuron in _snntorch_neurons(self.network):
            neuron.reset_mem()

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._readout(self.network(step)) for step in sequence])

    def _readout(self, out: Any) -> torch.Tensor:
        if isinstance(out, tuple):
            return out[self.outputs.index(self.output)]
        return out


class NorseBody(nn.Module):
    """A Norse network (``out, state = network(x, state)``) as a multistep body: ``[T, N, ...] -> [T, N, K]``.

    Cells (stepwise neurons) are called once per timestep with the state carried; sequence neurons take the whole
    sequence in one call. The state is carried between the calls of one forward (time chunks) and reset to None
    (Norse's fresh state) before each.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        stepwise = any(_derives_from(m, *_NORSE_STEPWISE) for m in network.modules())
        sequence = any(_derives_from(m, *_NORSE_SEQUENCE) for m in network.modules())
        if stepwise and sequence:
            raise ValueError("argument 'network' mixes Norse cells (one timestep per call) and sequence neurons "
                             "(LIF, LI: all timesteps per call); use one kind, e.g. norse.torch.Lift for the rest")
        self.network = network
        self.stepwise = stepwise
        self.state: Any = None

    def reset(self) -> None:
        """Start the next forward from Norse's fresh state (and drop the last forward's graph)."""
        self.state = None

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        if not self.stepwise:
            out, self.state = self.network(sequence, self.state)
            return out
        outputs = []
        for step in sequence:
            out, self.state = self.network(step, self.state)
            outputs.append(out)
        return torch.stack(outputs)


def framework_body(network: nn.Module, framework: str, output: str = "spikes") -> nn.Module:
    """``network`` as a multistep body of ``framework`` (``'snntorch'`` or ``'norse'``; ``output`` is snnTorch's)."""
    if framework == "snntorch":
        return SnnTorchBody(network, output)
    if framework == "norse":
        if output != "spikes":
            raise ValueError(f"argument 'output' = {output!r}: a Norse network's output is what its last module "
                             "returns (LICell: membrane, LIFCell: spikes); leave 'output' unset")
        return NorseBody(network)
    raise ValueError(f"argument 'framework' = {framework!r}: must be 'snntorch' or 'norse'")
