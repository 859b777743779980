"""lagrl.optim against torch.optim, closed forms, lagrl.fisher's estimators and SB3 itself."""

import copy
import itertools

import pytest
import torch
from torch import nn

from lagrl.fisher import KroneckerFisher, fisher
from lagrl.optim import (
    LagrangianAdam,
    LagrangianOptimizer,
    LagrangianRMSprop,
    NonFiniteGradientError,
    fractional_power,
)


def make_mlp(device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).to(device)


def batches(device: torch.device, count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 4, generator=generator).to(device), torch.randint(0, 3, (8,), generator=generator).to(device))
        for _ in range(count)
    ]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data) -> None:
    for inputs, targets in data:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def torch_kwargs(device: torch.device) -> dict:
    # On CUDA torch defaults to its foreach kernel; lagrl's single-tensor path is compared with torch's.
    return {"foreach": False} if device.type == "cuda" else {}


ADAM_CASES = list(itertools.product([0.0, 0.1], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("weight_decay,decoupled,amsgrad,maximize", ADAM_CASES)
def test_adam_bit_identical_to_torch(device, weight_decay, decoupled, amsgrad, maximize):
    kwargs = dict(
        lr=1e-2, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled
    )
    data = batches(device, 1000)
    reference, candidate = make_mlp(device), make_mlp(device)
    train(reference, torch.optim.Adam(reference.parameters(), **kwargs, **torch_kwargs(device)), data)
    train(candidate, LagrangianAdam(candidate.parameters(), **kwargs), data)
    assert torch.equal(flat(candidate), flat(reference))
    assert flat(candidate).isfinite().all() and not torch.equal(flat(candidate), flat(make_mlp(device)))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_rmsprop_bit_identical_to_torch(device, weight_decay):
    data = batches(device, 1000)
    reference, candidate = make_mlp(device), make_mlp(device)
    torch_opt = torch.optim.RMSprop(reference.parameters(), lr=1e-3, weight_decay=weight_decay, **torch_kwargs(device))
    train(reference, torch_opt, data)
    train(candidate, LagrangianRMSprop(candidate.parameters(), lr=1e-3, weight_decay=weight_decay), data)
    assert torch.equal(flat(candidate), flat(reference))
    assert set(LagrangianRMSprop(candidate.parameters()).defaults) >= {"lr", "eps", "weight_decay"}


def closed_form_trajectory(model, data, rho, lr, betas, eps):
    """The ρ family written out in float64 from its equations, with no optimizer object."""
    params = [p.detach().double().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    shadow = copy.deepcopy(model).double()
    for t, (inputs, targets) in enumerate(data, start=1):
        for target, value in zip(shadow.parameters(), params):
            target.data.copy_(value)
        loss = nn.functional.cross_entropy(shadow(inputs.double()), targets)
        grads = torch.autograd.grad(loss, list(shadow.parameters()))
        for i, g in enumerate(grads):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            preconditioner = 1.0 if rho == 0 else 1.0 / (v_hat**rho + eps)
            params[i] = params[i] - lr * preconditioner * m_hat
    return torch.cat([p.flatten() for p in params])


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.75, 1.0])
def test_rho_family_equals_closed_form(device, rho):
    """ρ = 0: EMA-momentum SGD; ρ = 1: diagonal natural gradient; ρ = ¾ in between."""
    data = batches(device, 50)
    model = make_mlp(device).double()
    reference = closed_form_trajectory(model, data, rho, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    optimizer = LagrangianOptimizer(model.parameters(), lr=1e-2, rho=rho, betas=(0.9, 0.99), eps=1e-8)
    for inputs, targets in data:
        loss = nn.functional.cross_entropy(model(inputs.double()), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(flat(model), reference, rtol=1e-12, atol=1e-12)
    if rho == 0:
        assert all("exp_avg_sq" not in state for state in optimizer.state.values())


@pytest.mark.parametrize("rho", [0.0, 0.0625, 0.25, 0.5, 0.6, 0.75, 0.9375, 1.0])
def test_fractional_power_equals_torch_pow(device, rho):
    values = torch.rand(1000, dtype=torch.float64, device=device) * 10
    values[0] = 0.0
    result = fractional_power(values, rho)
    torch.testing.assert_close(result, values.pow(rho), rtol=1e-14, atol=1e-300)
    assert result.data_ptr() != values.data_ptr()


def test_state_dicts_cross_load_and_training_continues(device):
    warmup, rest = batches(device, 30, seed=2), batches(device, 30, seed=3)
    for first, second in [(torch.optim.Adam, LagrangianAdam), (LagrangianAdam, torch.optim.Adam)]:
        kwargs = dict(lr=1e-2, amsgrad=True)
        model = make_mlp(device)
        optimizer = first(model.parameters(), **kwargs)
        train(model, optimizer, warmup)
        saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        assert set(saved_state["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        train(model, optimizer, rest)
        resumed = make_mlp(device, seed=99)
        resumed.load_state_dict(saved_model)
        other = second(resumed.parameters(), **kwargs, **(torch_kwargs(device) if second is torch.optim.Adam else {}))
        other.load_state_dict(saved_state)
        train(resumed, other, rest)
        assert torch.equal(flat(resumed), flat(model)), f"{first.__name__} -> {second.__name__}"


def test_lr_lives_in_param_groups_as_sb3_expects():
    model = make_mlp(torch.device("cpu"))
    optimizer = LagrangianAdam(model.parameters(), lr=1e-3)
    reference = make_mlp(torch.device("cpu"))
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    data = batches(torch.device("cpu"), 20)
    for step, chunk in enumerate([data[:10], data[10:]]):
        for opt in (optimizer, torch_optimizer):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (1 - step / 2)  # what SB3's update_learning_rate does
        train(model, optimizer, chunk)
        train(reference, torch_optimizer, chunk)
    assert torch.equal(flat(model), flat(reference))


def test_sb3_ppo_with_lagrangian_adam_is_bit_identical():
    """PPO on CartPole-v1, seed 0, 4,096 steps: LagrangianAdam (eps 1e-5) vs SB3's default Adam."""
    from stable_baselines3 import PPO

    def final_parameters(**policy_kwargs):
        model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=policy_kwargs)
        model.learn(4096)
        return model, torch.cat([p.detach().flatten() for p in model.policy.parameters()])

    default_model, default_params = final_parameters()
    lagrl_model, lagrl_params = final_parameters(optimizer_class=LagrangianAdam, optimizer_kwargs=dict(eps=1e-5))
    assert isinstance(lagrl_model.policy.optimizer, LagrangianAdam)
    assert isinstance(default_model.policy.optimizer, torch.optim.Adam)
    assert default_params.numel() == 9155
    assert torch.equal(lagrl_params, default_params)


def regression_step(device, fisher_form, rho, eps, betas=(0.0, 0.0)):
    """One step of a single Linear layer with a Gaussian (squared-error) loss."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).to(device).double()
    before = layer.weight.detach().clone(), layer.bias.detach().clone()
    inputs = torch.randn(64, 3, device=device, dtype=torch.float64)
    targets = torch.randn(64, 2, device=device, dtype=torch.float64)
    optimizer = LagrangianOptimizer(
        layer.parameters(),
        lr=0.1,
        rho=rho,
        eps=eps,
        betas=betas,
        fisher=fisher_form,
        model=layer if fisher_form == "kfac" else None,
    )
    loss = 0.5 * (layer(inputs) - targets).pow(2).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    grad = torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)
    optimizer.step()
    return layer, before, inputs, targets, grad, optimizer


@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_kfac_step_matches_factors_from_lagrl_fisher(device, rho):
    """The hooks' factors equal lagrl.fisher's empirical K-FAC; the step is (G+√ε)^-ρ ∇ (A+√ε)^-ρ."""
    eps = 1e-3
    layer, (weight0, bias0), inputs, targets, grad, optimizer = regression_step(device, "kfac", rho, eps)
    reference = nn.Linear(3, 2).to(device).double()
    reference.weight.data.copy_(weight0)
    reference.bias.data.copy_(bias0)
    block = fisher(
        reference,
        inputs,
        targets,
        kind="empirical",
        form="kfac",
        distribution=lambda mean: torch.distributions.Normal(mean, 1.0),
    )[""]
    state = optimizer.state[layer.weight]
    torch.testing.assert_close(state["input_factor"], block.input_factor, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state["output_factor"], block.output_factor, rtol=1e-10, atol=1e-12)
    a_power = torch.linalg.matrix_power(
        block.input_factor + eps**0.5 * torch.eye(4, device=device, dtype=torch.float64), -1
    )
    g_power = torch.linalg.matrix_power(
        block.output_factor + eps**0.5 * torch.eye(2, device=device, dtype=torch.float64), -1
    )
    if rho == 0.5:
        a_power, g_power = sqrtm_spd(a_power), sqrtm_spd(g_power)
    expected = torch.cat([weight0, bias0.unsqueeze(1)], dim=1) - 0.1 * g_power @ grad @ a_power
    torch.testing.assert_close(torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1).detach(), expected)


def sqrtm_spd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root via numpy/scipy, independent of lagrl.fisher.spd_power."""
    import scipy.linalg

    return torch.as_tensor(scipy.linalg.sqrtm(matrix.cpu().numpy()).real, device=matrix.device)


def test_full_fisher_step_is_natural_gradient(device):
    """β = 0, ρ = 1: one step is lr (g gᵀ + εI)⁻¹ g, the damped natural gradient on the flat parameters."""
    eps = 1e-2
    layer, (weight0, bias0), _, _, grad, _ = regression_step(device, "full", rho=1.0, eps=eps)
    g = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
    matrix = torch.outer(g, g) + eps * torch.eye(len(g), device=device, dtype=torch.float64)
    expected = torch.cat([weight0.flatten(), bias0]) - 0.1 * torch.linalg.solve(matrix, g)
    torch.testing.assert_close(torch.cat([layer.weight.flatten(), layer.bias]).detach(), expected)


def test_kfac_state_dict_round_trip_continues_identically():
    device = torch.device("cpu")
    data = batches(device, 20, seed=5)
    model = make_mlp(device)
    optimizer = LagrangianOptimizer(
        model.parameters(), lr=1e-2, fisher="kfac", eps=1e-3, model=model, update_interval=3
    )
    train(model, optimizer, data[:10])
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, data[10:])
    resumed = make_mlp(device, seed=7)
    resumed.load_state_dict(saved_model)
    other = LagrangianOptimizer(
        resumed.parameters(), lr=1e-2, fisher="kfac", eps=1e-3, model=resumed, update_interval=3
    )
    other.load_state_dict(saved_state)
    train(resumed, other, data[10:])
    assert torch.equal(flat(resumed), flat(model))


def test_rho_outside_unit_interval_is_rejected():
    params = [nn.Parameter(torch.zeros(2))]
    for rho in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"rho must lie in \[0, 1\]"):
            LagrangianOptimizer(params, rho=rho)


def test_nan_gradient_names_the_parameter_and_changes_nothing():
    model = make_mlp(torch.device("cpu"))
    optimizer = LagrangianAdam(model.named_parameters(), lr=1e-2)
    train(model, optimizer, batches(torch.device("cpu"), 2))
    before = flat(model).clone()
    state_before = copy.deepcopy(optimizer.state_dict())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[2].weight.grad[1, 3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"parameter 2\.weight .*NaN or inf"):
        optimizer.step()
    model[0].bias.grad[0] = float("inf")
    model[2].weight.grad[1, 3] = 0.0
    with pytest.raises(NonFiniteGradientError, match=r"0\.bias"):
        optimizer.step()
    assert torch.equal(flat(model), before)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], state_before["state"][0]["exp_avg"])


def test_unnamed_parameters_are_named_by_index_and_shape():
    param = nn.Parameter(torch.zeros(2, 3))
    param.grad = torch.full((2, 3), float("nan"))
    with pytest.raises(NonFiniteGradientError, match=r"#0 \(shape \[2, 3\]\)"):
        LagrangianAdam([param]).step()


def test_singular_full_fisher_suggests_damping():
    layer = nn.Linear(3, 2)
    optimizer = LagrangianOptimizer(layer.parameters(), fisher="full", eps=0.0)
    layer(torch.randn(4, 3)).sum().backward()
    with pytest.raises(ValueError, match="not positive definite.*add damping"):
        optimizer.step()


def test_full_fisher_requires_every_gradient():
    model = make_mlp(torch.device("cpu"))
    optimizer = LagrangianOptimizer(model.named_parameters(), fisher="full", eps=1e-3)
    model[0](torch.randn(2, 4)).sum().backward()
    with pytest.raises(ValueError, match=r"parameter 2\.weight has no gradient"):
        optimizer.step()


def test_kfac_needs_the_model():
    model = make_mlp(torch.device("cpu"))
    optimizer = LagrangianOptimizer(model.parameters(), fisher="kfac", eps=1e-3)
    train_one = batches(torch.device("cpu"), 1)
    with pytest.raises(ValueError, match="needs the model"):
        train(model, optimizer, train_one)
    optimizer.attach(model)  # attaching after construction, as an SB3 policy must
    train(model, optimizer, train_one)
    assert "input_factor" in optimizer.state[model[0].weight]
    with pytest.raises(ValueError, match="unknown fisher form"):
        LagrangianOptimizer(model.parameters(), fisher="block")


# ---------------------------------------------------------------------------------------- external Fisher, metric
def test_external_diagonal_fisher_step_is_the_closed_form(device):
    """θ ← θ − lr · m̂ / (d^ρ + ε) with the supplied d (no EMA, no bias correction of d)."""
    torch.manual_seed(0)
    param = torch.randn(5, device=device, dtype=torch.float64, requires_grad=True)
    start = param.detach().clone()
    d = torch.rand(5, device=device, dtype=torch.float64) + 0.1
    optimizer = LagrangianOptimizer([param], lr=0.1, rho=0.75, eps=1e-3, betas=(0.9, 0.999), fisher_source="external")
    with pytest.raises(ValueError, match="call optimizer.set_fisher.*before step"):
        param.grad = torch.ones_like(param)
        optimizer.step()
    optimizer.set_fisher({param: d})
    g = torch.randn(5, device=device, dtype=torch.float64)
    param.grad = g.clone()
    optimizer.step()
    m_hat = (0.1 * g) / (1 - 0.9)  # first EMA step, bias-corrected
    assert torch.allclose(param.detach(), start - 0.1 * m_hat / (d**0.75 + 1e-3), rtol=1e-12, atol=1e-14)


def test_external_kfac_step_is_the_closed_form():
    """U = (G + √ε)^{-ρ} ĝ (A + √ε)^{-ρ} with the supplied factors, against a dense solve on [W | b]."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    start = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1).clone()
    a, g = torch.randn(4, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    factors = KroneckerFisher(
        a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), g @ g.T + 0.1 * torch.eye(2, dtype=torch.float64)
    )
    optimizer = LagrangianOptimizer(
        layer.parameters(), lr=0.5, rho=1.0, eps=1e-4, betas=(0.0, 0.0), fisher="kfac", fisher_source="external"
    )
    optimizer.attach(layer)
    assert not optimizer._hooks  # an external Fisher needs no activations
    optimizer.set_fisher({layer.weight: factors})
    grad = torch.randn(2, 4, dtype=torch.float64)
    layer.weight.grad, layer.bias.grad = grad[:, :3].clone(), grad[:, 3].clone()
    optimizer.step()
    root = 1e-4**0.5
    dense = torch.kron(
        factors.output_factor + root * torch.eye(2, dtype=torch.float64),
        factors.input_factor + root * torch.eye(4, dtype=torch.float64),
    )
    expected = start - 0.5 * torch.linalg.solve(dense, grad.reshape(-1)).reshape(2, 4)
    after = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1)
    assert torch.allclose(after, expected, rtol=1e-10, atol=1e-12)


def test_set_fisher_rejects_what_it_cannot_use():
    param = torch.zeros(3, requires_grad=True)
    optimizer = LagrangianOptimizer([param], fisher_source="external")
    with pytest.raises(ValueError, match="shape \\[2\\] for a parameter of shape \\[3\\]"):
        optimizer.set_fisher({param: torch.ones(2)})
    with pytest.raises(ValueError, match="does not hold"):
        optimizer.set_fisher({torch.zeros(3): torch.ones(3)})
    with pytest.raises(ValueError, match="fisher_source='external'"):
        LagrangianOptimizer([param]).set_fisher({param: torch.ones(3)})
    with pytest.raises(ValueError, match="unknown fisher_source"):
        LagrangianOptimizer([param], fisher_source="labels")


def test_metric_of_adam_is_its_preconditioner():
    """LagrangianAdam's metric M satisfies M^{-½} = 1/(√v̂ + ε), v̂ read from torch.optim.Adam's own state."""
    model, reference = make_mlp(torch.device("cpu")), make_mlp(torch.device("cpu"))
    optimizer = LagrangianAdam(model.parameters(), lr=1e-2, eps=1e-6)
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-6)
    assert all(block.metric is None for block in optimizer.metric())  # no Fisher yet: the identity
    data = batches(torch.device("cpu"), 5)
    train(model, optimizer, data)
    train(reference, torch_optimizer, data)
    blocks = optimizer.metric()
    assert [block.params[0] for block in blocks] == list(model.parameters())
    for block, param in zip(blocks, reference.parameters()):
        state = torch_optimizer.state[param]
        v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
        assert block.rho == 0.5
        assert torch.allclose(block.metric.power(-0.5).diagonal, 1 / (v_hat.sqrt() + 1e-6), rtol=1e-5)


def test_set_fisher_decay_averages_the_supplied_estimates():
    """``decay``: F̂ = β F̂_prev + (1 − β) F_new, factor by factor for K-FAC; the first estimate is taken whole."""
    layer = nn.Linear(2, 2).double()
    optimizer = LagrangianOptimizer(
        layer.parameters(), rho=1.0, eps=0.0, fisher="kfac", fisher_source="external", model=layer
    )
    eye3, eye2 = torch.eye(3, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    optimizer.set_fisher({layer.weight: KroneckerFisher(eye3, eye2)}, decay=0.9)
    optimizer.set_fisher({layer.weight: KroneckerFisher(3 * eye3, 11 * eye2)}, decay=0.9)
    state = optimizer.state[layer.weight]
    assert torch.allclose(state["input_factor"], 1.2 * eye3) and torch.allclose(state["output_factor"], 2.0 * eye2)
    assert torch.allclose(state["input_power"], eye3 / 1.2) and torch.allclose(state["output_power"], eye2 / 2.0)
    with pytest.raises(ValueError, match="decay must lie in"):
        optimizer.set_fisher({layer.weight: KroneckerFisher(eye3, eye2)}, decay=1.0)
