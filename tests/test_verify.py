"""`lagrl verify`: exit codes, JSON rows, TensorBoard trajectories read back, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import mdptoolbox.mdp
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import default_sigint
from lagrl.bellman import policy_iteration
from lagrl.cli import main
from lagrl.envs.garnet import garnet_batch
from lagrl.verify import TaskSpec, verify_batch

JSON_KEYS = {"task", "method", "kind", "max_abs_dv", "policy_agreement", "iterations", "seconds"}
FLOW_SCALARS = {"bellman_residual", "value_error", "hamiltonian"}


def recorded_steps(row: dict) -> list[int]:
    """The steps a flow row's trajectory holds: every ``record_every``-th (1 where unset) and the last."""
    every, last = row["settings"].get("record_every", 1), row["iterations"]
    return sorted({*range(0, last + 1, every), last})


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
    assert [event.step for event in npg] == recorded_steps(recorded)
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
            scalars = accumulator.Scalars(f"{row['task']}/{row['method']}/value_error")
            assert [event.step for event in scalars] == recorded_steps(row)


def test_batch_verifies_every_member_against_an_independent_solver(tmp_path, capsys):
    """--batch: rows of the batched solvers, certificates, throughput; each member's V* from mdptoolbox."""

    rows_path = tmp_path / "batch.json"
    argv = ["verify", "--batch", "6", "--states", "9", "--actions", "3", "--branching", "2", "--seed", "5"]
    assert main([*argv, "--json", str(rows_path)]) == 0
    out = capsys.readouterr().out
    assert "certificates hold on every member" in out and "MDPs/s" in out and "GB/s" in out
    rows = json.loads(rows_path.read_text())
    assert {row["method"] for row in rows} == {"value_iteration", "policy_iteration", "solve"}
    assert all(row["kind"] == "exact" and row["settings"]["batch"] == 6 and row["max_abs_dv"] <= 1e-6 for row in rows)
    mdps = garnet_batch(6, 9, 3, 2, seed=5)
    report = verify_batch("batch", mdps, tol=1e-6)
    assert all(check.passed for check in report.report.checks)
    values = policy_iteration(mdps).values
    for member in range(6):
        transitions = mdps.transitions[member].numpy().transpose(1, 0, 2)  # (A, S, S)
        solver = mdptoolbox.mdp.PolicyIteration(transitions, mdps.rewards[member].numpy(), 0.99)
        solver.run()
        np.testing.assert_allclose(values[member].numpy(), solver.V, rtol=0, atol=1e-8)


def test_garnet_batch_draws_garnets():
    first, again = garnet_batch(4, 7, 2, 3, seed=1), garnet_batch(4, 7, 2, 3, seed=1)
    assert torch.equal(first.transitions, again.transitions) and torch.equal(first.rewards, again.rewards)
    assert not torch.equal(first.transitions, garnet_batch(4, 7, 2, 3, seed=2).transitions)
    assert torch.allclose(first.transitions.sum(-1), torch.ones(4, 7, 2, dtype=torch.float64))
    assert bool(((first.transitions > 0).sum(-1) == 3).all())
    assert bool(((first.rewards >= 0) & (first.rewards <= 1)).all())
    with pytest.raises(ValueError, match="branching = 8 exceeds num_states = 7"):
        garnet_batch(1, 7, 2, 8)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["verify", "--batch", "2", "--env", "FrozenLake-v1"], "drop --env"),
        (["verify", "--batch", "2", "--states", "3", "--branching", "4"], "--branching 4 exceeds --states 3"),
    ],
)
def test_bad_batch_arguments_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_batch_on_every_device_matches_the_cpu_solution(device):
    """The batched route on ``device`` against policy iteration of the same tables on the CPU."""
    mdps = garnet_batch(4, 8, 2, 2, seed=3, device=device)
    batch = verify_batch("batch", mdps, tol=1e-6)
    assert all(check.passed for check in batch.report.checks)
    assert all(row.max_abs_dv <= 1e-6 for row in batch.report.rows) and batch.bandwidth > 0
    on_cpu = mdps.to(device="cpu")
    torch.testing.assert_close(policy_iteration(mdps).values.cpu(), policy_iteration(on_cpu).values, rtol=0, atol=1e-9)


def test_ctrl_c_stops_the_workers_and_keeps_the_logs(tmp_path):
    """SIGINT to the command's own process group (a terminal's Ctrl-C) mid-run: exit 130 with a message, soon."""
    logdir = tmp_path / "runs"
    command = [sys.executable, "-m", "lagrl.cli", "verify", "--jobs", "2", "--logdir", str(logdir)]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint
    )
    try:
        deadline = time.monotonic() + 60
        while not logdir.exists() and time.monotonic() < deadline:  # the writer opens after the workers fork
            time.sleep(0.1)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert "interrupted after" in err and str(logdir) in err
    assert any(logdir.iterdir())
