"""Nothing lost: a study process SIGKILLed mid-run, then rerun, gives exactly the numbers of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time


#: subprocesses import this checkout's snn_adv (not whatever an editable install points at), one thread each
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   os.environ.get("PYTHONPATH")]))}

# A cell runner whose cells draw from every global generator (as training and attacks do) and take a while.
SCRIPT = textwrap.dedent(
    """
    import random, sys, time
    import numpy as np, torch
    from snn_adv.cells import CellStore, run_cells

    def compute(settings):
        time.sleep(float(sys.argv[2]))  # not a setting: the results must not depend on it
        return {"torch": torch.rand(3).sum().item(), "numpy": float(np.random.rand()), "python": random.random(),
                "x2": settings["x"] * 2}

    cells = [{"x": i} for i in range(6)]
    run_cells(cells, compute, CellStore(sys.argv[1]), seed=11, progress=False)
    """
)


def _results(directory):
    return {p.name: json.loads(p.read_text())["result"] for p in sorted((directory / "cells").glob("*.json"))}


def _start(tmp_path, out, sleep):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), str(sleep)], stderr=subprocess.PIPE, env=ENV)


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _start(tmp_path, reference, 0.0).wait(timeout=120) == 0

    proc = _start(tmp_path, killed, 0.4)
    deadline = time.time() + 120
    while len(list((killed / "cells").glob("*.json"))) < 2:  # wait until two cells are finished
        assert proc.poll() is None and time.time() < deadline, "job ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _results(killed)
    assert 2 <= len(partial) < 6  # killed mid-run: some cells done, some not
    assert all(r == _results(reference)[name] for name, r in partial.items())  # earlier files intact

    before = {p: p.stat().st_mtime_ns for p in (killed / "cells").glob("*.json")}
    assert _start(tmp_path, killed, 0.0).wait(timeout=120) == 0
    assert _results(killed) == _results(reference)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished cells were skipped, not redone
    assert not list((killed / "cells").glob(".*.tmp"))  # no stray temporary files




def _study(out):
    cmd = [sys.executable, "-m", "snn_adv.cli", "study", "eps", "--config", "tiny", "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)


def test_real_study_killed_mid_run_resumes_to_identical_numbers(tmp_path):
    """`snn-adv study eps` (training included) SIGKILLed once its first cell is written, then rerun."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _study(reference).wait(timeout=300) == 0
    proc = _study(killed)
    deadline = time.time() + 300
    while not list((killed / "eps" / "cells").glob("*.json")):
        assert proc.poll() is None and time.time() < deadline, "study ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_results(killed / "eps")) < len(_results(reference / "eps"))
    assert _study(killed).wait(timeout=300) == 0
    assert _results(killed / "eps") == _results(reference / "eps")
    assert (killed / "eps" / "table.csv").read_text().replace("\r", "") == (reference / "eps" / "table.csv").read_text()
