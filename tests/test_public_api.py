"""The package root: about 20 names for the main jobs, each importable without a warning; every name the root
exported in 0.1.0 and moved still resolves to its home's object, with a DeprecationWarning naming the home, and the
changelog lists it."""
import importlib
import warnings
from pathlib import Path

import pytest

import snn_adv

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version

CHANGELOG = (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()


def test_the_root_exports_about_twenty_names_each_without_a_warning():
    names = [name for name in snn_adv.__all__ if name != "__version__"]
    assert 15 <= len(names) <= 22 and len(set(names)) == len(names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in names:
            assert getattr(snn_adv, name) is not None
    assert not set(names) & set(snn_adv.MOVED)


@pytest.mark.parametrize("name", sorted(snn_adv.MOVED))
def test_a_moved_name_resolves_to_its_home_with_a_warning(name):
    home = snn_adv.MOVED[name]
    with pytest.warns(DeprecationWarning, match=f"{home}.{name}"):
        found = getattr(snn_adv, name)
    assert found is getattr(importlib.import_module(home), name)
    assert f"`snn_adv.{name}`" in CHANGELOG


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        snn_adv.no_such_name  # noqa: B018
