"""The command line's doors: one-line errors with exit status 2, --debug tracebacks, Ctrl-C, --version."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from snn_adv import __version__
from snn_adv.cli import main

TINY = Path(__file__).resolve().parent.parent / "snn_adv" / "configs" / "tiny.json"


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("snn-adv: error: ") and "Traceback" not in err, err
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"snn-adv {__version__}"


def test_config_mistakes_are_one_line_naming_the_key(tmp_path, capsys):
    config = json.loads(TINY.read_text())
    config["models"]["ann"]["epochz"] = 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main(["study", "eps", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "'models.ann.epochz' is unknown; did you mean 'models.ann.epochs'?" in _one_error_line(capsys)
    assert main(["study", "eps", "--config", str(TINY), "--out", str(tmp_path / "out"), "--set", "seed=zero"]) == 2
    assert "'seed' = \"zero\": must be an integer" in _one_error_line(capsys)
    assert main(["study", "eps", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")]) == 2
    assert "nope.json': no such file" in _one_error_line(capsys)


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, capsys):
    args = ["study", "eps", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")]
    for argv in (["--debug", *args], [*args, "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("snn-adv: error: ")


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import snn_adv.studies

    monkeypatch.setattr(snn_adv.studies, "run_studies", lambda *a, **k: pytest.fail("work started"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["study", "eps", "--config", str(TINY), "--out", str(blocker)]) == 2
    assert "'--out' = " in _one_error_line(capsys)
    assert main(["train-ann", "--out", str(tmp_path)]) == 2  # a folder where a checkpoint file is expected
    assert "is a folder; give the checkpoint's file name" in _one_error_line(capsys)
    assert main(["train-ann", "--out", str(blocker / "m.pt")]) == 2
    assert "argument 'folder of --out' = " in _one_error_line(capsys)


def test_missing_files_and_data_are_reported_once(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c.pt")]) == 2
    assert "missing.pt' does not exist" in _one_error_line(capsys)
    assert main(["train-ann", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "no-data"), "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "a.pt")]) == 2
    assert "no-data" in _one_error_line(capsys)


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import snn_adv.studies

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(snn_adv.studies, "run_studies", interrupted)
    assert main(["study", "eps", "--config", str(TINY), "--out", str(tmp_path / "out")]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_the_console_exit_status_is_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snn_adv.cli", "study", "eps", "--config", str(TINY), "--out",
                           str(tmp_path), "--set", "data=5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("snn-adv: error: ")
    assert "config key 'data' = 5: must be an object" in proc.stderr


@pytest.mark.parametrize("argv", [
    ["quickstart"], ["study", "robustness", "--config", "tiny", "--out", "o"], ["evaluate", "m.pt", "--attacks", "tiny"],
    ["train-ann", "--out", "m.pt"], ["convert", "m.pt", "--out", "c.pt"], ["train-snn", "c.pt", "--out", "s.pt"],
])
def test_every_long_command_takes_quiet(argv):
    from snn_adv.cli import build_parser

    args = build_parser().parse_args([*argv, "--quiet"])
    assert getattr(args, "quiet", None) is True or getattr(args, "no_progress", None) is True
