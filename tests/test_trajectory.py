"""TrajectoryWriter: scalars read back with TensorBoard's own EventAccumulator, also after errors."""

import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import default_sigint
from lagrl.fisher import DiagonalFisher, KroneckerFisher
from lagrl.optim import MetricBlock
from lagrl.trajectory import TAGS, LearningTrajectory, TrajectoryWriter

F64 = torch.float64


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
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
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


def test_a_rank_deficient_float32_kfac_metric_is_damped_not_refused():
    """A float32 K-FAC factor with exact zero eigenvalues and a rounding floor (n·eps32·λmax) above the damping
    √ε: the damping makes M positive definite, so T exists and equals the float64 closed form
    ``(1/2P) gᵀ((A + √εI) ⊗ (G + √εI))⁻¹g`` for a gradient in the factor's range (a regression: the metric's
    damping was folded into the factors, and the trajectory refused them as 'not positive definite')."""
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(64, 64, dtype=F64))
    spectrum = torch.cat([torch.zeros(60, dtype=F64), torch.tensor([2e3, 4e3, 7e3, 1e4], dtype=F64)])
    g_exact = basis @ torch.diag(spectrum) @ basis.T
    a = torch.randn(4, 4, dtype=F64)
    a_exact = a @ a.T + torch.eye(4, dtype=F64)
    eps = 1e-3
    assert 64 * torch.finfo(torch.float32).eps * 1e4 > eps**0.5  # the old refusal's condition
    weight, bias = torch.zeros(64, 3), torch.zeros(64)
    block = MetricBlock([weight, bias], KroneckerFisher(a_exact.float(), g_exact.float()), 0.5, eps)
    gradient = g_exact @ torch.randn(64, 4, dtype=F64)  # in the range of G
    grads = {weight: gradient[:, :3].float(), bias: gradient[:, 3].float()}
    scalars = LearningTrajectory().record(1.0, grads, [block], observations=1)
    root = eps**0.5
    dense = torch.kron(g_exact + root * torch.eye(64, dtype=F64), a_exact + root * torch.eye(4, dtype=F64))
    flat = gradient.reshape(-1)
    kinetic = float(flat @ torch.linalg.solve(dense, flat)) / (2 * 256)
    # float32 arithmetic at condition number (1e4 + √ε)/√ε ≈ 3e5 is good to eps32·κ ≈ 4e-2
    assert scalars["lagrangian/kinetic"] == pytest.approx(kinetic, rel=4e-2)


def test_the_optimizers_kfac_metric_is_its_factors_with_damping_eps():
    """metric() reports K-FAC's undamped, bias-corrected factors and damping ε: M = (A + √εI) ⊗ (G + √εI)."""
    from lagrl.optim import LagrangianOptimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 5)
    optimizer = LagrangianOptimizer(layer.parameters(), lr=1e-3, fisher="kfac", model=layer, eps=1e-3)
    layer(torch.randn(32, 3)).square().sum().backward()
    optimizer.step()
    (block,) = optimizer.metric()
    state, correction = optimizer.state[layer.weight], 1 - 0.999
    assert block.damping == 1e-3 and block.params == [layer.weight, layer.bias]
    torch.testing.assert_close(block.metric.input_factor, state["input_factor"] / correction)
    torch.testing.assert_close(block.metric.output_factor, state["output_factor"] / correction)
