"""One checkpoint format for every kind of classifier (ANN, SNN-conv, SNN-BP, a user's own network).

A checkpoint is a ``torch.save`` dict of plain types and tensors (read back with ``weights_only=True``, so loading
never runs pickled code)::

    format, format_version, package_version     what wrote it
    kind                                         'ann' or 'snn'
    arch                                         {'name', 'dataset', 'kwargs', ...} from snn_adv.models.build_classifier
                                                 ({} or without 'name' for a user's own body)
    body_class                                   module.qualname of the body (named in errors)
    normalization, in_channels, input_size       the input contract
    snn                                          timesteps, per-layer thresholds, leaks (and which are learnable),
                                                 neurons (per layer: class and settings), encoder settings, readout,
                                                 backend (SNN only)
    metadata                                     what the caller passed: training config, history, method...
    provenance                                   git commit, library versions, device
    state_dict                                   the weights

Integrity: the zip archive ends with a comment ``snn-adv-sha256:<hex>``, the SHA-256 of every byte before it, so
that any change of the file after it was written (a flipped bit, a cut, an edit) is refused at load.

:func:`save` writes it atomically (:func:`snn_adv.io.atomic_write_bytes`); :func:`load` rebuilds a ready
classifier in eval mode (a user's own body is passed back in as ``body``), and turns every way a file can be wrong
into an error that names the file and the problem.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .classifier import AnnClassifier, ImageClassifier, SpikingClassifier
from .encoding import build_encoder
from .io import atomic_write_bytes, provenance
from .models import CLASSIFIER_KINDS, build_classifier, set_thresholds
from .neurons import NEURONS, LeakyLIFNode, build_neuron, spiking_neurons
from .validation import check_choice
from .version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "VersionMismatchError", "load", "read_header", "save"]

FORMAT = "snn-adv-checkpoint"
FORMAT_VERSION = 2  # 2: SHA-256 of the archive in its zip comment; user bodies; learnable leaks
PathLike = Union[str, os.PathLike]

_HASH_TAG = b"snn-adv-sha256:"
_SIGNATURE_LEN = len(_HASH_TAG) + 64  # the tag and 64 hex digits
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_END_RECORD = b"PK\x05\x06"  # end of central directory: 22 bytes, the last 2 the comment's length


class VersionMismatchError(ValueError):
    """A checkpoint written by another snn-adv version (same format): refused unless ``allow_version_mismatch``."""


def _plain(metadata: Dict[str, Any]) -> Dict[str, Any]:
    """``metadata`` as JSON types (tuples become lists, other objects their ``str``), so it loads with weights_only."""
    return json.loads(json.dumps(metadata, default=str))


def _signed(archive: bytes) -> bytes:
    """``archive`` (as torch.save writes it, no zip comment) with the SHA-256 of all its bytes before the comment
    appended as the zip comment (the end record's comment length updated first, so it is covered too)."""
    if archive[-22:-18] != _ZIP_END_RECORD or archive[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote an archive without a plain zip end record; cannot sign the checkpoint")
    body = archive[:-2] + struct.pack("<H", _SIGNATURE_LEN)
    return body + _HASH_TAG + hashlib.sha256(body).hexdigest().encode("ascii")


def save(model: ImageClassifier, path: PathLike, **metadata: Any) -> Path:
    """Write ``model`` and ``metadata`` (JSON-like: training config, history...) to ``path`` atomically.

    Every :class:`~snn_adv.classifier.ImageClassifier` can be saved. A model of the package's architectures
    (``model.arch`` names them, as :func:`snn_adv.models.build_classifier` records) is rebuilt by :func:`load` on
    its own; for a user's own body, :func:`load` takes a freshly built body of the same structure.
    """
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"argument 'model' must be an AnnClassifier or SpikingClassifier, got {type(model).__name__}")
    body = getattr(model, "body", None)
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "kind": model.kind,
        "arch": _plain(dict(model.arch)),
        "body_class": f"{type(body).__module__}.{type(body).__qualname__}",
        "normalization": {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "in_channels": model.in_channels,
        "input_size": list(model.input_size) if model.input_size is not None else None,
        "metadata": _plain(metadata),
        "provenance": _plain(provenance()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if isinstance(model, SpikingClassifier):
        neurons = model.neurons()
        leaky = [n for n in neurons if isinstance(n, LeakyLIFNode)]
        payload["snn"] = {
            "timesteps": model.timesteps,
            "leaks": [float(n.leak.detach()) if n.learnable_leak else float(n.leak) for n in leaky],
            "learnable_leaks": [bool(n.learnable_leak) for n in leaky],
            "learnable_thresholds": [bool(n.learnable_threshold) for n in leaky],
            "thresholds": [float(n.v_threshold) for n in neurons],
            "neurons": [_neuron_record(n) for n in neurons],
            "encoder": _plain(model.encoder.settings()),
            "readout": model.readout,
            "backend": getattr(neurons[0], "backend", "torch") if neurons else "torch",
            "time_chunk": model.time_chunk,
            "lean": model.lean,
        }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    atomic_write_bytes(path, _signed(buffer.getvalue()))
    return path


def _neuron_record(node: nn.Module) -> Dict[str, Any]:
    """A neuron layer as the file records it: its class, and for a registered neuron (:data:`snn_adv.neurons.NEURONS`)
    its settings (what :func:`~snn_adv.neurons.build_neuron` rebuilds it from); ``settings`` None where it cannot be
    recorded (a stock or unregistered neuron, an unnamed surrogate: reloading then needs the user's body)."""
    record: Dict[str, Any] = {"class": f"{type(node).__module__}.{type(node).__qualname__}", "settings": None}
    if isinstance(node, LeakyLIFNode) and type(node) in NEURONS.values():
        try:
            record["settings"] = node.settings()
        except ValueError as error:
            record["unrecorded"] = str(error)
    return record


def _restore_neurons(body: nn.Module, records: Any, given: bool) -> None:
    """Give ``body`` the file's neuron layers: rebuild each recorded registered neuron whose class or settings the
    freshly built body lacks (``given``: the user's body, checked instead, never changed)."""
    layers = {id(node) for node in spiking_neurons(body)}
    names = [name for name, module in body.named_modules() if id(module) in layers]
    if len(names) != len(records):
        raise ValueError(f"the file records {len(records)} neuron layers, the network has {len(names)}")
    for index, (name, record) in enumerate(zip(names, records)):
        node = body.get_submodule(name)
        current = _neuron_record(node)
        if current == record:
            continue
        if given or record["settings"] is None:
            why = record.get("unrecorded", "its class is not registered (snn_adv.neurons.register_neuron)")
            raise ValueError(f"neuron layer {index} ({name}): the file has {record['class']} with settings "
                             f"{record['settings']}, the network has {current['class']} with {current['settings']}"
                             + ("" if given else f"; {why}: pass the network's body, checkpoints.load(path, body=...)"))
        parent_name, _, attribute = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, attribute, build_neuron(record["settings"], leak=float(node.leak), v_threshold=node.v_threshold,
                                                backend=node.backend, step_mode=node.step_mode))


def _not_an_archive(where: str, data: bytes) -> str:
    """Why a file that is not a zip archive is no checkpoint (empty, text, legacy torch file, anything else)."""
    if not data:
        return f"{where} is empty (0 bytes: its write never completed); re-create it"
    head = data[:4096]
    if b"\0" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return f"{where} is a text file (starts with {text[:40]!r}), not a checkpoint"
    if head[:1] == b"\x80":
        return f"{where} is a legacy (non-zip) torch file, not an snn-adv checkpoint; write checkpoints with snn_adv.checkpoints.save"
    return f"{where} is not a checkpoint (not a zip archive; starts with bytes {head[:8]!r})"


def _unpickle(where: str, data: bytes) -> Any:
    """``torch.load`` with ``weights_only=True``, telling a refused (possibly malicious) pickle from a damaged one."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "GLOBAL" in message or "allowlisted" in message:
            detail = next((line for line in message.splitlines() if "GLOBAL" in line or "allowlisted" in line), "")
            raise ValueError(f"{where} holds Python objects that safe (weights-only) loading refuses ({detail.strip()}); "
                             "snn-adv never writes such objects: the file may be malicious and was not loaded") from None
        raise ValueError(f"{where} is corrupt or truncated and cannot be read (UnpicklingError); re-create it") from None
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, ValueError, OSError, struct.error) as error:
        raise ValueError(f"{where} is corrupt or truncated and cannot be read "
                         f"({type(error).__name__}: {str(error)[:200]}); re-create it") from error


def _read(path: PathLike) -> Dict[str, Any]:
    """The verified payload of the checkpoint at ``path`` (content hash checked before anything is unpickled)."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if path.is_dir():
        raise IsADirectoryError(f"{where} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    data = path.read_bytes()
    if not data.startswith(_ZIP_LOCAL_HEADER):
        raise ValueError(_not_an_archive(where, data))
    signed = data[-_SIGNATURE_LEN:].startswith(_HASH_TAG)
    if signed and hashlib.sha256(data[:-_SIGNATURE_LEN]).hexdigest().encode("ascii") != data[-64:]:
        raise ValueError(f"{where} is corrupt: its content does not match the SHA-256 stored when it was saved "
                         "(changed on disk or in transfer, or edited); re-create it")
    payload = _unpickle(where, data)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where} is not an snn-adv checkpoint (no format field {FORMAT!r}); "
                         "write checkpoints with snn_adv.checkpoints.save")
    if not signed:
        raise ValueError(f"{where} carries no content hash (written by hand, by snn-adv before checkpoint format "
                         f"{FORMAT_VERSION}, or its end was cut off), so its integrity cannot be checked; re-create it")
    return payload


def read_header(path: PathLike) -> Dict[str, Any]:
    """Everything in a checkpoint except the weights (kind, arch, SNN settings, metadata, provenance)."""
    payload = _read(path)
    payload.pop("state_dict", None)
    return payload


def load(
    path: PathLike,
    body: Optional[nn.Module] = None,
    kind: Optional[str] = None,
    map_location: Union[str, torch.device] = "cpu",
    backend: Optional[str] = None,
    allow_version_mismatch: bool = False,
) -> ImageClassifier:
    """Rebuild the classifier saved at ``path``, in eval mode, with ``.metadata`` holding the saved metadata.

    :param body: a freshly built body of the saved network (for an SNN: the multistep spiking body, e.g.
        ``spiking_twin(MyNet())``). Needed for a user's own network; the package's architectures are rebuilt without
        it. Its parameters and buffers must match the file's names and shapes (the first mismatch is named); the
        weights, thresholds and leaks come from the file.
    :param kind: if given (``'ann'`` or ``'snn'``), a checkpoint of another kind is refused.
    :param map_location: device of the returned model.
    :param backend: override the neurons' saved backend (``'torch'`` or ``'cupy'``).
    :param allow_version_mismatch: accept a checkpoint written by another snn-adv version (refused by default,
        since layer layouts and defaults may have changed).
    """
    if kind is not None:
        check_choice("kind", kind, CLASSIFIER_KINDS)
    if body is not None and not isinstance(body, nn.Module):
        raise TypeError(f"argument 'body' must be a torch.nn.Module (a freshly built body of the saved network), "
                        f"got {type(body).__name__}")
    payload = _read(path)
    where = f"checkpoint {str(path)!r}"
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where} has format version {payload.get('format_version')!r}; this snn-adv ({__version__}) "
                         f"reads format version {FORMAT_VERSION}")
    if payload.get("package_version") != __version__ and not allow_version_mismatch:
        raise VersionMismatchError(f"{where} was written by snn-adv {payload.get('package_version')!r}, this is "
                                   f"{__version__!r}: retrain, or pass allow_version_mismatch=True to load it anyway")
    saved_kind = payload.get("kind")
    if saved_kind not in CLASSIFIER_KINDS:
        raise ValueError(f"{where} has unknown kind {saved_kind!r}: must be one of {CLASSIFIER_KINDS}")
    if kind is not None and saved_kind != kind:
        raise ValueError(f"{where} holds a model of kind {saved_kind!r}, expected kind {kind!r}")
    for key in ("arch", "state_dict", "normalization") + (("snn",) if saved_kind == "snn" else ()):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{where}: its header has no {key!r} record (not written by snn_adv.checkpoints.save)")
    arch = payload["arch"]
    if body is None and "name" not in arch:
        raise ValueError(f"{where} holds a user-defined network ({payload.get('body_class', 'unknown class')}), not one "
                         "of the package's architectures: pass a freshly built body, checkpoints.load(path, body=...)")
    try:
        model = _rebuild(payload, body, backend)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        what = f"its recorded architecture {arch.get('name')!r} on {arch.get('dataset')!r}" if body is None else "argument 'body'"
        raise ValueError(f"{where} does not match {what}: {type(error).__name__}: {str(error)[:300]}") from error
    model.arch = arch
    model.metadata = payload.get("metadata", {})
    return model.to(map_location).eval()


def _rebuild(payload: Dict[str, Any], body: Optional[nn.Module], backend: Optional[str]) -> ImageClassifier:
    """The classifier of ``payload`` with its weights: the recorded architecture, or ``body`` when given."""
    arch, snn = payload["arch"], payload.get("snn")
    if body is None:
        options = {} if snn is None else dict(
            timesteps=snn["timesteps"], thresholds=snn["thresholds"], encoder=build_encoder(snn["encoder"]),
            readout=snn["readout"], backend=backend or snn["backend"], neuron=arch.get("neuron"))
        model = build_classifier(arch["name"], arch["dataset"], payload["kind"], **options, **arch.get("kwargs", {}))
    else:
        contract = dict(mean=payload["normalization"]["mean"], std=payload["normalization"]["std"],
                        in_channels=payload.get("in_channels"), input_size=payload.get("input_size"))
        if snn is None:
            model = AnnClassifier(body, **contract)
        else:
            model = SpikingClassifier(body, encoder=build_encoder(snn["encoder"]), timesteps=snn["timesteps"],
                                      readout=snn["readout"], **contract)
            set_thresholds(model.body, snn["thresholds"])
    if snn is not None and "neurons" in snn:  # files before the record rebuild the default neuron
        _restore_neurons(model.body, snn["neurons"], given=body is not None)
    if snn is not None:
        model.time_chunk = snn.get("time_chunk")
        model.lean = snn.get("lean")
        nodes = [n for n in model.neurons() if isinstance(n, LeakyLIFNode)]
        learnable = snn.get("learnable_leaks", [False] * len(nodes))
        if len(nodes) != len(snn["leaks"]):
            raise ValueError(f"{len(snn['leaks'])} saved leaks for {len(nodes)} LeakyLIFNode layers")
        for node, leak, trainable in zip(nodes, snn["leaks"], learnable):
            if trainable and not node.learnable_leak:
                _make_leak_learnable(node)
            node.leak = leak
        for node, trainable in zip(nodes, snn.get("learnable_thresholds", [False] * len(nodes))):
            if trainable:
                node.make_threshold_learnable()  # its value comes from the state dict
    _check_structure(model.state_dict(), payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    return model


def _make_leak_learnable(node: LeakyLIFNode) -> None:
    """Give ``node`` a trainable leak parameter (its value then comes from the state dict)."""
    node.leak_param = nn.Parameter(torch.tensor(float(node.leak)))
    node.learnable_leak = True


def _check_structure(expected: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor]) -> None:
    """Refuse a network whose parameters/buffers differ from the saved ones in name or shape (the first one named)."""
    for name in list(dict.fromkeys([*saved, *expected])):
        if name not in expected:
            raise ValueError(f"the file has tensor {name!r} {tuple(saved[name].shape)}, the rebuilt network has none")
        if name not in saved:
            raise ValueError(f"the rebuilt network has tensor {name!r} {tuple(expected[name].shape)}, the file has none")
        if expected[name].shape != saved[name].shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(saved[name].shape)} in the file, "
                             f"{tuple(expected[name].shape)} in the rebuilt network")
