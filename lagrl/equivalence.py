"""Verification reports: does a Lagrangian-derived optimizer reproduce its torch.optim counterpart?

Eq. 32 reads Adam as the discretised ρ = ½ flow with a diagonal Fisher; :func:`optimizer_parity`
checks that lagrl's construction of it *is* ``torch.optim.Adam`` (and RMSprop, Eq. 31) bit for bit on
an MLP, for every combination of weight decay (coupled, decoupled), amsgrad and maximize.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from lagrl.optim import LagrangianAdam, LagrangianRMSprop


class ParityRow(NamedTuple):
    """One comparison: the optimizer pair, its settings and the largest parameter difference."""

    optimizer: str
    settings: str
    max_abs_diff: float

    @property
    def identical(self) -> bool:
        return self.max_abs_diff == 0.0


def _final_parameters(make_optimizer: Callable, steps: int, device: torch.device, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).to(device)
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        inputs = torch.randn(16, 8, generator=generator).to(device)
        targets = torch.randint(0, 4, (16,), generator=generator).to(device)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def optimizer_parity(steps: int = 1000, device: str | torch.device = "cpu", seed: int = 0) -> list[ParityRow]:
    """Final float32 parameters of LagrangianAdam/RMSprop vs torch.optim after ``steps`` steps.

    torch's single-tensor kernel is the reference (its CPU default; on CUDA ``foreach=False``).
    """
    device = torch.device(device)
    rows = []
    cases = [
        ("Adam", dict(lr=1e-2, weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx))
        for wd, dec, ams, mx in itertools.product([0.0, 0.1], [False, True], [False, True], [False, True])
    ]
    cases += [("RMSprop", dict(lr=1e-3, weight_decay=wd)) for wd in (0.0, 0.1)]
    pairs = {"Adam": (torch.optim.Adam, LagrangianAdam), "RMSprop": (torch.optim.RMSprop, LagrangianRMSprop)}
    for name, kwargs in cases:
        reference_class, lagrl_class = pairs[name]
        reference = _final_parameters(
            lambda params: reference_class(params, **kwargs, foreach=False), steps, device, seed
        )
        candidate = _final_parameters(lambda params: lagrl_class(params, **kwargs), steps, device, seed)
        settings = ", ".join(f"{key}={value}" for key, value in kwargs.items() if key != "lr")
        rows.append(ParityRow(name, settings, float((candidate - reference).abs().max())))
    return rows
