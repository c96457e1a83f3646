import subprocess
import sys

import pytest

from pixelflowsom._cli import main


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--size", "96", "--channels", "6", "--phenotypes", "4", "--fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "6 channels x 96 x 96 pixels, 4 known phenotypes" in out
    assert "Adjusted Rand index against the known phenotypes: " in out
    ari = float(out.split("Adjusted Rand index against the known phenotypes: ")[1].split()[0])
    assert ari > 0.9


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: pixelflowsom" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--fraction", "2"], "--fraction 2.0 must be in (0, 1]"),
        (["demo", "--size", "big"], "invalid int value: 'big'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_module():
    result = subprocess.run([sys.executable, "-m", "pixelflowsom", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("pixelflowsom ")
