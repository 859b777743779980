"""SB3's own PPO/A2C tests, run with lagrl's agents in place of ``stable_baselines3.PPO``/``A2C``, one preset at a time.

Usage (repo root, venv active)::

    python experiments/peer/sb3_suite.py --preset ppo:adam --preset a2c:rmsprop --json sb3_defaults.json
    python experiments/peer/sb3_suite.py --preset ppo:natural --files test_run.py test_save_load.py
    python experiments/peer/sb3_suite.py --preset a2c:natural --sb3-tests /tmp/sb3/tests  # an unpacked tests/ folder
    python experiments/peer/sb3_suite.py --preset ppo:fisher-sqrt -- -x --tb=long        # after --: pytest's own

Presets are ``ppo:<preconditioner>`` / ``a2c:<preconditioner>`` with the preconditioners of ``lagrl.agents``.
Without ``--sb3-tests`` the tests of the *installed* stable-baselines3 version come from its PyPI sdist
(``pip download --no-deps --no-binary :all: stable-baselines3==X``; it ships ``tests/``), of which ``tests/`` and
``pyproject.toml`` (SB3's pytest settings) are unpacked into ``--cache``; nothing of SB3 enters this repository.
``--sb3-tests DIR`` takes a tests folder instead (e.g. ``git --git-dir=... archive v2.9.2 tests`` of SB3's repo).

Each preset runs in its own ``python -m pytest -p sb3_swap`` (see ``sb3_swap.py``: the swap, and which tests exercise
the preset's algorithm) with ``OMP_NUM_THREADS=1``; its output goes to a log file, and this prints per test file the
passed/failed/skipped counts. ``--json`` writes them with each failing test id, the first line of its error and the
innermost lagrl and SB3-test frames of its traceback. ``--fast`` leaves out the tests in :data:`SLOW`, with reasons.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ALGOS = ("ppo", "a2c")
PRECONDITIONERS = ("adam", "rmsprop", "fisher-sqrt", "natural")
# Tests left out with --fast, each with its reason (node ids relative to the folder holding tests/).
SLOW: dict[str, str] = {
    "tests/test_vec_extract_dict_obs.py::test_vec_with_ppo": (
        "Fisher presets: 70-135 s on one core (vs 1 s for adam): K-FAC of the 7396-input first layer (86x86 obs), "
        "whose 7397x7397 input factor is decomposed every update and multiplied on every optimizer step"
    ),
}
EXTRAS = {"pandas": "pandas", "matplotlib": "matplotlib", "ale_py": "ale-py"}  # module: distribution
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def sb3_tests(version: str, cache: Path) -> Path:
    """``cache/tests`` from the PyPI sdist of stable-baselines3 ``version`` (downloaded and unpacked once)."""
    if (cache / "tests").is_dir():
        return cache / "tests"
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp]
        subprocess.run([*pip, f"stable-baselines3=={version}"], check=True, stdout=subprocess.DEVNULL)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            top = f"stable_baselines3-{version}/"
            members = [m for m in tar.getmembers() if m.name.startswith((top + "tests/", top + "pyproject.toml"))]
            if not any(m.name.startswith(top + "tests/") for m in members):
                raise SystemExit(
                    f"{sdist.name} has no tests/: fetch SB3's repository, `git --git-dir=... archive v{version} tests "
                    "pyproject.toml | tar x -C DIR` and pass --sb3-tests DIR/tests"
                )
            for member in members:
                member.name = member.name[len(top) :]
            cache.mkdir(parents=True, exist_ok=True)
            tar.extractall(cache, members=members, filter="data")
    return cache / "tests"


def test_files(tests: Path, algo: str, only: list[str] | None) -> list[Path]:
    """The test files that name the algorithm's class (``only``: a subset, by file name)."""
    name = algo.upper()
    files = sorted(p for p in tests.glob("test_*.py") if name in p.read_text())
    return [p for p in files if only is None or p.name in only]


def extras(cache: Path) -> Path | None:
    """A ``site-packages`` with SB3's optional test imports that this environment lacks (``pip install --prefix``,
    so the environment's numpy and co. are reused): test_logger/test_vec_monitor import pandas and matplotlib,
    test_utils ale_py, at module level."""
    site = cache / "extras" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    missing = [dist for module, dist in EXTRAS.items() if importlib.util.find_spec(module) is None]
    missing = [dist for dist in missing if not any(site.glob(f"{dist.replace('-', '_')}-*.dist-info"))]
    if missing:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--prefix", str(cache / "extras"), *missing]
        subprocess.run(pip, check=True)
    return site if site.is_dir() else None


def run_preset(
    preset: str, tests: Path, files: list[Path], log: Path, pytest_args: list[str], site: Path | None, fast: bool
) -> dict:
    """One pytest process for ``preset``; its results (``sb3_swap``'s JSON) with wall time and per-file counts."""
    root = tests.parent
    config = root / "pyproject.toml"
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        paths = [str(HERE), str(site or ""), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "OMP_NUM_THREADS": "1",
            "LAGRL_SB3_PRESET": preset,
            "LAGRL_SB3_RESULTS": str(results),
            "LAGRL_SB3_DESELECT": json.dumps(SLOW if fast else {}),
        }
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "sb3_swap", "--rootdir", str(root)]
        command += ["-c", str(config)] if config.is_file() else []
        command += ["-q", "--tb=short", "-rfE", *map(str, files), *pytest_args]
        start = time.perf_counter()
        with log.open("w") as out:
            rc = subprocess.run(command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
        data = json.loads(results.read_text()) if results.is_file() else {"results": {}, "selection": {}}
    per_file: dict[str, Counter] = {}
    for nodeid, result in data["results"].items():
        per_file.setdefault(nodeid.split("::")[0], Counter())[result["outcome"]] += 1
    failures = {k: v for k, v in data["results"].items() if v["outcome"] in ("failed", "error")}
    slowest = sorted(data["results"].items(), key=lambda kv: -kv[1].get("duration", 0.0))[:10]
    skips = {k: v.get("error", "") for k, v in data["results"].items() if v["outcome"] == "skipped"}
    return {
        "preset": preset,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "log": str(log),
        "totals": dict(sum(per_file.values(), Counter())),
        "per_file": {k: dict(v) for k, v in sorted(per_file.items())},
        "deselected": len(data["selection"].get("deselected", [])),
        "deselected_with_reason": {k: SLOW[k] for k in data["selection"].get("deselected_with_reason", [])},
        "failures": failures,
        "skipped": skips,
        "slowest_s": {k: round(v.get("duration", 0.0), 1) for k, v in slowest},
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n== {summary['preset']}: {summary['wall_s']} s, pytest rc {summary['returncode']}, log {summary['log']}")
    print(f"{'file':32s}" + "".join(f"{o:>9s}" for o in OUTCOMES))
    for name, counts in [*summary["per_file"].items(), ("TOTAL", summary["totals"])]:
        print(f"{Path(name).name:32s}" + "".join(f"{counts.get(o, 0):9d}" for o in OUTCOMES))
    print(f"deselected (not exercising the algorithm, or listed): {summary['deselected']}")
    print("slowest:", ", ".join(f"{k.split('::')[-1]} {v} s" for k, v in list(summary["slowest_s"].items())[:5]))
    for nodeid, failure in summary["failures"].items():
        print(f"  FAIL {nodeid}: {failure.get('error', '')[:200]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", required=True, help="ppo:adam, a2c:natural, ... (repeatable)")
    parser.add_argument("--sb3-tests", type=Path, help="an unpacked SB3 tests/ folder (default: from the sdist)")
    parser.add_argument("--cache", type=Path, help="where the sdist's tests go (default ~/.cache/lagrl/sb3-VERSION)")
    parser.add_argument("--files", nargs="+", help="only these test files (names, e.g. test_run.py)")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--log-dir", type=Path, help="pytest logs (default: CACHE/logs)")
    parser.add_argument("--fast", action="store_true", help="deselect the tests in SLOW (with their reasons)")
    parser.add_argument("--no-extras", action="store_true", help="don't pip-install pandas/matplotlib/ale-py")
    args = parser.parse_args(argv)
    for preset in args.preset:
        algo, _, preconditioner = preset.partition(":")
        if algo not in ALGOS or preconditioner not in PRECONDITIONERS:
            parser.error(f"--preset {preset!r}: want ALGO:PRECONDITIONER, ALGO in {ALGOS}, in {PRECONDITIONERS}")
    version = importlib.metadata.version("stable-baselines3")
    cache = args.cache or Path.home() / ".cache" / "lagrl" / f"sb3-{version}"
    tests = args.sb3_tests.resolve() if args.sb3_tests else sb3_tests(version, cache)
    log_dir = args.log_dir or cache / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    site = None if args.no_extras else extras(cache)
    summaries = []
    for preset in args.preset:
        files = test_files(tests, preset.split(":")[0], args.files)
        log = log_dir / f"{preset.replace(':', '-')}.log"
        summaries.append(run_preset(preset, tests, files, log, pytest_args, site, args.fast))
        print_summary(summaries[-1])
    if args.json:
        git = ["git", "-C", str(HERE.parent.parent)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "lagrl", "agents"], capture_output=True, text=True)
        report = {
            "stable_baselines3": version,
            "lagrl_commit": head,
            "lagrl_uncommitted": status.stdout.splitlines(),  # the run tested the working tree, edits included
            "tests": str(tests),
            "deselect": SLOW if args.fast else {},
            "presets": summaries,
        }
        args.json.write_text(json.dumps(report, indent=1))
    return int(any(s["failures"] or s["returncode"] not in (0, 1) for s in summaries))


if __name__ == "__main__":
    sys.exit(main())
