"""The ``lagrl`` command line: exit codes, output and argument errors."""

import subprocess
import sys

import pytest
import torch

from lagrl.cli import main


def test_check_reports_every_pair_identical(capsys):
    assert main(["check", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "18/18 bit-identical" in out
    assert out.count("identical") >= 18 and "DIFFERS" not in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["check", "--steps", "0"], "expected a positive integer"),
        (["check", "--device", "tpu9"], "unknown device"),
        (["--threads", "-1", "check"], "expected a positive integer"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no CUDA device exists")
def test_cuda_without_a_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "lagrl.cli", "check", "--steps", "3"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "bit-identical" in result.stdout
