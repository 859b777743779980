"""lagrl.agents.LagrangianPPO / LagrangianA2C against SB3's PPO and A2C, and their Fisher presets."""

import math

import gymnasium
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from torch.optim import SGD

from lagrl.agents import LagrangianA2C, LagrangianPPO, PreconditionerConfig
from lagrl.agents.policy_fisher import policy_fisher
from lagrl.fisher import DiagonalFisher, KroneckerFisher
from lagrl.optim import LagrangianOptimizer, NonFiniteGradientError

# rl-baselines3-zoo's PPO settings for CartPole-v1 (hyperparams/ppo.yml)
ZOO_PPO = dict(
    n_steps=32,
    batch_size=256,
    gae_lambda=0.8,
    gamma=0.98,
    n_epochs=20,
    ent_coef=0.0,
    learning_rate=lambda progress: progress * 1e-3,
    clip_range=lambda progress: progress * 0.2,
)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.policy.parameters()])


def cartpole(n_envs: int = 8):
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=0)


def test_ppo_adam_is_bit_identical_to_sb3_ppo_with_zoo_settings():
    """20,000 steps of zoo CartPole-v1 PPO (8 envs, 1,580 Adam steps): identical parameters."""
    reference = PPO("MlpPolicy", cartpole(), seed=0, device="cpu", **ZOO_PPO).learn(20_000)
    model = LagrangianPPO("MlpPolicy", cartpole(), seed=0, device="cpu", preconditioner="adam", **ZOO_PPO)
    model.learn(20_000)
    assert type(reference.policy.optimizer) is torch.optim.Adam
    assert isinstance(model.policy.optimizer, LagrangianOptimizer)
    assert model.num_timesteps == reference.num_timesteps >= 20_000
    assert torch.equal(flat(model), flat(reference))


def test_a2c_rmsprop_is_bit_identical_to_sb3_a2c():
    reference = A2C("MlpPolicy", cartpole(), seed=0, device="cpu", ent_coef=0.0).learn(20_000)
    model = LagrangianA2C("MlpPolicy", cartpole(), seed=0, device="cpu", ent_coef=0.0, preconditioner="rmsprop")
    model.learn(20_000)
    assert type(reference.policy.optimizer) is torch.optim.RMSprop
    assert torch.equal(flat(model), flat(reference))
    assert model.num_updates == 20_000 // (8 * 5)


@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_fisher_presets_precondition_with_the_true_policy_fisher(rho):
    """The K-FAC factors of the action layer after an update are the true Fisher of the rollout.

    With lr = 0 the parameters stay put, so the references are closed forms at the same parameters:
    ``A = E[a aᵀ]`` over the layer's bias-augmented inputs (no sampling involved), and for a softmax
    output ``G = E_s[diag π − π πᵀ]`` (the expectation over a ~ π of δδᵀ, δ = onehot(a) − π), which
    the sampled estimate (200 actions per state) must match within Monte Carlo error.
    """
    config = PreconditionerConfig(rho=rho, fisher_samples=200)
    settings = {**ZOO_PPO, "batch_size": 64, "learning_rate": 0.0}
    model = LagrangianPPO("MlpPolicy", cartpole(2), seed=1, device="cpu", preconditioner=config, **settings)
    model.learn(64)  # one rollout of 2 × 32 steps, one update
    state = model.policy.optimizer.state[model.policy.action_net.weight]
    observations = torch.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
    with torch.no_grad():
        latent = model.policy.mlp_extractor.policy_net(observations)
        probs = torch.softmax(model.policy.action_net(latent), dim=-1)
    rows = torch.cat([latent, torch.ones(len(latent), 1)], dim=1)
    assert torch.allclose(state["input_factor"], rows.T @ rows / len(rows), atol=1e-6)
    expected = (torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)).mean(0)
    assert torch.allclose(state["output_factor"], expected, atol=0.1 * float(expected.abs().max()))
    powered = KroneckerFisher(state["input_factor"], state["output_factor"]).power(-rho, 1e-3)
    assert torch.allclose(state["input_power"], powered.input_factor)


def test_policy_fisher_matches_its_definition():
    """Diagonal true Fisher of actor and critic against hand-computed expectations.

    Actor (Categorical, 2 actions): the exact Fisher diagonal is E_s Σ_a π(a|s) (∂ log π(a|s)/∂θ)²,
    computed here by looping over actions; the sampled estimate (1,500 draws per state) must agree
    within Monte Carlo error. Critic: for N(V(s), 1) the true Fisher is exactly E_s (∂V/∂θ)² in
    expectation; with sampled targets it agrees within Monte Carlo error.
    """
    torch.manual_seed(0)
    model = LagrangianPPO("MlpPolicy", cartpole(1), seed=0, device="cpu")
    policy = model.policy
    observations = torch.randn(8, 4)
    estimate = policy_fisher(policy, observations, form="diagonal", num_samples=1500)
    params = dict(policy.named_parameters())
    assert set(estimate) == {p for p in params.values()}
    assert all(isinstance(block, DiagonalFisher) for block in estimate.values())

    exact = {name: torch.zeros_like(p) for name, p in params.items()}
    for obs in observations:
        distribution = policy.get_distribution(obs.unsqueeze(0)).distribution
        for action in range(2):
            policy.zero_grad()
            distribution = policy.get_distribution(obs.unsqueeze(0)).distribution
            distribution.log_prob(torch.tensor([action])).sum().backward()
            weight = float(distribution.probs[0, action].detach())
            for name, p in params.items():
                if p.grad is not None:
                    exact[name] += weight * p.grad.square() / len(observations)
        policy.zero_grad()
        policy.predict_values(obs.unsqueeze(0)).sum().backward()
        for name, p in params.items():
            if p.grad is not None and ("value" in name):
                exact[name] += p.grad.square() / len(observations)
    for name in ("action_net.weight", "mlp_extractor.policy_net.2.weight", "value_net.weight"):
        got, want = estimate[params[name]].diagonal, exact[name]
        assert torch.allclose(got, want, rtol=0.15, atol=1e-4 * float(want.max())), name


def test_save_load_round_trip_keeps_the_fisher_and_continues(tmp_path):
    settings = {**ZOO_PPO, "batch_size": 64}
    model = LagrangianPPO("MlpPolicy", cartpole(2), seed=3, device="cpu", preconditioner="fisher-sqrt", **settings)
    model.learn(256)
    path = tmp_path / "ppo.zip"
    model.save(path)
    loaded = LagrangianPPO.load(path, env=cartpole(2), device="cpu")
    assert loaded.preconditioner == model.preconditioner
    observations = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    assert np.array_equal(
        model.predict(observations, deterministic=True)[0], loaded.predict(observations, deterministic=True)[0]
    )
    saved, restored = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert saved["state"].keys() == restored["state"].keys()
    for index, state in saved["state"].items():
        assert state.keys() == restored["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, restored["state"][index][key]), (index, key)
    assert sum("input_factor" in state for state in restored["state"].values()) == 6  # 6 Linear layers
    # Resume: timesteps, schedules and the optimizer's step count continue where they stopped.
    steps_before = float(loaded.policy.optimizer.state[loaded.policy.action_net.weight]["step"])
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 320 and loaded.num_updates == model.num_updates + 1
    assert float(loaded.policy.optimizer.state[loaded.policy.action_net.weight]["step"]) == steps_before + 20
    assert loaded.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * loaded._current_progress_remaining)


class NaNRewardCartPole(gymnasium.Wrapper):
    """CartPole whose reward turns NaN after 40 steps."""

    def __init__(self) -> None:
        super().__init__(gymnasium.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, (math.nan if self.steps > 40 else reward), terminated, truncated, info


def test_a_nan_loss_stops_training_naming_the_update():
    model = LagrangianA2C("MlpPolicy", NaNRewardCartPole(), seed=0, device="cpu")
    before = flat(model).clone()
    with pytest.raises(NonFiniteGradientError, match=r"update \d+ of LagrangianA2C .*NaN or inf") as error:
        model.learn(200)
    update = int(str(error.value).split()[1])
    assert update == model.num_updates + 1 >= 2  # updates before the NaN reward went through
    assert torch.isfinite(flat(model)).all() and not torch.equal(flat(model), before)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown preconditioner 'adamw'.*fisher-sqrt"):
        LagrangianPPO("MlpPolicy", "CartPole-v1", preconditioner="adamw")
    with pytest.raises(ValueError, match="drop optimizer_class"):
        LagrangianPPO("MlpPolicy", "CartPole-v1", preconditioner="natural", policy_kwargs=dict(optimizer_class=SGD))
    with pytest.raises(ValueError, match="rho must lie in"):
        LagrangianPPO("MlpPolicy", "CartPole-v1", preconditioner=dict(rho=2.0))
    with pytest.raises(ValueError, match="unknown preconditioner setting.*'damp'"):
        LagrangianPPO("MlpPolicy", "CartPole-v1", preconditioner=dict(damp=1e-3))


def test_continuous_actions_get_a_log_std_fisher():
    model = LagrangianPPO(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        seed=0,
        device="cpu",
        preconditioner=PreconditionerConfig(rho=0.5, fisher="kfac"),
    )
    model.learn(64)
    state = model.policy.optimizer.state[model.policy.log_std]
    # N(μ, σ²): the Fisher of log σ is exactly 2 per dimension; the sampled estimate is close.
    assert state["exp_avg_sq"].shape == (1,) and abs(float(state["exp_avg_sq"]) - 2.0) < 0.8
    assert isinstance(model.policy.optimizer.metric()[0].metric, (DiagonalFisher, KroneckerFisher))


def test_agents_run_on_the_device(device):
    settings = {**ZOO_PPO, "batch_size": 64}
    model = LagrangianPPO("MlpPolicy", cartpole(2), seed=0, device=device, preconditioner="fisher-sqrt", **settings)
    model.learn(128)
    state = model.policy.optimizer.state[model.policy.action_net.weight]
    assert state["input_factor"].device.type == device.type
    assert torch.isfinite(flat(model)).all()


def test_mlp_policies_default_to_the_cpu(monkeypatch):
    """SB3 advises the CPU for MLP policies: device="auto" stays on the CPU even where CUDA is present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = LagrangianA2C("MlpPolicy", "CartPole-v1")
    assert model.device.type == "cpu"
    assert LagrangianPPO("MlpPolicy", "CartPole-v1", device="cpu").device.type == "cpu"


@pytest.mark.parametrize(
    "agent, preset",
    [(LagrangianPPO, "adam"), (LagrangianPPO, "natural"), (LagrangianA2C, "rmsprop"), (LagrangianA2C, "natural")],
)
def test_load_takes_policy_kwargs_and_custom_objects_and_set_parameters_loads(tmp_path, agent, preset):
    """SB3's loading options: load(policy_kwargs=the training ones), custom_objects, set_parameters."""
    policy_kwargs = dict(net_arch=[16])
    settings = dict(n_steps=8, seed=0, device="cpu", preconditioner=preset, policy_kwargs=policy_kwargs)
    if agent is LagrangianPPO:
        settings["batch_size"] = 16
    model = agent("MlpPolicy", cartpole(2), **settings)
    model.learn(32)
    path = tmp_path / "model.zip"
    model.save(path)
    observations = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    expected = model.predict(observations, deterministic=True)[0]

    loaded = agent.load(path, env=cartpole(2), device="cpu", policy_kwargs=policy_kwargs)
    assert (
        type(loaded.policy.optimizer) is type(model.policy.optimizer) and loaded.preconditioner == model.preconditioner
    )
    assert np.array_equal(loaded.predict(observations, deterministic=True)[0], expected)
    with pytest.raises(ValueError, match="policy kwargs do not equal"):  # SB3's own check still applies
        agent.load(path, env=cartpole(2), device="cpu", policy_kwargs=dict(net_arch=[32]))

    frozen = agent.load(
        path, env=cartpole(2), device="cpu", custom_objects={"learning_rate": 0.0, "lr_schedule": lambda _: 0.0}
    )
    before = flat(frozen).clone()
    frozen.learn(16, reset_num_timesteps=False)
    assert torch.equal(flat(frozen), before)  # lr 0: no step, whatever the step rule

    fresh = agent("MlpPolicy", cartpole(2), **{**settings, "seed": 5})
    fresh.set_parameters(str(path))
    assert np.array_equal(fresh.predict(observations, deterministic=True)[0], expected)


def test_an_optimizer_named_in_policy_kwargs_is_built_as_sb3_builds_it():
    """With the "adam"/"rmsprop" presets, policy_kwargs' optimizer_class is SB3's to build (SB3's own tests use it)."""
    policy_kwargs = dict(optimizer_class=SGD, optimizer_kwargs=dict(momentum=0.5))
    for agent, reference, extra in ((LagrangianPPO, PPO, {"batch_size": 16}), (LagrangianA2C, A2C, {})):
        settings = dict(n_steps=8, seed=0, device="cpu", policy_kwargs=policy_kwargs, **extra)
        twin = reference("MlpPolicy", cartpole(2), **settings).learn(32)  # each model seeds torch when built
        model = agent("MlpPolicy", cartpole(2), **settings)
        assert type(model.policy.optimizer) is SGD and model.policy.optimizer.defaults["momentum"] == 0.5
        model.learn(32)
        assert torch.equal(flat(model), flat(twin))


def test_fisher_presets_split_actor_and_critic_and_share_the_update_budget_over_its_steps():
    """Two param groups (actor, critic-only); each of the K optimizer steps of an update gets δ/K²."""
    model = LagrangianPPO("MlpPolicy", cartpole(1), n_steps=16, batch_size=8, n_epochs=3, preconditioner="natural")
    actor, critic = model.policy.optimizer.param_groups
    value_params = {*model.policy.mlp_extractor.value_net.parameters(), *model.policy.value_net.parameters()}
    assert set(critic["params"]) == value_params
    assert set(actor["params"]) == set(model.policy.parameters()) - value_params
    steps = 3 * 2  # 3 epochs of 16 samples in minibatches of 8
    assert actor["energy_budget"] == pytest.approx(3e-2 / steps**2)
    assert critic["energy_budget"] == pytest.approx(0.5 / steps**2)
    a2c = LagrangianA2C("MlpPolicy", cartpole(1), preconditioner=PreconditionerConfig(rho=1.0, energy_budget=2e-3))
    assert [group["energy_budget"] for group in a2c.policy.optimizer.param_groups] == [2e-3, 1e-3]


def test_fisher_sqrt_splits_its_update_budget_by_epochs():
    """The preset's steps get δ/(M·N²) (N = 3 epochs of M = 2 minibatches), no ball; A2C's one step gets δ."""
    model = LagrangianPPO("MlpPolicy", cartpole(1), n_steps=16, batch_size=8, n_epochs=3, preconditioner="fisher-sqrt")
    actor, critic = model.policy.optimizer.param_groups
    assert (actor["energy_budget"], critic["energy_budget"]) == (pytest.approx(3e-2 / 18), pytest.approx(0.5 / 18))
    assert actor["trust_budget"] is None and model.policy.optimizer.defaults["step_rule"] == "energy"
    a2c = LagrangianA2C("MlpPolicy", cartpole(1), preconditioner="fisher-sqrt")
    assert [group["energy_budget"] for group in a2c.policy.optimizer.param_groups] == [1e-3, 1e-3]


def test_budget_split_sets_each_steps_energy_from_the_updates_epochs_and_minibatches():
    """budget_split="epochs": δ/(M·N²) per step for both heads (N = 3 epochs of M = 4 minibatches), the ball δ."""
    config = PreconditionerConfig(step_rule="trust-region", budget_split="epochs")
    model = LagrangianPPO("MlpPolicy", cartpole(2), n_steps=32, batch_size=16, n_epochs=3, preconditioner=config)
    actor, critic = model.policy.optimizer.param_groups
    assert (actor["energy_budget"], actor["trust_budget"]) == (pytest.approx(3e-2 / (4 * 3**2)), 3e-2)
    assert (critic["energy_budget"], critic["trust_budget"]) == (pytest.approx(0.5 / (4 * 3**2)), 0.5)
    with pytest.raises(ValueError, match="budget_split must be one of"):
        PreconditionerConfig(budget_split="by-layer")
    with pytest.raises(ValueError, match="step_rule='graft' has none: drop budget_split"):
        PreconditionerConfig(step_rule="graft", budget_split="epochs")


def test_critic_budget_split_splits_the_critics_budget_apart_from_the_actors():
    """critic_budget_split: the critic's ½ over its K = N·M steps by its own split (N = 3, M = 4), the actor's δ by
    budget_split; None follows budget_split."""
    config = PreconditionerConfig(budget_split="coherent", critic_budget_split="epochs")
    model = LagrangianPPO("MlpPolicy", cartpole(2), n_steps=32, batch_size=16, n_epochs=3, preconditioner=config)
    actor, critic = model.policy.optimizer.param_groups
    assert (actor["energy_budget"], critic["energy_budget"]) == (pytest.approx(3e-2 / 12**2), pytest.approx(0.5 / 36))
    follows = LagrangianPPO(
        "MlpPolicy", cartpole(2), n_steps=32, batch_size=16, n_epochs=3, preconditioner=dict(budget_split="independent")
    )
    assert [group["energy_budget"] for group in follows.policy.optimizer.param_groups] == [
        pytest.approx(3e-2 / 12),
        pytest.approx(0.5 / 12),
    ]
    with pytest.raises(ValueError, match="unknown critic_budget_split 'by-layer': critic_budget_split must be one of"):
        PreconditionerConfig(critic_budget_split="by-layer")
    with pytest.raises(ValueError, match="step_rule='lr' has none: drop critic_budget_split"):
        PreconditionerConfig(step_rule="lr", critic_budget_split="coherent")


def test_signal_groups_scale_each_heads_update_budget_by_its_gradients_signal_fraction():
    """signal_groups=G: before the update's first step, each head's budget is φ times its split budget, φ from the
    gradients of PPO's clipped loss (written out here as SB3 writes it) on G disjoint random groups of the rollout."""
    config = PreconditionerConfig(budget_split="epochs", signal_groups=4)
    model = LagrangianPPO(
        "MlpPolicy", cartpole(2), n_steps=32, batch_size=16, n_epochs=3, seed=2, preconditioner=config
    )
    model.learn(64)  # one rollout and its update; the next train() is on the same (flattened) rollout
    heads = [group["params"] for group in model.policy.optimizer.param_groups]
    np.random.seed(7)
    indices = np.random.permutation(64)
    gradients = [[], []]
    clip = model.clip_range(model._current_progress_remaining)
    for group in indices.reshape(4, 16):
        data = model.rollout_buffer._get_samples(group)
        values, log_prob, entropy = model.policy.evaluate_actions(data.observations, data.actions.long().flatten())
        advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
        ratio = torch.exp(log_prob - data.old_log_prob)
        policy_loss = -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
        value_loss = ((data.returns - values.flatten()) ** 2).mean()
        loss = policy_loss - model.ent_coef * entropy.mean() + model.vf_coef * value_loss
        grads = torch.autograd.grad(loss, [p for head in heads for p in head])
        gradients[0].append(torch.cat([g.reshape(-1) for g in grads[: len(heads[0])]]))
        gradients[1].append(torch.cat([g.reshape(-1) for g in grads[len(heads[0]) :]]))
    fractions = []
    for head in gradients:  # φ = G/(G − 1) · (1 − Σ|g_j|² / |Σ g_j|²)
        total, squares = torch.stack(head).sum(0).square().sum().item(), sum(g.square().sum().item() for g in head)
        fractions.append(min(max(4 / 3 * (1 - squares / total), 0.0), 1.0))
    np.random.seed(7)
    model.train()
    logged = model.logger.name_to_value
    assert [logged["train/signal_fraction"], logged["train/critic_signal_fraction"]] == pytest.approx(fractions)
    actor, critic = model.policy.optimizer.param_groups
    steps = 4 * 3**2  # the epoch split: M = 4 minibatches, N = 3 epochs
    assert actor["energy_budget"] == pytest.approx(fractions[0] * 3e-2 / steps)
    assert critic["energy_budget"] == pytest.approx(fractions[1] * 0.5 / steps)
    assert 0.0 < fractions[0] < fractions[1] < 1.0  # seed 2: neither clipped
    with pytest.raises(ValueError, match="signal_groups must be an int >= 2"):
        PreconditionerConfig(signal_groups=1)
    with pytest.raises(ValueError, match="step_rule='lr' has none: drop signal_groups"):
        PreconditionerConfig(step_rule="lr", signal_groups=8)


def test_the_epoch_split_trust_region_with_full_batch_epochs_is_the_energy_rule():
    """With M = 1 the split is δ/N² and N steps of that energy have a displacement of energy ≤ δ (triangle
    inequality in the fixed metric of the update), so the ball never binds: the parameters follow fisher-sqrt's."""
    settings = dict(n_steps=64, batch_size=128, n_epochs=8, seed=0, policy_kwargs=dict(net_arch=[8]))
    split = PreconditionerConfig(step_rule="trust-region", budget_split="epochs")
    model = LagrangianPPO("MlpPolicy", cartpole(2), preconditioner=split, **settings).learn(256)
    energy = LagrangianPPO("MlpPolicy", cartpole(2), preconditioner="fisher-sqrt", **settings).learn(256)
    assert 0.0 < model.logger.name_to_value["train/update_energy"] <= 3e-2 * (1 + 1e-6)
    assert torch.allclose(flat(model), flat(energy), rtol=0, atol=1e-6)
    assert not torch.equal(flat(model), flat(LagrangianPPO("MlpPolicy", cartpole(2), **settings)))


def test_trust_region_preset_holds_each_updates_actor_displacement_in_its_fisher_ball():
    """step_rule="trust-region": δ/K per step and the ball δ per update; the actor's displacement over a train()
    call, measured in the K-FAC metric tr(Dᵀ(G + √ε)D(A + √ε)) from the parameters, ends on the ball's edge
    (coherent full-batch steps reach it after √K) and is what the agent logs as train/update_energy."""
    config = PreconditionerConfig(rho=0.5, step_rule="trust-region", energy_budget=1e-2)
    model = LagrangianPPO(
        "MlpPolicy",
        cartpole(2),
        n_steps=64,
        batch_size=128,
        n_epochs=16,
        seed=0,
        preconditioner=config,
        policy_kwargs=dict(net_arch=[8]),
    )
    actor, critic = model.policy.optimizer.param_groups
    steps = 16  # 16 full-batch epochs: steps on one batch are coherent and reach the ball's edge
    assert (actor["energy_budget"], actor["trust_budget"]) == (pytest.approx(1e-2 / steps), 1e-2)
    assert (critic["energy_budget"], critic["trust_budget"]) == (pytest.approx(0.5 / steps), 0.5)
    model.learn(128)  # one rollout and its update
    optimizer = model.policy.optimizer
    before = {id(p): p.detach().clone() for p in actor["params"]}
    model.train()
    energy = 0.0
    for block in optimizer.metric():
        if block.params[0] not in {*actor["params"]}:
            continue
        displacement = torch.cat([(p.detach() - before[id(p)]).reshape(len(p), -1) for p in block.params], dim=1)
        root = block.damping**0.5
        a = block.metric.input_factor + root * torch.eye(displacement.shape[1])
        g = block.metric.output_factor + root * torch.eye(displacement.shape[0])
        energy += 0.5 * float(torch.trace(displacement.T @ g @ displacement @ a))
    assert energy == pytest.approx(1e-2, rel=1e-5)  # coherent steps: without the ball it would be up to 16δ
    assert model.logger.name_to_value["train/update_energy"] == pytest.approx(energy, rel=1e-4)
