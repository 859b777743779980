"""experiments/sweep_cost.py: longest-first packing against a hand-worked case, and the priced total against
the sum over the packaged sweep's trials."""

import csv
import importlib.util
from pathlib import Path

import pytest

from lagrl.agents.sweep_config import load_sweep

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "sweep_cost.py"


@pytest.fixture(scope="module")
def sweep_cost():
    spec = importlib.util.spec_from_file_location("sweep_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_longest_first_packing_is_the_textbook_lpt_schedule(sweep_cost):
    # Graham's example: longest first puts 3 | 3, then 2 on each, then the last 2 on top: 7 (the optimum is 6).
    assert sweep_cost.packed_wall([2, 3, 2, 3, 2], slots=2) == 7
    assert sweep_cost.packed_wall([5, 1, 1], slots=3) == 5  # the longest trial is the floor
    assert sweep_cost.packed_wall([4, 4, 4, 4], slots=1) == 16  # one slot: the sum


def test_the_price_is_the_median_of_each_group_times_its_trials(sweep_cost, tmp_path, monkeypatch, capsys):
    walls = {"adam": [100.0, 300.0, 250.0], "fisher-sqrt": [120.0], "natural": [90.0, 30.0]}
    with open(tmp_path / "trials.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["env", "algo", "preconditioner", "wall_seconds"])
        writer.writeheader()
        for preset, seconds in walls.items():
            writer.writerows(
                {"env": "CartPole-v1", "algo": "ppo", "preconditioner": preset, "wall_seconds": s} for s in seconds
            )
    trials = load_sweep("agents_cartpole").trials()
    median = {"adam": 250.0, "fisher-sqrt": 120.0, "natural": 60.0}
    total = sum(median[t.preset] for t in trials)
    monkeypatch.setattr("sys.argv", ["sweep_cost", str(tmp_path), "--sweeps", "agents_cartpole", "--nodes", "3"])
    sweep_cost.main()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"{len(trials)} trials: {total / 3600:.1f} core-hours")
    assert f"longest trial {250 / 60:.0f} min" in last


def test_a_group_without_measured_trials_is_named(sweep_cost, tmp_path, monkeypatch):
    (tmp_path / "trials.csv").write_text("env,algo,preconditioner,wall_seconds\nCartPole-v1,ppo,adam,10\n")
    monkeypatch.setattr("sys.argv", ["sweep_cost", str(tmp_path), "--sweeps", "agents_cartpole"])
    with pytest.raises(SystemExit, match="fisher-sqrt"):
        sweep_cost.main()
