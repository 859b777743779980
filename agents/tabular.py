"""Tabular agents with Stable-Baselines3's API: a Bellman planner and Lagrangian Q-learning (THEORY §3, §5).

- :class:`BellmanPlanner` (model-based) reads the env's transition table and solves Bellman optimality
  ``V*(s) = max_a H(s, a; V*)``, ``H(s, a; λ) = r(s, a) + γ Σ_s' P(s'|s, a) λ(s')`` (THEORY §3) with
  :func:`lagrl.bellman.solve`.
- :class:`LagrangianQLearning` (model-free) is Q-learning whose step on the visited entry is the
  discretised ρ-flow ``θ̇ = −F^{-ρ} g`` of THEORY §5 on the TD loss ``½δ²``
  (:class:`EntrywiseLagrangianOptimizer`). ρ = ½ is the Adam-type update, ρ = 0 with ``betas=(0, ·)``
  plain Q-learning with a constant step size.

Both hold a ``(S, A)`` table in :class:`TablePolicy` (an ``nn.Parameter``), so SB3's ``save``/``load``,
logger, callbacks and progress bar work unchanged, and both report their updates to the Lagrangian
trajectory (:class:`lagrl.agents.trajectory.TrajectoryMixin`) when ``tensorboard_log`` is set.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule, get_device, safe_mean
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor, nn

from lagrl.agents.trajectory import TrajectoryMixin, optimizer_metric
from lagrl.bellman import bellman_backup, solve
from lagrl.fisher import DiagonalFisher
from lagrl.mdp import TabularMDP
from lagrl.optim import LagrangianOptimizer, MetricBlock, diagonal_metric
from lagrl.trajectory import identity_metric

SelfTabular = TypeVar("SelfTabular", bound="_TabularAlgorithm")


class TablePolicy(BasePolicy):
    """The greedy policy ``π(s) = argmax_a Q(s, a)`` of a ``(S, A)`` float64 table (first maximiser on ties)."""

    def __init__(self, observation_space: spaces.Discrete, action_space: spaces.Discrete, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, **kwargs)
        table = torch.zeros(int(observation_space.n), int(action_space.n), dtype=torch.float64)
        self.q_table = nn.Parameter(table, requires_grad=False)  # set by planning or entry steps, not autograd

    def forward(self, observation: Tensor, deterministic: bool = True) -> Tensor:
        return self._predict(observation, deterministic)

    def _predict(self, observation: Tensor, deterministic: bool = True) -> Tensor:
        return self.q_table[observation.long().reshape(-1)].argmax(-1)


def _check_spaces(agent: str, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Raise ``ValueError`` unless both spaces are ``Discrete`` starting at 0 (a table has one row per state)."""
    fixes = {
        "observation": "discretise the observations with a wrapper that maps them to 0..S-1, or use a "
        "function-approximation agent (LagrangianPPO, LagrangianA2C)",
        "action": "use LagrangianPPO or LagrangianA2C for continuous or structured actions",
    }
    for role, space in (("observation", observation_space), ("action", action_space)):
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"{agent} is tabular and needs a Discrete {role} space, got {space}; {fixes[role]}")
        if int(space.start) != 0:
            raise ValueError(
                f"{agent} indexes its table by {role}s 0..n-1, got Discrete(n={space.n}, start={space.start}); "
                f"shift the {role}s to start at 0 with a wrapper"
            )


class _TabularAlgorithm(BaseAlgorithm):
    """What both tabular agents share: the Discrete checks, :class:`TablePolicy`, ``learn``'s frame.

    The public classes put :class:`TrajectoryMixin` first, so that its ``learn`` wraps this one.
    """

    policy: TablePolicy
    policy_aliases = {"TablePolicy": TablePolicy}

    def __init__(
        self,
        env: GymEnv | None,
        learning_rate: float | Schedule,
        policy: type[TablePolicy],
        device: torch.device | str,
        tensorboard_log: str | None,
        seed: int | None,
        verbose: int,
    ) -> None:
        if env is not None:
            _check_spaces(type(self).__name__, env.observation_space, env.action_space)
        super().__init__(
            policy,
            env,
            learning_rate,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=(spaces.Discrete,),
        )

    def _make_policy(self) -> None:
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space).to(self.device)

    def learn(
        self: SelfTabular,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfTabular:
        """SB3's ``learn``; ``tb_log_name`` defaults to the class name (see :meth:`_train` for the rest)."""
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or type(self).__name__, progress_bar
        )
        callback.on_training_start(locals(), globals())
        self._train(callback, total_timesteps, log_interval)
        callback.on_training_end()
        return self

    def _train(self, callback: BaseCallback, total_timesteps: int, log_interval: int) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------- planner
def _read_mdp(env: GymEnv | VecEnv, gamma: float) -> TabularMDP:
    """The MDP of ``env`` (its first env if vectorised) by :meth:`TabularMDP.from_gymnasium`."""
    if isinstance(env, VecEnv):
        env = env.get_attr("unwrapped", indices=0)[0]
    return TabularMDP.from_gymnasium(env, gamma)


class BellmanPlanner(TrajectoryMixin, _TabularAlgorithm):
    """Model-based planning: ``Q*(s, a) = H(s, a; V*)`` of the env's own transition table (THEORY §3).

    ``learn`` reads ``env.unwrapped.P`` (:meth:`lagrl.mdp.TabularMDP.from_gymnasium`, which appends an
    absorbing zero-reward sink for terminated transitions; the env's states are the first ``S`` rows),
    solves it with :func:`lagrl.bellman.solve` to ``max_s |V − V*| ≤ tol`` on ``device`` and stores the
    first ``S`` rows of ``H(·, ·; V*)`` in the policy's table, so ``predict`` is greedy in ``Q*``.
    Planning reads the model, not samples: ``total_timesteps`` is unused, no environment step is taken
    (``num_timesteps`` does not move) and callbacks see ``on_training_start``/``on_training_end`` only.

    Trajectory (our reading): each ``learn`` is one update of the table ``Q``, with identity metric
    (no preconditioner, ρ = 0) and potential the squared Bellman residual
    ``½ mean_{s,a} (Q − TQ)²``, ``TQ(s, a) = H(s, a; max_a' Q)``, whose semi-gradient (``TQ`` held
    fixed, as in TD learning) is ``(Q − TQ) / (S·A)``; both are ≈ 0 at ``V*``. Time is observations,
    and a planner observes nothing, so ``kinematics/acceleration`` (a difference over elapsed
    observations) is never written; the other tags are.

    Args:
        env: a Gymnasium env (or id) with ``unwrapped.P`` in toy-text format and Discrete spaces.
        gamma: discount γ < 1.
        tol: bound on ``max_s |V − V*|`` for :func:`lagrl.bellman.solve`.
        device: where the MDP is solved and the table lives.
        policy: the policy class (SB3's ``load`` passes it; keep the default).
    """

    def __init__(
        self,
        env: GymEnv | str | None,
        gamma: float = 0.99,
        tol: float = 1e-10,
        device: torch.device | str = "cpu",
        tensorboard_log: str | None = None,
        seed: int | None = None,
        verbose: int = 0,
        policy: type[TablePolicy] = TablePolicy,
        _init_setup_model: bool = True,
    ) -> None:
        if env is not None:  # the model's absence is the first thing to report (CartPole: no P table)
            env = maybe_make_env(env, verbose)
            _read_mdp(env, gamma)
        super().__init__(env, 0.0, policy, device, tensorboard_log, seed, verbose)
        self.gamma = gamma
        self.tol = tol
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._make_policy()

    def _train(self, callback: BaseCallback, total_timesteps: int, log_interval: int) -> None:
        """Solve the env's MDP once and store ``Q*`` (``total_timesteps`` and ``log_interval`` are unused)."""
        mdp = _read_mdp(self.env, self.gamma).to(self.device)
        solution = solve(mdp, self.tol)
        table = self.policy.q_table
        with torch.no_grad():
            table.copy_(solution.q_values[: len(table)])
        self._n_updates += 1
        residual = solution.q_values - bellman_backup(mdp, solution.q_values.amax(-1))[0]
        residual = residual[: len(table)]
        potential = 0.5 * float(residual.square().mean())
        self.logger.record("train/bellman_residual", potential)
        self.logger.record("train/error_bound", float(solution.error_bound))
        self.logger.record("train/iterations", solution.iterations)
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.dump(step=self.num_timesteps)
        self._emit_trajectory(potential, {table: residual / residual.numel()}, identity_metric([table]))


# ---------------------------------------------------------------------------------------- Q-learning
def entry_step(
    table: np.ndarray,
    visits: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    index: tuple[int, ...],
    grad: float,
    group: dict[str, Any],
) -> None:
    """One ρ-flow step of the single entry ``i = index`` with gradient ``g`` (host arrays, in place).

    ``n_i ← n_i + 1``, ``m_i ← β1 m_i + (1−β1) g``, ``v_i ← β2 v_i + (1−β2) g²``,
    ``θ_i ← θ_i − lr/(1−β1^{n_i}) · m_i / ((v_i/(1−β2^{n_i}))^ρ + ε)`` (ρ = 0: ``θ_i ← θ_i − lr/(1−β1^{n_i}) m_i``):
    :class:`lagrl.optim.LagrangianOptimizer`'s diagonal step (Eq. 32 at ρ = ½) on entry ``i`` alone.
    """
    lr, rho, (beta1, beta2), eps = group["lr"], group["rho"], group["betas"], group["eps"]
    n = visits[index] + 1.0
    visits[index] = n
    m = exp_avg[index] + (1.0 - beta1) * (grad - exp_avg[index])
    exp_avg[index] = m
    step = lr / (1.0 - beta1**n) * m
    if rho != 0:
        v = beta2 * exp_avg_sq[index] + (1.0 - beta2) * grad * grad
        exp_avg_sq[index] = v
        step /= v**rho / (1.0 - beta2**n) ** rho + eps
    table[index] -= step


class EntrywiseLagrangianOptimizer(LagrangianOptimizer):
    """:class:`lagrl.optim.LagrangianOptimizer` (diagonal Fisher) applied entry by entry ("lazy").

    Each table entry is its own parameter: a step on entry ``i`` is :func:`entry_step`, so its Fisher
    estimate ``v_i`` (EMA of ``g²``), gradient estimate ``m_i`` and bias corrections advance over that
    entry's own updates only (per-entry step count ``visits``), and the other entries do not move. With
    one-hot TD gradients the dense optimizer would instead decay every entry's EMAs at every step and
    keep moving unvisited entries along their stale ``m`` (see LagrangianQLearning for the measurement).

    ``step()`` takes the gradient as a sparse COO ``param.grad`` (each listed entry is visited once);
    :class:`LagrangianQLearning` calls :func:`entry_step` directly. The state (``visits``, ``exp_avg``,
    ``exp_avg_sq``, each of the table's shape) is in ``state_dict()``; parameters must live on the CPU
    (the steps run on NumPy views of them).
    """

    def __init__(
        self, params: Iterable[Tensor], lr: float, *, rho: float, betas: tuple[float, float], eps: float
    ) -> None:
        super().__init__(params, lr, rho=rho, betas=betas, eps=eps)
        for group in self.param_groups:
            for param in group["params"]:
                if param.device.type != "cpu":
                    raise ValueError(f"{type(self).__name__} steps on the CPU; got a parameter on {param.device}")
                self.state[param].update({key: torch.zeros_like(param) for key in ("visits", "exp_avg", "exp_avg_sq")})

    def host_arrays(self, param: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """NumPy views ``(θ, visits, exp_avg, exp_avg_sq)`` of one parameter and its state."""
        state = self.state[param]
        return param.detach().numpy(), state["visits"].numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """:func:`entry_step` for each entry listed in each parameter's sparse gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError(
                        f"{type(self).__name__} steps only the entries a sparse gradient lists; set param.grad to "
                        "a torch.sparse_coo_tensor (a dense zero would count as a visit of every entry)"
                    )
                grad, arrays = param.grad.coalesce(), self.host_arrays(param)
                for index, value in zip(grad.indices().T.tolist(), grad.values().tolist()):
                    entry_step(*arrays, tuple(index), value, group)
        return loss

    @torch.no_grad()
    def metric(self) -> list[MetricBlock]:
        """The metric of each entry's next step: ``M_i = ((v_i/(1−β2^{n_i}))^ρ + ε)^{1/ρ}``.

        Identity where ρ = 0, and on entries not visited yet (no Fisher estimate, as
        :meth:`LagrangianOptimizer.metric` reports for a parameter without one).
        """
        blocks = []
        for group in self.param_groups:
            rho, beta2 = group["rho"], group["betas"][1]
            for param in group["params"]:
                if rho == 0:
                    blocks.append(MetricBlock([param], None, rho))
                    continue
                state = self.state[param]
                visited = state["visits"] > 0
                fisher = state["exp_avg_sq"] / (1 - beta2 ** state["visits"]).where(visited, 1.0)
                metric = diagonal_metric(fisher, rho, group["eps"]).diagonal.where(visited, 1.0)
                blocks.append(MetricBlock([param], DiagonalFisher(metric), rho))
        return blocks


class LagrangianQLearning(TrajectoryMixin, _TabularAlgorithm):
    """Online Q-learning whose per-entry step is the ρ-flow ``θ̇ = −F^{-ρ} g`` (THEORY §5; our extension).

    At each environment step ``(s, a, r, s')``: ``δ = r + γ (1 − terminated) max_a' Q(s', a') − Q(s, a)``
    (bootstrapping through time-limit truncations), the gradient of ``½δ²`` in ``Q(s, a)`` is
    ``g = −δ`` (the target held fixed), and ``Q(s, a)`` takes one :func:`entry_step` of
    :class:`EntrywiseLagrangianOptimizer` (ρ = ½: Adam-type; ``rho=0, betas=(0, ·)``: ``Q += lr·δ``).
    Behaviour is ε-greedy with SB3's DQN schedule (``exploration_*``); ``predict(deterministic=False)``
    explores with the current ε as DQN's does, ``deterministic=True`` is greedy.

    Lazy moments (our choice): each entry's EMAs advance only on its own visits, so every entry runs
    Adam on its own TD-gradient sequence. The optimizer as written would advance all of them with the
    other entries' zero gradients (decaying ``v``, moving unvisited entries along stale ``m``), making
    an entry's step depend on how often the others are visited, at ``O(S·A)`` per step. Both reach the
    FrozenLake threshold of experiments/benchmarks/qlearning_bench.py in a prototype (3 seeds, median
    steps: lazy 25k at lr 0.03, dense 20k at lr 0.003, each at its best of a small grid), so the choice
    rests on cost and on the per-entry reading of the Fisher, not on speed of learning.

    An *update* (for the learning-rate schedule, the logger and the trajectory) is ``steps_per_update``
    environment steps (per env); its potential is the mean ``½δ²`` of its transitions (each δ against
    the table it updated) and its gradient the mean of their ``−δ e_{s,a}``.

    The table and the optimizer state stay on the CPU whatever ``device`` says: the per-entry steps are
    scalar host work, far slower as GPU kernel launches. ``save``/``load`` keep the state (the
    per-entry Fisher estimate included, as ``policy.optimizer``) and the exploration RNG; training
    continued after ``load(path, env=the same env, force_reset=False)`` with ``reset_num_timesteps=False``
    equals uninterrupted training when ε and the learning rate are constant (a schedule restarts its
    progress with each ``learn`` call, as in SB3).

    Args:
        env: a Gymnasium env (or id) with Discrete observation and action spaces; several envs are
            stepped together and their transitions applied in env order.
        learning_rate: step size (or SB3 schedule of the remaining progress).
        gamma: discount.
        rho: exponent ρ ∈ [0, 1] of the preconditioner ``F^{-ρ}``.
        betas: EMA coefficients of the gradient (β1) and Fisher (β2) estimates.
        eps: Fisher damping ε.
        exploration_initial_eps, exploration_final_eps, exploration_fraction: ε decays linearly from the
            first to the second over this fraction of each ``learn`` call (DQN's schedule).
        steps_per_update: environment steps per update (see above).
        policy: the policy class (SB3's ``load`` passes it; keep the default).
    """

    def __init__(
        self,
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 0.03,
        gamma: float = 0.99,
        rho: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        exploration_fraction: float = 0.1,
        steps_per_update: int = 1000,
        device: torch.device | str = "cpu",
        tensorboard_log: str | None = None,
        seed: int | None = None,
        verbose: int = 0,
        policy: type[TablePolicy] = TablePolicy,
        _init_setup_model: bool = True,
    ) -> None:
        if device != "auto" and get_device(device).type != "cpu":
            warnings.warn(f"LagrangianQLearning keeps its table on the CPU (per-entry host steps); ignoring {device=}")
        env = None if env is None else maybe_make_env(env, verbose)
        super().__init__(env, learning_rate, policy, "cpu", tensorboard_log, seed, verbose)
        if steps_per_update < 1:
            raise ValueError(f"steps_per_update must be a positive number of environment steps, got {steps_per_update}")
        self.gamma = gamma
        self.rho = rho
        self.betas = betas
        self.eps = eps
        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.steps_per_update = steps_per_update
        self.exploration_rate = exploration_initial_eps
        self._rng = np.random.default_rng(seed)  # replaced by the saved generator on load
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self._make_policy()
        self.policy.optimizer = EntrywiseLagrangianOptimizer(
            [self.policy.q_table], self.lr_schedule(1.0), rho=self.rho, betas=self.betas, eps=self.eps
        )
        self.exploration_schedule = LinearSchedule(
            self.exploration_initial_eps, self.exploration_final_eps, self.exploration_fraction
        )

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Greedy action(s); with ``deterministic=False`` a uniform one with probability ε (as DQN)."""
        if not deterministic and self._rng.random() < self.exploration_rate:
            shape = np.shape(observation) if self.policy.is_vectorized_observation(observation) else ()
            return self._rng.integers(int(self.action_space.n), size=shape), state
        return self.policy.predict(observation, state, episode_start, deterministic)

    def _train(self, callback: BaseCallback, total_timesteps: int, log_interval: int) -> None:
        """Q-learning until ``total_timesteps`` environment steps; logs every ``log_interval`` episodes."""
        while self.num_timesteps < total_timesteps and self._update(callback, total_timesteps, log_interval):
            pass

    def _update(self, callback: BaseCallback, total_timesteps: int, log_interval: int) -> bool:
        """One update: up to ``steps_per_update`` steps, each followed by its entry step; False to stop."""
        optimizer, table_param = self.policy.optimizer, self.policy.q_table
        self._update_learning_rate(optimizer)
        group = optimizer.param_groups[0]
        table, *state = optimizer.host_arrays(table_param)
        gradient, losses, count = np.zeros_like(table), 0.0, 0
        num_actions, gamma, rng = int(self.action_space.n), self.gamma, self._rng
        keep_going = True
        for _ in range(self.steps_per_update):
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.exploration_rate = epsilon = self.exploration_schedule(self._current_progress_remaining)
            observations = self._last_obs
            actions = np.array(
                [rng.integers(num_actions) if rng.random() < epsilon else table[s].argmax() for s in observations]
            )
            new_obs, rewards, dones, infos = self.env.step(actions)
            self.num_timesteps += self.env.num_envs
            for s, a, reward, done, info, next_obs in zip(observations, actions, rewards, dones, infos, new_obs):
                terminated = done and not info.get("TimeLimit.truncated", False)
                next_state = info["terminal_observation"] if done else next_obs
                delta = float(reward) + (0.0 if terminated else gamma * table[next_state].max()) - table[s, a]
                entry_step(table, *state, (s, a), -delta, group)
                gradient[s, a] -= delta
                losses += 0.5 * delta * delta
                count += 1
            self._update_info_buffer(infos, dones)
            self._last_obs, self._last_episode_starts = new_obs, dones
            callback.update_locals(locals())
            if not callback.on_step():
                keep_going = False
                break
            for _ in np.flatnonzero(dones):
                self._episode_num += 1
                if log_interval is not None and self._episode_num % log_interval == 0:
                    self.dump_logs()
            if self.num_timesteps >= total_timesteps:
                break
        self._n_updates += 1
        potential = losses / count
        self.logger.record("train/td_loss", potential)
        self.logger.record("train/n_updates", self._n_updates)
        self._emit_trajectory(
            potential,
            {table_param: torch.from_numpy(gradient / count)},
            optimizer_metric(optimizer, [table_param]),
        )
        return keep_going

    def dump_logs(self) -> None:
        """SB3's off-policy log lines: episodes, fps, returns, exploration rate, TD loss."""
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        if self.ep_info_buffer:
            self.logger.record("rollout/ep_rew_mean", safe_mean([info["r"] for info in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([info["l"] for info in self.ep_info_buffer]))
        self.logger.record("rollout/exploration_rate", self.exploration_rate)
        self.logger.record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)
