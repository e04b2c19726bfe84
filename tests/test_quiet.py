"""A light, quiet library: no warnings and no plotting library on import, no global matplotlib state changed by
plotting, no progress bars in a log, and training logs that name the model."""
import subprocess
import sys

import torch

from conftest import loader
from snn_adv.models import build_classifier
from snn_adv.progress import progress
from snn_adv.training import train

IMPORT_CHECK = """
import sys
import snn_adv
assert not any(m.startswith("matplotlib") for m in sys.modules), "import snn_adv imported matplotlib"
import matplotlib
matplotlib.use("svg")  # a user's own choice of backend
from snn_adv import plots
plots.plot_lines({"a": [(0, 1.0, 0.5, 1.5), (1, 2.0, 2.0, 2.0)]}, sys.argv[1], xlabel="x", ylabel="y", title="t")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules, "plotting imported pyplot"
print("ok")
"""


def run_python(*args: str) -> subprocess.CompletedProcess:
    """``python -W error ARGS``: any warning is an error."""
    return subprocess.run([sys.executable, "-W", "error", *args], capture_output=True, text=True, timeout=300)


def test_import_warns_nothing_loads_no_plotting_and_plots_leave_matplotlib_alone(tmp_path):
    done = run_python("-c", IMPORT_CHECK, str(tmp_path / "plot.png"))
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_cli_help_warns_nothing():
    done = run_python("-m", "snn_adv.cli", "--help")
    assert done.returncode == 0 and "usage: snn-adv" in done.stdout
    assert done.stderr == ""


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(capsys):
    assert list(progress(range(3), "stage")) == [0, 1, 2] and capsys.readouterr().err == ""  # captured: no terminal
    list(progress(range(3), "stage", enabled=True))
    assert "stage" in capsys.readouterr().err


def test_training_logs_one_line_per_epoch_naming_the_model(fmnist, capsys):
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", hidden=8)
    train(model, loader(fmnist.train_x[:64], fmnist.train_y[:64], batch_size=16), epochs=2, seed=3, lr=0.01)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("train ANN vgg-tiny (seed 3)") and len(lines) == 3, lines
    assert all("ANN vgg-tiny epoch=" in line for line in lines[1:]) and "\r" not in "".join(lines)
    train(model, loader(fmnist.train_x[:16], fmnist.train_y[:16]), epochs=1, progress=False)
    assert capsys.readouterr().err == ""
