"""pytest plugin for ``sb3_suite.py``: SB3's own tests with ``stable_baselines3.PPO``/``A2C`` swapped for lagrl's.

Loaded with ``-p sb3_swap`` (so it is imported before any test module), configured by environment variables:

- ``LAGRL_SB3_PRESET``: ``"ppo:<preconditioner>"`` or ``"a2c:<preconditioner>"``;
- ``LAGRL_SB3_RESULTS``: where to write the per-test outcomes (JSON);
- ``LAGRL_SB3_DESELECT``: optional JSON ``{"nodeid": "reason", ...}`` of tests deselected with a reason.

The swapped class is a thin subclass of ``LagrangianPPO``/``LagrangianA2C`` named ``PPO``/``A2C`` whose
``preconditioner`` defaults to the preset. It replaces ``stable_baselines3.PPO`` and ``stable_baselines3.ppo.PPO``
before collection, so ``from stable_baselines3 import PPO`` in a test module, and the parametrize lists built from it,
bind the swapped class; collection then checks that no test module or parameter still holds SB3's original.
Only tests that exercise the preset's algorithm are kept (see :func:`selection`).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import stable_baselines3 as sb3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

import lagrl
import lagrl.agents
from lagrl.agents import LagrangianA2C, LagrangianPPO

torch.set_num_threads(1)

ALGO, PRECONDITIONER = os.environ["LAGRL_SB3_PRESET"].split(":", 1)
NAME = ALGO.upper()  # "PPO" | "A2C"
BASES: dict[str, type[BaseAlgorithm]] = {"PPO": LagrangianPPO, "A2C": LagrangianA2C}
ORIGINAL: type[BaseAlgorithm] = getattr(sb3, NAME)
ALGO_NAMES = {"a2c", "ppo", "dqn", "sac", "td3", "ddpg"}
LAGRL_DIRS = tuple(str(Path(module.__file__).resolve().parent) for module in (lagrl, lagrl.agents))


def swapped_class(base: type[BaseAlgorithm], name: str, preconditioner: str) -> type[BaseAlgorithm]:
    """``base`` with ``preconditioner`` defaulting to the preset, named like SB3's class (ids, reprs, messages)."""

    def __init__(self: Any, *args: Any, preconditioner: str = preconditioner, **kwargs: Any) -> None:
        base.__init__(self, *args, preconditioner=preconditioner, **kwargs)

    return type(name, (base,), {"__init__": __init__, "__qualname__": name, "__module__": __name__})


SWAPPED = swapped_class(BASES[NAME], NAME, PRECONDITIONER)
globals()[NAME] = SWAPPED  # picklable by reference as sb3_swap.PPO / sb3_swap.A2C
setattr(sb3, NAME, SWAPPED)
setattr(getattr(sb3, ALGO), NAME, SWAPPED)  # stable_baselines3.ppo.PPO

DESELECT: dict[str, str] = json.loads(os.environ.get("LAGRL_SB3_DESELECT", "{}"))
RESULTS: dict[str, dict[str, Any]] = {}
SELECTION: dict[str, list[str]] = {"selected": [], "deselected": [], "deselected_with_reason": []}


def _values(item: pytest.Item) -> list[Any]:
    """The item's parameter values, tuples/lists/dicts opened one level (``parametrize("a", [(PPO, ...)])``)."""
    callspec = getattr(item, "callspec", None)
    out: list[Any] = []
    for value in callspec.params.values() if callspec is not None else ():
        out.append(value)
        if isinstance(value, (tuple, list)):
            out.extend(value)
        elif isinstance(value, dict):
            out.extend(value.values())
    return out


def selection(item: pytest.Item) -> tuple[bool, str]:
    """Whether ``item`` exercises the preset's algorithm, and why.

    Parametrized over algorithm classes (or algorithm names such as ``"ppo"``): kept iff the preset's is among them.
    Otherwise kept iff the test's source names the class (``\\bPPO\\b``) or its id names the algorithm.
    """
    params = _values(item)
    algos = {v.__name__ for v in params if isinstance(v, type) and issubclass(v, BaseAlgorithm)}
    algos |= {v.upper() for v in params if isinstance(v, str) and v.lower() in ALGO_NAMES}
    if algos:
        return NAME in algos, f"parametrized with {sorted(algos)}"
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        source = ""
    if re.search(rf"\b{NAME}\b", source):
        return True, f"names {NAME}"
    if re.search(rf"(?<![a-z0-9]){ALGO}(?![a-z0-9])", item.name.lower()):  # test_ppo_warnings, not "unsupported"
        return True, f"id names {ALGO}"
    return False, f"does not use {NAME}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modules = {item.module for item in items if getattr(item, "module", None) is not None}
    stale = [m.__name__ for m in modules if getattr(m, NAME, SWAPPED) is ORIGINAL]
    stale += [i.nodeid for i in items if any(v is ORIGINAL for v in _values(i))]
    if stale:
        raise pytest.UsageError(f"SB3's original {NAME} is still bound in {stale[:5]} (swap came too late)")
    kept, dropped = [], []
    for item in items:
        keep, reason = selection(item)
        if item.nodeid in DESELECT:
            keep, reason = False, DESELECT[item.nodeid]
            SELECTION["deselected_with_reason"].append(item.nodeid)
        (kept if keep else dropped).append(item)
        SELECTION["selected" if keep else "deselected"].append(item.nodeid)
        item.user_properties.append(("selection", reason))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def _frame(excinfo: pytest.ExceptionInfo[BaseException], dirs: tuple[str, ...]) -> str | None:
    """``path:line in function`` of the innermost traceback entry under ``dirs``."""
    for entry in reversed(excinfo.traceback):
        path = str(entry.path)
        if path.startswith(dirs):
            return f"{path}:{entry.lineno + 1} in {entry.name}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    entry = RESULTS.setdefault(item.nodeid, {"outcome": "passed", "duration": 0.0})
    entry["duration"] += report.duration
    if report.skipped and "wasxfail" not in report.__dict__:
        entry["outcome"] = "skipped"
        entry.setdefault("error", str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "")
    elif hasattr(report, "wasxfail"):
        entry["outcome"] = "xfailed" if report.skipped else "xpassed"
    elif report.failed and entry["outcome"] != "failed":
        entry["outcome"] = "failed" if report.when == "call" else "error"
        excinfo = call.excinfo
        if excinfo is not None:
            tests_dir = str(Path(str(item.path)).resolve().parent)
            entry.update(
                when=report.when,
                error=(excinfo.exconly().strip().splitlines() or [""])[0],
                lagrl_frame=_frame(excinfo, LAGRL_DIRS),
                test_frame=_frame(excinfo, (tests_dir,)),
                crash=f"{excinfo.traceback[-1].path}:{excinfo.traceback[-1].lineno + 1}" if excinfo.traceback else None,
            )
    return report


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        message = str(report.longrepr).strip().splitlines()
        RESULTS[report.nodeid] = {"outcome": "error", "when": "collect", "error": message[-1] if message else ""}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("LAGRL_SB3_RESULTS")
    if path:
        Path(path).write_text(json.dumps({"results": RESULTS, "selection": SELECTION}, indent=1))
