"""`lagrl verify`: exit codes, JSON rows, TensorBoard trajectories read back, and bad input."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lagrl.cli import main
from lagrl.verify import TaskSpec

JSON_KEYS = {"task", "method", "kind", "max_abs_dv", "policy_agreement", "iterations", "seconds"}
FLOW_SCALARS = {"bellman_residual", "value_error", "hamiltonian"}


def test_frozenlake_verifies_with_json_rows_and_trajectories(tmp_path, capsys):
    rows_path, logdir = tmp_path / "rows.json", tmp_path / "runs"
    assert main(["verify", "--env", "FrozenLake-v1", "--json", str(rows_path), "--logdir", str(logdir)]) == 0
    out = capsys.readouterr().out
    assert "exact checks hold" in out and "FAIL" not in out
    rows = json.loads(rows_path.read_text())
    assert all(JSON_KEYS <= set(row) for row in rows)
    assert {row["kind"] for row in rows} == {"exact", "flow"}
    exact = [row for row in rows if row["kind"] == "exact"]
    assert len(exact) >= 3 and all(row["max_abs_dv"] <= 1e-6 and row["policy_agreement"] == 1.0 for row in exact)
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    flows = {row["method"] for row in rows if row["kind"] == "flow"}
    for method in flows:
        assert {f"FrozenLake-v1/{method}/{name}" for name in FLOW_SCALARS} <= tags, method
    assert {"FrozenLake-v1/lp-saddle/lagrangian", "FrozenLake-v1/lp-saddle/duality_gap"} <= tags
    assert any(tag.endswith("/policy_entropy") for tag in tags)
    npg = accumulator.Scalars("FrozenLake-v1/npg/value_error")
    recorded = next(row for row in rows if row["method"] == "npg")
    assert len(npg) == recorded["iterations"] + 1
    assert npg[-1].value == pytest.approx(recorded["max_abs_dv"], rel=1e-6, abs=1e-12)


def test_env_without_transition_table_exits_2_naming_the_reason(capsys):
    assert main(["verify", "--env", "CartPole-v1", "--exact-only"]) == 2
    assert "env.unwrapped.P" in capsys.readouterr().err


def test_unknown_env_exits_2(capsys):
    assert main(["verify", "--env", "NoSuchEnv-v0", "--exact-only"]) == 2
    assert "NoSuchEnv" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["verify", "--gamma", "1.5"], "--gamma must lie in [0, 1]"),
        (["verify", "--tol", "0"], "--tol must be a positive number"),
        (["verify", "--env", "lagrl/Garnet-v0:seed"], "malformed env argument"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_task_spec_parses_keyword_arguments():
    spec = TaskSpec.parse("lagrl/Garnet-v0:num_states=30,seed=4,name=x")
    assert spec.env_id == "lagrl/Garnet-v0"
    assert spec.kwargs == {"num_states": 30, "seed": 4, "name": "x"}
    assert spec.label == "Garnet-v0(num_states=30,seed=4,name=x)"


def test_strict_fails_when_a_flow_misses_the_optimal_policy(tmp_path):
    """On this Garnet the LP saddle does not reach the optimal greedy policy within its budget."""
    argv = ["verify", "--env", "lagrl/Garnet-v0:num_states=10,seed=3", "--json", str(tmp_path / "rows.json")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    missed = [row["method"] for row in rows if row["kind"] == "flow" and row["greedy_optimal_at"] is None]
    assert missed, "the test needs a flow that misses; choose another task"
    assert main(argv + ["--strict"]) == 1


def test_worker_processes_give_the_rows_and_trajectories_of_one_process(tmp_path):
    """--jobs 2 (forked workers) against --jobs 1: identical rows but for the timings, every trajectory."""
    tasks = ["--env", "lagrl/RiverSwim-v0", "--env", "lagrl/Garnet-v0:num_states=10,seed=3"]
    serial, parallel, logdir = tmp_path / "serial.json", tmp_path / "parallel.json", tmp_path / "runs"
    assert main(["verify", *tasks, "--jobs", "1", "--json", str(serial)]) == 0
    assert main(["verify", *tasks, "--jobs", "2", "--json", str(parallel), "--logdir", str(logdir)]) == 0

    def untimed(path):
        return [{key: value for key, value in row.items() if key != "seconds"} for row in json.loads(path.read_text())]

    assert untimed(parallel) == untimed(serial)
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for row in json.loads(parallel.read_text()):
        if row["kind"] == "flow":
            assert f"{row['task']}/{row['method']}/value_error" in tags
            assert len(accumulator.Scalars(f"{row['task']}/{row['method']}/value_error")) == row["iterations"] + 1
