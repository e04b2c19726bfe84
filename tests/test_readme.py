"""The README's Python examples run as written (each ```python block in a fresh interpreter), so they never rot; a
block that imports an optional framework (snnTorch, Norse, torchattacks) is skipped where it is not installed."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)
OPTIONAL = ("snntorch", "norse", "torchattacks")


def test_readme_has_short_python_examples():
    assert len(BLOCKS) >= 2
    assert all(len([line for line in block.splitlines() if line.strip()]) <= 15 for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path):
    for module in OPTIONAL:
        if re.search(rf"^(import|from) {module}\b|^import .*\b{module}\b", BLOCKS[index], flags=re.M):
            pytest.importorskip(module)
    script = tmp_path / f"readme_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"
