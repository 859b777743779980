"""Shared fixtures: one torch thread, and a ``device`` fixture that runs each test on CPU and CUDA.

Small-model CPU work on 2-core machines can be 10–50× slower with torch's default two threads, so the
whole suite runs with one. SB3's ``learn()`` without a log folder makes a ``/tmp/SB3-<time>`` directory
(its logger's ``configure()``); ``SB3_LOGDIR`` keeps those of the suite in pytest's temporary folder.
"""

import pytest
import torch

torch.set_num_threads(1)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs on: CPU always, CUDA where one is present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="session")
def sb3_log_folder(tmp_path_factory):
    """``SB3_LOGDIR`` for the session (subprocesses and Ray workers inherit it), restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3")))
        yield
