"""Shared fixtures: one torch thread, and a ``device`` fixture that runs each test on CPU and CUDA.

Small-model CPU work on 2-core machines can be 10–50× slower with torch's default two threads, so the
whole suite runs with one.
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
