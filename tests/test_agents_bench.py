"""experiments/benchmarks/agents_bench.py --from-sweeps: a sweep's trials.csv read back as the benchmark's runs and
summarised as its table (medians, misses, ratios to SB3 PPO), checked against hand-worked numbers; and --presets
NAME={...} variants, parsed, refused where malformed, and run as the agent their config describes."""

import argparse
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sb3_contrib")
SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "agents_bench.py"
COLUMNS = ["trial_id", "algo", "env", "preconditioner", "seed", "timesteps", "eval_mean", "eval_std"]
COLUMNS += ["steps_to_threshold", "fps", "wall_seconds"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("agents_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def write_sweep(directory: Path, trials: list[dict], threshold: float = 475.0, hyperparams: dict | None = None) -> Path:
    """A finished sweep as lagrl sweep leaves it: the grid in sweep.json, one trials.csv row per trial."""
    directory.mkdir()
    grid = [
        {"algo": t["algo"], "env": "CartPole-v1", "preconditioner": t["preset"], "seed": t["seed"],
         "timesteps": 100_000, "hyperparams": hyperparams or {}}
        for t in trials
    ]  # fmt: skip
    (directory / "sweep.json").write_text(json.dumps({"trials": grid, "threshold": {"CartPole-v1": threshold}}))
    with open(directory / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for index, t in enumerate(trials):
            writer.writerow(
                {"trial_id": index, "algo": t["algo"], "env": "CartPole-v1", "preconditioner": t["preset"] or "-",
                 "seed": t["seed"], "timesteps": 100_096, "eval_mean": t["eval"], "eval_std": 0.0,
                 "steps_to_threshold": t["steps"] or "", "fps": t["fps"], "wall_seconds": 100.0}
            )  # fmt: skip
    return directory


def trial(algo, preset, seed, steps, evaluation, fps=1000.0):
    return {"algo": algo, "preset": preset, "seed": seed, "steps": steps, "eval": evaluation, "fps": fps}


def test_sweep_trials_make_the_benchmarks_rows(bench, tmp_path):
    ppo = write_sweep(
        tmp_path / "ppo",
        [trial("ppo", "adam", 0, 60_000, 500.0, 900.0), trial("ppo", "adam", 1, 80_000, 480.0, 1100.0),
         trial("ppo", "adam", 2, None, 300.0, 1000.0),
         trial("ppo", "natural", 0, 30_000, 500.0, 800.0), trial("ppo", "natural", 1, 50_000, 490.0, 800.0),
         trial("ppo", "natural", 2, 40_000, 470.0, 800.0)],
    )  # fmt: skip
    trpo = write_sweep(tmp_path / "trpo", [trial("trpo", None, seed, None, 200.0 + seed) for seed in range(3)])
    runs = bench.runs_from_sweeps([ppo, trpo])
    assert {run.algorithm for run in runs} == {"sb3:ppo", "ppo:natural", "sb3-contrib:trpo"}
    assert all(run.budget == 100_000 for run in runs)
    rows = {row.algorithm: row for row in bench.summarise(runs, ["sb3:ppo", "sb3-contrib:trpo", "ppo:natural"])}
    # by hand: PPO's steps 60k, 80k and a miss → median 80k; natural's median 40k → 0.5× PPO's
    assert rows["sb3:ppo"].reached == 2 and rows["sb3:ppo"].steps == (80_000, 60_000, math.inf)
    assert rows["ppo:natural"].steps == (40_000, 30_000, 50_000) and rows["ppo:natural"].steps_vs_ppo == 0.5
    assert rows["ppo:natural"].evaluation == (490.0, 470.0, 500.0) and rows["ppo:natural"].fps_vs_ppo == 0.8
    assert rows["sb3-contrib:trpo"].reached == 0 and rows["sb3-contrib:trpo"].steps_vs_ppo is None
    # an algorithm with runs on no env of these runs gets no row (and no empty-group crash)
    assert [row.algorithm for row in bench.summarise(runs, ["sb3:ppo", "sb3:a2c"])] == ["sb3:ppo"]


def test_a_sweep_that_is_not_the_benchmark_is_refused(bench, tmp_path):
    runs = [trial("ppo", "adam", 0, 60_000, 500.0)]
    with pytest.raises(bench.ConfigError, match="overrides the zoo settings"):
        bench.sweep_runs(write_sweep(tmp_path / "tuned", runs, hyperparams={"n_epochs": 5}))
    with pytest.raises(bench.ConfigError, match="thresholds"):
        bench.sweep_runs(write_sweep(tmp_path / "other", runs, threshold=400.0))
    first, second = write_sweep(tmp_path / "a", runs), write_sweep(tmp_path / "b", runs)
    with pytest.raises(bench.ConfigError, match="sb3:ppo on CartPole-v1 seed 0 is in both"):
        bench.runs_from_sweeps([first, second])
    with pytest.raises(bench.ConfigError, match="holds no finished lagrl sweep"):
        bench.sweep_runs(tmp_path / "missing")


def test_sweep_curves_read_each_trials_reports_and_keep_a_restored_trials_last(bench, tmp_path):
    sweep = write_sweep(
        tmp_path / "ppo", [trial("ppo", "adam", 0, 60_000, 500.0), trial("ppo", "natural", 0, None, 90.0)]
    )
    reports = {"0": [(10_000, None), (20_000, 30.0), (20_000, 35.0), (30_000, 80.0)], "1": [(10_000, 12.5)]}
    for trial_id, lines in reports.items():
        (sweep / "tune" / trial_id).mkdir(parents=True)
        text = "".join(json.dumps({"timesteps": t, "train_mean": m, "done": False}) + "\n" for t, m in lines)
        (sweep / "tune" / trial_id / "result.json").write_text(text)
    rows, curves = bench.sweep_curves(sweep)
    assert [row["preconditioner"] for row in rows] == ["adam", "natural"]
    assert curves["1"] == [(10_000, 12.5)]
    steps, means = zip(*curves["0"])
    assert steps == (10_000, 20_000, 30_000) and math.isnan(means[0]) and means[1:] == (35.0, 80.0)
    bench.draw_curves([sweep], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_presets_take_named_preconditioner_config_variants(bench):
    algorithms, variants = bench.preset_variants(
        "ppo", ["adam", "tr-half={rho: 0.5, step_rule: trust-region}"], "--presets"
    )
    assert algorithms == ["ppo:adam", "ppo:tr-half"]
    assert variants == {"ppo:tr-half": {"rho": 0.5, "step_rule": "trust-region"}}
    for bad, words in [
        (["fisher"], "not a preset"),
        (["natural={rho: 1}"], "new name"),
        (["tr={rho: 0.5, radius: 1}"], "unknown preconditioner setting(s) ['radius']"),
        (["tr=[0.5]"], "not a mapping"),
        (["tr={step_rule: sideways}"], "unknown step_rule"),
        (["adam", "adam"], "each name once"),
    ]:
        with pytest.raises(bench.ConfigError) as error:
            bench.preset_variants("ppo", bad, "--presets")
        assert words in str(error.value)


def test_a_variant_runs_as_the_agent_its_config_describes(bench):
    _, variants = bench.preset_variants("ppo", ["tr={rho: 1.0, step_rule: trust-region}"], "--presets")
    args = argparse.Namespace(envs=["CartPole-v1"], seeds=1, lagrl_hyperparams=[], timesteps=["CartPole-v1=256"])
    args.budget_scale = 1.0
    (job,) = bench.plan_jobs(args, ["ppo:tr"], variants)
    model = bench.build_model(bench.make_plan(job.env, job.algorithm, job.seed, job.overrides), device="cpu")
    actor, critic = model.policy.optimizer.param_groups
    assert (actor["rho"], actor["step_rule"], critic["step_rule"]) == (1.0, "trust-region", "trust-region")
    epochs, minibatches = model._update_shape()
    steps = epochs * minibatches
    assert actor["trust_budget"] == pytest.approx(3e-2) and actor["energy_budget"] == pytest.approx(3e-2 / steps)
    result = bench.run(job)
    assert result.error is None and result.timesteps == 256 and result.fps > 0


def test_runs_start_seed_by_seed_with_the_algorithms_alternating_in_direction(bench):
    jobs = [
        bench.Job(env, algorithm, seed, 1000, {})
        for env in ("CartPole-v1", "Acrobot-v1")
        for algorithm in ("sb3:ppo", "ppo:fisher-sqrt", "ppo:natural")
        for seed in range(3)
    ]  # the planning order: env, algorithm, seed
    order = [(job.env[0], job.algorithm.partition(":")[2][0], job.seed) for job in bench.run_order(jobs)]
    assert order == [
        ("C", "p", 0), ("C", "f", 0), ("C", "n", 0), ("C", "n", 1), ("C", "f", 1), ("C", "p", 1),
        ("C", "p", 2), ("C", "f", 2), ("C", "n", 2),
        ("A", "p", 0), ("A", "f", 0), ("A", "n", 0), ("A", "n", 1), ("A", "f", 1), ("A", "p", 1),
        ("A", "p", 2), ("A", "f", 2), ("A", "n", 2),
    ]  # fmt: skip
