"""The language of the config schema: a leaf :class:`Value`, :class:`ListOf`, :class:`MapOf` and :class:`Section`
(an object with known keys), each checking a JSON value and appending every problem with its full key path; and
the common leaves. Low in the package: each owner of a config section (training, conversion, adversarial training,
the model zoo) declares its keys with it, and :mod:`snn_adv.config` composes them."""
from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["COUNT", "ConfigError", "FLAG", "FRACTION", "INT", "LEAK", "ListOf", "MapOf", "NUMBER", "OBJECT", "POSITIVE",
           "POSITIVE_INT", "Section", "TEXT", "Value", "show"]

Choices = Union[None, Sequence[Any], Callable[[], Sequence[Any]]]


class ConfigError(ValueError):
    """A config that does not fit :data:`SCHEMA`: ``problems`` lists each one with its full key path."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


# --------------------------------------------------------------------------------------------------------------
# The schema language: Value (a leaf), ListOf, Section (an object with known keys)
# --------------------------------------------------------------------------------------------------------------
_TYPES = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false", "object": "an object",
          "any": "any JSON value"}


def _fits(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return True


def show(path: str, value: Any) -> str:
    """How a problem names a key and its value."""
    return f"config key {path!r} = {json.dumps(value)[:80]}"


@dataclass(frozen=True)
class Value:
    """A leaf: a JSON value of ``kind`` (``int``, ``number``, ``str``, ``bool``, ``object``, ``any``), optionally
    null, within ``[minimum, maximum]``, one of ``choices`` (a sequence, or a function returning one)."""

    kind: str
    nullable: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Choices = None

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        if value is None:
            if not self.nullable:
                problems.append(f"{show(path, value)}: must be {self.describe()}, not null")
            return
        if not _fits(self.kind, value):
            problems.append(f"{show(path, value)}: must be {self.describe()}")
            return
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            problems.append(f"{show(path, value)}: must be {self.describe()}")
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is not None and value not in choices:
            problems.append(f"{show(path, value)}: must be one of {', '.join(json.dumps(c) for c in choices)}")

    def describe(self) -> str:
        text = _TYPES[self.kind]
        if self.minimum is not None and self.maximum is not None:
            text += f" in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        elif self.maximum is not None:
            text += f" <= {self.maximum:g}"
        return text + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class ListOf:
    """A JSON list of ``item``; ``unique``: no value twice; at least ``min_items`` entries."""

    item: Any
    unique: bool = False
    min_items: int = 1

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        if not isinstance(value, list):
            problems.append(f"{show(path, value)}: must be a list")
            return
        if len(value) < self.min_items:
            problems.append(f"{show(path, value)}: must hold at least {self.min_items} entr"
                            f"{'y' if self.min_items == 1 else 'ies'}")
        if self.unique:
            counts = Counter(json.dumps(v, sort_keys=True) for v in value)
            for shown, count in ((v, n) for v, n in counts.items() if n > 1):
                problems.append(f"{show(path, value)}: must not repeat a value ({shown} appears {count} times)")
        for i, entry in enumerate(value):
            self.item.check(entry, f"{path}[{i}]", problems)


@dataclass(frozen=True)
class MapOf:
    """A JSON object whose keys are names of the user's choosing, each value checked by ``value``."""

    value: Any

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{show(path, value)}: must be an object")
            return
        for key, entry in value.items():
            self.value.check(entry, f"{path}.{key}", problems)


@dataclass(frozen=True)
class Section:
    """A JSON object with known keys: ``fields`` (key -> spec), of which ``required`` must be present. Unknown keys
    are refused with the nearest valid one."""

    fields: Mapping[str, Any]
    required: Tuple[str, ...] = ()
    extra: Callable[[Mapping[str, Any], str, List[str]], None] = field(default=lambda value, path, problems: None)

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{show(path, value) if path else 'config'}: must be an object")
            return
        for key, entry in value.items():
            where = f"{path}.{key}" if path else key
            if key in self.fields:
                self.fields[key].check(entry, where, problems)
                continue
            near = difflib.get_close_matches(key, list(self.fields), n=1, cutoff=0.6)
            hint = (f"did you mean {(path + '.' if path else '') + near[0]!r}?" if near
                    else f"allowed here: {', '.join(sorted(self.fields))}")
            problems.append(f"config key {where!r} is unknown; {hint}")
        for key in self.required:
            if key not in value:
                problems.append(f"config key {(path + '.' if path else '') + key!r} is missing")
        self.extra(value, path, problems)


INT = Value("int")
POSITIVE_INT = Value("int", minimum=1)
COUNT = Value("int", minimum=1, nullable=True)  # a number of images; null: all
NUMBER = Value("number")
POSITIVE = Value("number", minimum=0)
FRACTION = Value("number", minimum=0, maximum=1)
LEAK = Value("number", minimum=1e-9, maximum=1)
TEXT = Value("str")
FLAG = Value("bool")
OBJECT = Value("object")  # free keys (architecture or torchattacks keyword arguments)
