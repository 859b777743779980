"""Step-size rules of the ρ flow (lagrl.step_size, LagrangianOptimizer(step_rule=...)) against closed forms and Adam."""

import math

import pytest
import torch
from torch import nn

from helpers import random_spd
from lagrl.fisher import DiagonalFisher, KroneckerFisher
from lagrl.optim import LagrangianOptimizer
from lagrl.step_size import KLController, energy_step_size, signal_fraction, step_budget


def dense_power(matrix: torch.Tensor, exponent: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.pow(exponent)) @ vectors.T


def external_kfac(layer: nn.Linear, rho: float, eps: float, **rule) -> LagrangianOptimizer:
    """A K-FAC optimizer of ``layer`` on a supplied Fisher, β1 = 0 (the step is the preconditioned gradient)."""
    return LagrangianOptimizer(
        layer.parameters(), rho=rho, betas=(0.0, 0.0), eps=eps, fisher="kfac", fisher_source="external", model=layer,
        **rule,
    )  # fmt: skip


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.75, 1.0])
def test_energy_rule_holds_the_kinetic_energy_of_a_kfac_step(rho):
    """External K-FAC block: Δθ ∥ M^{-ρ} g and ½ ΔθᵀMΔθ = δ, with M = (G + √ε) ⊗ (A + √ε) built densely.

    ρ = 0 is gradient descent, whose metric is the identity (no Fisher enters the step).
    """
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    budget, eps = 2e-3, 1e-2
    optimizer = external_kfac(layer, rho, eps, lr=0.7, step_rule="energy", energy_budget=budget)
    a, g = random_spd(4, seed=1, device="cpu"), random_spd(2, seed=2, device="cpu")
    optimizer.set_fisher({layer.weight: KroneckerFisher(a, g)})
    before = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1).clone()
    gradient = torch.randn(2, 4, dtype=torch.float64)
    layer.weight.grad, layer.bias.grad = gradient[:, :3].clone(), gradient[:, 3].clone()
    optimizer.step()
    after = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1)
    root = eps**0.5
    metric = torch.kron(g + root * torch.eye(2, dtype=torch.float64), a + root * torch.eye(4, dtype=torch.float64))
    if rho == 0:
        metric = torch.eye(8, dtype=torch.float64)
    delta = (after - before).reshape(-1)
    assert 0.5 * delta @ metric @ delta == pytest.approx(budget, rel=1e-10)
    direction = dense_power(metric, -rho) @ gradient.reshape(-1)
    cosine = -delta @ direction / (delta.norm() * direction.norm())
    assert cosine == pytest.approx(1.0, abs=1e-12)


def test_energy_rule_at_rho_one_half_is_sqrt_2_delta_over_the_gradient_norm():
    """ρ = ½, diagonal external Fisher: Δθ = −sqrt(2δ) (F + ε)^{-½}... with uᵀMu = ‖g‖², so η = sqrt(2δ)/‖g‖."""
    torch.manual_seed(1)
    param = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    fisher = torch.rand(5, dtype=torch.float64) + 0.1
    optimizer = LagrangianOptimizer(
        [param],
        lr=1.0,
        rho=0.5,
        betas=(0.0, 0.0),
        eps=0.0,
        fisher_source="external",
        step_rule="energy",
        energy_budget=0.02,
    )
    optimizer.set_fisher({param: DiagonalFisher(fisher)})
    param.grad = torch.randn(5, dtype=torch.float64)
    optimizer.step()
    expected = -math.sqrt(2 * 0.02) / param.grad.norm() * param.grad / fisher.sqrt()
    assert torch.allclose(param.detach(), expected, rtol=1e-12)


def test_energy_rule_sums_over_blocks_and_a_schedule_scales_the_step():
    """Two diagonal blocks share one budget per group; lr halved (a schedule) halves the step."""
    torch.manual_seed(2)
    first, second = torch.zeros(3, requires_grad=True), torch.zeros(4, requires_grad=True)
    optimizer = LagrangianOptimizer(
        [first, second],
        lr=3e-4,
        rho=1.0,
        betas=(0.0, 0.0),
        eps=0.0,
        fisher_source="external",
        step_rule="energy",
        energy_budget=1e-3,
    )
    fishers = {first: torch.rand(3) + 0.5, second: torch.rand(4) + 0.5}
    optimizer.set_fisher(fishers)
    grads = {first: torch.randn(3), second: torch.randn(4)}
    for p in (first, second):
        p.grad = grads[p].clone()
    optimizer.step()
    energy = sum(0.5 * (p.detach() ** 2 * fishers[p]).sum() for p in (first, second))
    assert float(energy) == pytest.approx(1e-3, rel=1e-5)
    moved = torch.cat([first.detach(), second.detach()]).clone()
    optimizer.param_groups[0]["lr"] = 1.5e-4  # what SB3's schedule does between updates
    optimizer.step()
    second_step = torch.cat([first.detach(), second.detach()]) - moved
    assert torch.allclose(second_step, 0.5 * moved, rtol=1e-5)


def test_energy_rule_gives_each_param_group_its_own_budget():
    actor, critic = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimizer = LagrangianOptimizer(
        [{"params": [actor]}, {"params": [critic]}],
        lr=1.0,
        rho=0.0,
        betas=(0.0, 0.0),
        step_rule="energy",
        energy_budget=0.5,
    )
    actor.grad, critic.grad = torch.tensor([1e-3, 0.0, 0.0]), torch.tensor([0.0, 1e3])
    optimizer.step()
    # ρ = 0 (M = I): each group moves by sqrt(2δ) = 1 along its own gradient, whatever the scale.
    assert torch.allclose(actor.detach(), torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.allclose(critic.detach(), torch.tensor([0.0, -1.0]))


def test_graft_rule_takes_adams_step_length_per_block_and_the_fisher_direction():
    """Each tensor moves by the length of torch.optim.Adam's step, along F^{-1} ĝ."""
    torch.manual_seed(3)
    params = [torch.randn(4, 3), torch.randn(5)]
    ours = [p.clone().requires_grad_() for p in params]
    adams = [p.clone().requires_grad_() for p in params]
    fishers = [torch.rand_like(p) + 0.2 for p in params]
    optimizer = LagrangianOptimizer(ours, lr=1e-2, rho=1.0, eps=0.0, fisher_source="external", step_rule="graft")
    optimizer.set_fisher(dict(zip(ours, fishers)))
    adam = torch.optim.Adam(adams, lr=1e-2, eps=1e-8)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        starts = [p.detach().clone() for p in ours]
        for p, q, g in zip(ours, adams, grads):
            p.grad, q.grad = g.clone(), g.clone()
        adam_starts = [q.detach().clone() for q in adams]
        optimizer.step()
        adam.step()
        for p, q, start, adam_start, fisher in zip(ours, adams, starts, adam_starts, fishers):
            ours_step, adam_step = p.detach() - start, q.detach() - adam_start
            assert float(ours_step.norm()) == pytest.approx(float(adam_step.norm()), rel=1e-5)
            m_hat = optimizer.state[p]["exp_avg"]
            expected = -m_hat / fisher
            cosine = float((ours_step * expected).sum() / (ours_step.norm() * expected.norm()))
            assert cosine == pytest.approx(1.0, abs=1e-5)


def test_step_rule_arguments_are_checked():
    param = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match="step_rule"):
        LagrangianOptimizer(param, step_rule="trust")
    with pytest.raises(ValueError, match="energy_budget"):
        LagrangianOptimizer(param, step_rule="energy", energy_budget=0.0)
    with pytest.raises(ValueError, match="energy_budget"):
        LagrangianOptimizer([{"params": param, "energy_budget": -1.0}], step_rule="energy")


def test_energy_step_size_and_kl_controller():
    assert energy_step_size(8.0, 1.0) == pytest.approx(0.5)  # ½ η² · 8 = 1
    assert energy_step_size(0.0, 1.0) == 0.0
    controller = KLController(target=0.01, factor=2.0, band=1.5)
    assert controller.update(0.001) == 2.0  # below target / band: grow
    assert controller.update(0.01) == 2.0  # inside the band: keep
    assert controller.update(0.05) == 1.0  # above target · band: shrink
    assert controller.update(float("nan")) == 0.5  # a NaN KL shrinks
    with pytest.raises(ValueError, match="target"):
        KLController(target=0.0)


def test_energy_rule_caps_later_steps_of_an_update_at_the_first_steps_size():
    """Within an update a shrinking gradient shrinks the step (η = min(η₀, ...)); start_update() lifts the cap."""
    param = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = LagrangianOptimizer([param], lr=1.0, rho=0.0, betas=(0.0, 0.0), step_rule="energy", energy_budget=0.5)
    optimizer.start_update()
    param.grad = torch.tensor([2.0, 0.0], dtype=torch.float64)
    optimizer.step()  # η₀ = sqrt(2δ)/‖g‖ = 0.5: Δθ = −1 along g
    assert torch.allclose(param.detach(), torch.tensor([-1.0, 0.0], dtype=torch.float64))
    param.grad = torch.tensor([0.2, 0.0], dtype=torch.float64)  # 10× smaller gradient, as after clipping
    optimizer.step()  # η = min(0.5, 5) = 0.5: Δθ = −0.1
    assert torch.allclose(param.detach(), torch.tensor([-1.1, 0.0], dtype=torch.float64))
    param.grad = torch.tensor([20.0, 0.0], dtype=torch.float64)  # larger gradient: the budget binds
    optimizer.step()  # η = min(0.5, 0.05): Δθ = −1
    assert torch.allclose(param.detach(), torch.tensor([-2.1, 0.0], dtype=torch.float64))
    optimizer.start_update()
    param.grad = torch.tensor([0.2, 0.0], dtype=torch.float64)
    optimizer.step()  # a new update: the full budget again, Δθ = −1
    assert torch.allclose(param.detach(), torch.tensor([-3.1, 0.0], dtype=torch.float64))


def test_step_budget_splits_an_update_over_its_epochs_and_minibatches():
    """K = N·M steps: coherent steps δ/K² (K of them sum to length sqrt(2δ)), independent δ/K (energies add), and
    "epochs" δ/(M·N²): M independent minibatches an epoch, N coherent epochs, so that the update's energy is δ."""
    budget, epochs, minibatches = 0.03, 10, 64
    assert step_budget(budget, epochs, minibatches, "coherent") == pytest.approx(budget / 640**2)
    assert step_budget(budget, epochs, minibatches, "independent") == pytest.approx(budget / 640)
    epoch_split = step_budget(budget, epochs, minibatches, "epochs")
    # M independent steps of energy e make an epoch of energy M·e; N coherent epochs of that energy make N²·M·e.
    assert epochs**2 * (minibatches * epoch_split) == pytest.approx(budget)
    assert step_budget(budget, 20, 1, "epochs") == step_budget(budget, 20, 1, "coherent")  # full-batch epochs
    assert step_budget(budget, 1, 64, "epochs") == step_budget(budget, 1, 64, "independent")  # one epoch
    with pytest.raises(ValueError, match="unknown budget_split 'noisy'.*epochs"):
        step_budget(budget, 1, 1, "noisy")


def test_kl_controller_target_follows_a_schedule():
    controller = KLController(target=0.01, factor=2.0, band=1.5)
    assert controller.update(0.003, target_scale=0.25) == 1.0  # target 0.0025: 0.003 is inside the band
    assert controller.update(0.003, target_scale=0.1) == 0.5  # target 0.001: too large a step, shrink


@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_trust_region_stops_coherent_steps_on_the_ball_along_the_fisher_direction(rho):
    """Constant gradient, K-FAC external Fisher, steps of energy δ = Δ/16: k coherent steps have energy k²δ,
    so the displacement reaches ½DᵀMD = Δ after 4 steps and stays on the ball at −sqrt(2Δ/uᵀMu)·u,
    u = M^{-ρ}g, with M = (G + √ε) ⊗ (A + √ε) built densely."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    trust, eps = 4e-3, 1e-2
    optimizer = external_kfac(
        layer, rho, eps, lr=1.0, step_rule="trust-region", energy_budget=trust / 16, trust_budget=trust
    )
    a, g = random_spd(4, seed=1, device="cpu"), random_spd(2, seed=2, device="cpu")
    optimizer.set_fisher({layer.weight: KroneckerFisher(a, g)})  # also starts the update
    start = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1).clone()
    gradient = torch.randn(2, 4, dtype=torch.float64)
    root = eps**0.5
    metric = torch.kron(g + root * torch.eye(2, dtype=torch.float64), a + root * torch.eye(4, dtype=torch.float64))

    def energy() -> float:
        displacement = (torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1) - start).reshape(-1)
        return float(0.5 * displacement @ metric @ displacement)

    for k in range(1, 11):
        layer.weight.grad, layer.bias.grad = gradient[:, :3].clone(), gradient[:, 3].clone()
        optimizer.step()
        expected = min(k**2 * trust / 16, trust)
        assert energy() == pytest.approx(expected, rel=1e-9)
        assert optimizer.param_groups[0]["update_energy"] == pytest.approx(expected, rel=1e-9)
    direction = dense_power(metric, -rho) @ gradient.reshape(-1)
    expected_point = -math.sqrt(2 * trust / float(direction @ metric @ direction)) * direction
    displacement = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1) - start
    assert torch.allclose(displacement.reshape(-1), expected_point, rtol=1e-9, atol=1e-12)


def test_trust_region_lets_incoherent_steps_walk_inside_the_ball_and_start_update_recentres_it():
    """Diagonal external Fisher, independent random gradients: the first step has energy δ in M = F + ε (ρ = 1),
    later ones at most δ; the displacement since start_update() never leaves ½DᵀMD ≤ Δ, and start_update()
    centres a new ball."""
    torch.manual_seed(3)
    param = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    fisher, eps, step_budget, trust = torch.rand(50, dtype=torch.float64) + 0.1, 1e-3, 1e-3, 2e-2
    optimizer = LagrangianOptimizer(
        [param],
        rho=1.0,
        betas=(0.0, 0.0),
        eps=eps,
        fisher_source="external",
        step_rule="trust-region",
        energy_budget=step_budget,
        trust_budget=trust,
    )
    optimizer.set_fisher({param: DiagonalFisher(fisher)})
    metric = fisher + eps
    start, energies = param.detach().clone(), []
    for _ in range(40):
        before = param.detach().clone()
        param.grad = torch.randn(50, dtype=torch.float64)
        optimizer.step()
        step, displacement = param.detach() - before, param.detach() - start
        energies.append(float(0.5 * (displacement.square() * metric).sum()))
        assert energies[-1] <= trust * (1 + 1e-9)
        if energies[-1] < trust * (1 - 1e-9):  # not projected: at most δ (the first step's η caps the later ones)
            assert float(0.5 * (step.square() * metric).sum()) <= step_budget * (1 + 1e-9)
    assert max(energies) == pytest.approx(trust, rel=1e-9)  # 40 steps of up to δ = Δ/20 reach the ball's edge
    assert energies[0] == pytest.approx(step_budget, rel=1e-9)
    optimizer.start_update()
    start = param.detach().clone()
    param.grad = torch.randn(50, dtype=torch.float64)
    optimizer.step()
    displacement = param.detach() - start
    assert float(0.5 * (displacement.square() * metric).sum()) == pytest.approx(step_budget, rel=1e-9)
    assert optimizer.param_groups[0]["update_energy"] == pytest.approx(step_budget, rel=1e-9)
    with pytest.raises(ValueError, match="trust_budget"):
        LagrangianOptimizer([param], step_rule="trust-region", trust_budget=0.0)


def test_signal_fraction_is_the_signals_share_of_the_mean_gradient():
    """g_j = s + σ e_j with orthonormal e_j ⟂ s: |ḡ|² = |s|² + σ²/G exactly, so φ = |s|² / (|s|² + σ²/G) in closed
    form; equal gradients give 1, gradients summing to 0 (or anti-aligned) give 0."""
    groups, dimension = 8, 12
    basis = torch.linalg.qr(torch.randn(dimension, dimension, dtype=torch.float64))[0].T
    signal, noise = 0.3 * basis[0], basis[1 : groups + 1]
    for sigma in (0.0, 0.5, 2.0, 40.0):
        expected = signal.square().sum().item() / (signal.square().sum().item() + sigma**2 / groups)
        assert signal_fraction([signal + sigma * e for e in noise]) == pytest.approx(expected, rel=1e-12)
    assert signal_fraction([signal] * 3) == pytest.approx(1.0)
    assert signal_fraction([signal, -signal]) == 0.0
    assert signal_fraction([signal, -0.5 * signal]) == 0.0  # coherence below that of noise: clipped at 0
    with pytest.raises(ValueError, match="at least 2 gradients"):
        signal_fraction([signal])
