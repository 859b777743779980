"""lagrl.atomic.atomic_open: a file is replaced whole or left as it was, with the permissions open() gives."""

import os

import pytest

from lagrl.atomic import atomic_open


def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as handle:
            handle.write("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_clean_exit_replaces_the_file_with_opens_permissions(tmp_path):
    target, reference = tmp_path / "sub" / "trials.csv", tmp_path / "reference"
    with atomic_open(target, newline="") as handle:
        handle.write("a,b\r\n1,2\r\n")
    with open(reference, "w") as handle:  # what a plain open() gives under this umask
        handle.write("")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"
    assert os.stat(target).st_mode == os.stat(reference).st_mode
    assert sorted(p.name for p in target.parent.iterdir()) == ["trials.csv"]
