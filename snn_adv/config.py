"""Experiment configs: JSON files (``"extends"`` a base file), ``--set`` overrides, and a schema checked at load.

Every config is checked against :data:`SCHEMA` before any work starts, and all its problems are reported at once,
each with its full key path::

    config key 'models.ann.epochz' is unknown; did you mean 'models.ann.epochs'?
    config key 'seed' = 'zero': must be an integer
    config key 'eval_seeds' = [0, 0, 0]: must not repeat a value (0 appears 2 times)

The schema language is :mod:`snn_adv.schema`; this module only composes what the owners of each section declare: a
model recipe's keys (:data:`snn_adv.training.TRAIN_FIELDS`, :data:`snn_adv.conversion.CONVERT_FIELDS` and
``HYBRID_FIELDS``, :data:`snn_adv.adversarial_training.ADVERSARIAL_SECTION`, composed per kind in
:data:`snn_adv.zoo.MODEL_FIELDS`), each study's section (``CONFIG`` in its module, composed in
:data:`snn_adv.studies.STUDY_SECTIONS`) and an attack entry's keys (:data:`snn_adv.attack_specs.ATTACK`, derived from
the attack registry). Extending it: a new argument of ``train`` is one line in ``TRAIN_FIELDS``, a new study key one
line in its module's ``CONFIG``; each a :class:`Value`, :class:`ListOf` or :class:`Section` that says what it may
hold. Choices that grow with the package (datasets, architectures, attack
names) are read from their registries when a config is checked, so a new dataset needs no schema change.

JSON rather than TOML because the stdlib reads it on every supported Python (``tomllib`` is 3.11+).
"""
from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .io import PathLike
from .schema import COUNT, INT, OBJECT, POSITIVE_INT, TEXT, ConfigError, ListOf, MapOf, Section, Value, show
from .attack_specs import ATTACK_LIST
from .studies import STUDY_SECTIONS
from .zoo import BACKENDS, DEVICES, MODEL_FIELDS, MODEL_REQUIRED

__all__ = ["ConfigError", "ListOf", "MapOf", "SCHEMA", "Section", "Value", "check_output_dir", "load_attacks", "load_config",
           "merge", "parse_overrides", "validate_config"]

# --------------------------------------------------------------------------------------------------------------
# The schema of every key the package reads
# --------------------------------------------------------------------------------------------------------------
def _datasets() -> Sequence[str]:
    from .data import DATASETS

    return sorted(DATASETS)


def _architectures() -> Sequence[str]:
    from .models import ARCHITECTURES

    return sorted(ARCHITECTURES)


@dataclass(frozen=True)
class DatasetValue:
    """A dataset: a registered name, or an image-folder spec object (checked by :func:`snn_adv.data.dataset_info`)."""

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        if not isinstance(value, dict):
            Value("str", choices=_datasets).check(value, path, problems)
            return
        from .data import dataset_info

        try:
            dataset_info(value)
        except (TypeError, ValueError) as error:
            problems.append(f"{show(path, value)}: {error}")


def _timesteps_of(config: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    """(key path, T) of every timesteps value a config sets."""
    models, studies = config.get("models", {}), config.get("studies", {})
    found = [(f"models.{kind}.timesteps", models.get(kind, {}).get("timesteps")) for kind in ("snn_conv", "snn_bp")]
    found += [(f"studies.timesteps.timesteps[{i}]", t) for i, t in enumerate(studies.get("timesteps", {}).get("timesteps", []))]
    found.append(("studies.leak.timesteps", studies.get("leak", {}).get("timesteps")))
    found += [(f"studies.layerwise.models[{i}].timesteps", m.get("timesteps"))
              for i, m in enumerate(studies.get("layerwise", {}).get("models", [])) if isinstance(m, dict)]
    return [(path, t) for path, t in found if isinstance(t, int) and not isinstance(t, bool) and t >= 1]


def _check_timesteps_fit(config: Mapping[str, Any], path: str, problems: List[str]) -> None:
    """Every T of the config must fit one evaluation batch's encoded input in memory: fail at load, not after
    models were trained for it (a lower bound of the need: see :func:`snn_adv.validation.check_fits_in_memory`)."""
    import torch

    from .data import dataset_info
    from .validation import check_fits_in_memory

    batch = config.get("eval_batch_size")
    try:
        info = dataset_info(config["data"]["dataset"])
    except (KeyError, TypeError, ValueError):
        return  # reported by the schema
    if not isinstance(batch, int):
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for where, timesteps in _timesteps_of(config):
        try:
            check_fits_in_memory(where, timesteps, (timesteps, batch, info.in_channels, *info.input_size),
                                 torch.float32, device, what="the encoded input [T, eval_batch_size, C, H, W] =")
        except ValueError as error:
            problems.append(str(error).replace("argument ", "config key ", 1))


SCHEMA = Section({
    "preset": TEXT,
    "description": TEXT,
    "seed": INT,
    "eval_seeds": ListOf(INT, unique=True),
    "eval_batch_size": POSITIVE_INT,
    "device": Value("str", choices=DEVICES),
    "data": Section({"dataset": DatasetValue(), "root": Value("str", nullable=True),
                     "train_count": COUNT, "test_count": COUNT, "subset_seed": INT}, required=("dataset",)),
    "models": Section({
        "arch": Value("str", choices=_architectures),
        "arch_kwargs": OBJECT,
        "backend": Value("str", choices=BACKENDS),
        "seeds": Section({"main": INT, "source": INT}, required=("main", "source")),
        **{kind: Section(fields, required=MODEL_REQUIRED[kind]) for kind, fields in MODEL_FIELDS.items()},
        # named variants of the recipes (e.g. adversarially trained): per kind, keys that replace the kind's own
        "defences": MapOf(Section({kind: Section(fields) for kind, fields in MODEL_FIELDS.items()})),
    }, required=("arch", "seeds", "ann", "snn_conv", "snn_bp")),
    "studies": Section(STUDY_SECTIONS),
}, required=("seed", "eval_seeds", "eval_batch_size", "data", "models", "studies"), extra=_check_timesteps_fit)

#: ``--set`` keys that a study section's own key overrides: (global key path, key in a study section)
SHADOWED_BY_STUDIES: Tuple[Tuple[str, str], ...] = (("data.test_count", "test_count"),)


def validate_config(config: Mapping[str, Any], source: str = "config") -> Mapping[str, Any]:
    """Check ``config`` against :data:`SCHEMA`; raise :class:`ConfigError` listing every problem, else return it."""
    problems: List[str] = []
    SCHEMA.check(config, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return config


# --------------------------------------------------------------------------------------------------------------
# Files, overrides, output folders
# --------------------------------------------------------------------------------------------------------------
def _read_extending(path: Path, chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The JSON object of ``path`` over the configs it ``"extends"`` (paths relative to the file); cycles refused."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved):], resolved))
        raise ValueError(f"config {str(chain[0])!r}: 'extends' forms a cycle: {cycle}")
    if not path.is_file():
        what = "the config" if not chain else f"'extends' of {str(chain[-1])!r}"
        raise ValueError(f"{what} = {str(path)!r}: no such file")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"config {str(path)!r}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"config {str(path)!r}: must hold a JSON object at the top level")
    base = config.pop("extends", None)  # "extends": "other.json" (relative to this file): its values, then ours
    if base is None:
        return config
    if not isinstance(base, str):
        raise ValueError(f"config {str(path)!r}: key 'extends' = {json.dumps(base)}: must be a file name")
    return merge(_read_extending(path.parent / base, (*chain, resolved)), config)


def load_config(path: PathLike, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Read a JSON config file, merge ``overrides`` (nested dicts, e.g. from :func:`parse_overrides`) over it key by
    key, and check the result against :data:`SCHEMA` (:class:`ConfigError` lists every problem). A top-level
    ``"extends": "base.json"`` (relative to the file) starts from that config instead of from nothing.

    An override that a study section overrides in turn (``data.test_count`` while ``studies.<name>.test_count`` is
    set) is refused when every study section overrides it, and warned about when some do.
    """
    path = Path(path)
    config = merge(_read_extending(path), overrides or {})
    validate_config(config, f"config {str(path)!r}" + (" with --set overrides" if overrides else ""))
    _check_shadowed(overrides or {}, config)
    return config


def load_attacks(source: str, study: str = "robustness") -> List[Dict[str, Any]]:
    """Attack entries from a JSON file (a list of entries, or an object with ``"attacks"``) or from the section
    ``studies.<study>`` of a preset or config file (e.g. ``"cpu"``), checked by the schema a config's attack lists
    get (:class:`ConfigError` lists every problem)."""
    from .configs import config_path

    path = Path(source)
    data = json.loads(path.read_text()) if path.is_file() and path.suffix == ".json" else None
    if isinstance(data, list):
        specs = data
    elif isinstance(data, dict) and "attacks" in data:
        specs = data["attacks"]
    else:
        config = load_config(config_path(source))
        section = config.get("studies", {}).get(study, {})
        if "attacks" not in section:
            raise ValueError(f"argument 'attacks' = {source!r}: the config has no studies.{study}.attacks "
                             f"(studies with attack lists: {sorted(k for k, v in config.get('studies', {}).items() if 'attacks' in v)})")
        specs = section["attacks"]
    problems: List[str] = []
    ATTACK_LIST.check(specs, "attacks", problems)
    if problems:
        raise ConfigError(f"argument 'attacks' = {source!r}", problems)
    return [dict(spec) for spec in specs]


def _lookup(tree: Mapping[str, Any], dotted: str) -> Tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_shadowed(overrides: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    studies = config.get("studies", {})
    for dotted, study_key in SHADOWED_BY_STUDIES:
        given, value = _lookup(overrides, dotted)
        if not given or not studies:
            continue
        shadowing = [name for name, section in studies.items() if study_key in section]
        if not shadowing:
            continue
        shown = ", ".join(f"studies.{n}.{study_key}={json.dumps(studies[n][study_key])}" for n in shadowing)
        message = (f"--set {dotted}={json.dumps(value)} is overridden by {shown}; set "
                   f"--set studies.{shadowing[0]}.{study_key}={json.dumps(value)} (one per study) instead")
        if len(shadowing) == len(studies):
            raise ValueError(f"{message}: as given it changes nothing")
        warnings.warn(message, stacklevel=3)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge: values of ``override`` win; nested dicts are merged, not replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` -> ``{"a": {"b": 1}, "c": [2, 3]}`` (values are JSON; bare words are strings)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"argument '--set' = {item!r}: must look like KEY=VALUE, e.g. data.test_count=200")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"argument '--set' = {item!r}: {part!r} was already set to a value, not an object")
            node = child
        node[leaf] = value
    return out


def check_output_dir(path: PathLike, name: str = "--out") -> Path:
    """Create the output folder ``path`` if needed and prove it writable (a probe file is written and removed),
    so that a bad ``--out`` fails before any training rather than after the first model."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"argument {name!r} = {str(path)!r}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"argument {name!r} = {str(path)!r}: cannot write there ({error.strerror or error})") from None
    return path
