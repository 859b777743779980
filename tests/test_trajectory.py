"""TrajectoryWriter: scalars read back with TensorBoard's own EventAccumulator, also after errors."""

import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lagrl.fisher import DiagonalFisher, KroneckerFisher
from lagrl.optim import MetricBlock
from lagrl.trajectory import TAGS, LearningTrajectory, TrajectoryWriter


def read_scalars(logdir) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_scalars_round_trip_under_prefixed_tags(tmp_path):
    with TrajectoryWriter(tmp_path) as writer:
        for step in range(4):
            writer.scalars("FrozenLake-v1/npg", step, {"value_error": 0.5**step, "policy_entropy": 1.0 + step})
    scalars = read_scalars(tmp_path)
    assert scalars["FrozenLake-v1/npg/value_error"] == [1.0, 0.5, 0.25, 0.125]
    assert scalars["FrozenLake-v1/npg/policy_entropy"] == [1.0, 2.0, 3.0, 4.0]


def test_an_exception_inside_the_block_still_flushes(tmp_path):
    with pytest.raises(RuntimeError), TrajectoryWriter(tmp_path) as writer:
        writer.scalars("task", 0, {"loss": 3.0})
        raise RuntimeError("training failed")
    assert read_scalars(tmp_path) == {"task/loss": [3.0]}


def test_ctrl_c_leaves_flushed_event_files(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from lagrl.trajectory import TrajectoryWriter
        with TrajectoryWriter({str(tmp_path)!r}) as writer:
            step = 0
            while True:
                writer.scalars("run", step, {{"step": float(step)}})
                if step == 50:
                    print("ready", flush=True)
                step += 1
                time.sleep(0.001)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    values = read_scalars(tmp_path)["run/step"]
    assert len(values) >= 51 and values == [float(i) for i in range(len(values))]


# ---------------------------------------------------------------------------------------- LearningTrajectory
def test_learning_trajectory_against_dense_closed_forms():
    """T = (1/2P) gᵀM⁻¹g and |p| = (1/P)|M^{-½}g| with M block-diagonal (K-FAC block ⊕ diagonal block),
    computed here with one dense matrix; L, H, action and the kinematics from their definitions."""
    torch.manual_seed(0)
    F64 = torch.float64
    weight, bias, other = torch.zeros(2, 3, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(4, dtype=F64)
    a, g = torch.randn(4, 4, dtype=F64), torch.randn(2, 2, dtype=F64)
    kron = KroneckerFisher(a @ a.T + torch.eye(4, dtype=F64), g @ g.T + torch.eye(2, dtype=F64))
    diag = torch.rand(4, dtype=F64) + 0.5
    blocks = [MetricBlock([weight, bias], kron, 0.5), MetricBlock([other], DiagonalFisher(diag), 0.5)]
    grads = {weight: torch.randn(2, 3, dtype=F64), bias: torch.randn(2, dtype=F64), other: torch.randn(4, dtype=F64)}
    flat = torch.cat([torch.cat([grads[weight], grads[bias].unsqueeze(1)], 1).reshape(-1), grads[other]])
    dense = torch.block_diag(kron.to_dense(), torch.diag(diag))
    P = 12
    eigenvalues, vectors = torch.linalg.eigh(dense)
    inverse_root = vectors @ torch.diag(eigenvalues**-0.5) @ vectors.T

    trajectory = LearningTrajectory()
    first = trajectory.record(3.0, grads, blocks, observations=100)
    kinetic = float(flat @ torch.linalg.solve(dense, flat)) / (2 * P)
    assert set(first) == set(TAGS) - {"kinematics/acceleration"}
    assert first["lagrangian/kinetic"] == pytest.approx(kinetic, rel=1e-10)
    assert first["lagrangian/momentum_norm"] == pytest.approx(float((inverse_root @ flat).norm()) / P, rel=1e-10)
    assert first["lagrangian/lagrangian"] == pytest.approx(kinetic - 3.0)
    assert first["lagrangian/hamiltonian"] == pytest.approx(kinetic + 3.0)
    assert first["lagrangian/action"] == pytest.approx((kinetic - 3.0) * 100)
    scale = torch.cat(
        [
            torch.outer(kron.power(-0.5).output_factor.diagonal(), kron.power(-0.5).input_factor.diagonal()).reshape(
                -1
            ),
            diag**-0.5,
        ]
    )
    assert first["lagrangian/preconditioner_max"] == pytest.approx(float(scale.max()))
    assert first["lagrangian/preconditioner_mean"] == pytest.approx(float(scale.mean()))

    second = trajectory.record(2.0, {}, blocks, observations=150)  # no gradient: T = 0
    assert second["lagrangian/kinetic"] == 0.0
    assert second["lagrangian/action"] == pytest.approx((kinetic - 3.0) * 100 + (0.0 - 2.0) * 50)
    assert second["kinematics/velocity"] == 2.0
    assert second["kinematics/acceleration"] == pytest.approx((2.0 - 3.0) / 50)
    assert math.isfinite(second["lagrangian/preconditioner_min"])
