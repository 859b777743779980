"""Training runs as ``lagrl train`` / ``lagrl evaluate`` compose them: hyperparameters, agents, checkpoints.

- Hyperparameters come from the YAML files shipped in ``hyperparams/`` (rl-baselines3-zoo's format, keyed
  by env id): meta keys :data:`META_KEYS`, ``lin_<x>`` schedules, ``policy_kwargs`` as a dict or a
  ``"dict(...)"`` string; every other key must be a keyword of the agent's ``__init__`` (:func:`plan_run`).
- :func:`build_model` makes the vectorised env and the agent; the agent carries its run record
  (``lagrl_run``: algo, env id, env kwargs; ``lagrl_vec_normalize``: the observation statistics) into its
  zip, so :func:`load_run` can rebuild the env for evaluation.
- :func:`save_atomically` writes a zip beside its target and renames it over, so a crash or Ctrl-C never
  leaves a truncated model; :class:`AtomicCheckpoint` does that every tenth of a run.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import gymnasium
import yaml
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

import lagrl.envs  # noqa: F401  (registers the lagrl/ environments)
from lagrl.agents.on_policy import LagrangianA2C, LagrangianPPO
from lagrl.atomic import atomic_open

ALGOS = ("ppo", "a2c", "trpo", "q", "planner")
PRECONDITIONED = ("ppo", "a2c")  # the agents that take a ``preconditioner`` (LagrangianPPO, LagrangianA2C)
TABULAR = ("q", "planner")
CONTRIB = "pip install -c constraints.txt -e '.[bench]'"  # sb3-contrib, for --algo trpo
META_KEYS = ("n_envs", "n_timesteps", "normalize", "env_kwargs")
SET_BY_LAGRL = ("env", "seed", "device", "tensorboard_log", "_init_setup_model")  # not hyperparameters
DEFAULT_TIMESTEPS = 100_000
CHECKPOINTS_PER_RUN = 10


class ConfigError(ValueError):
    """A bad setting or input: the message names the problem and the fix (``lagrl`` exits with code 2)."""


@dataclass(frozen=True)
class RunPlan:
    """Everything a run is built from, once the YAML entry and the command line are merged.

    ``kwargs`` are the agent's keyword arguments (schedules resolved); ``source`` names the YAML entry
    used, or is ``None`` where the env has none and the agent's defaults apply.
    """

    algo: str
    env_id: str
    agent: type[BaseAlgorithm]
    kwargs: dict[str, Any]
    n_envs: int
    timesteps: int
    seed: int
    normalize: dict[str, Any] | None
    env_kwargs: dict[str, Any]
    source: str | None


def agent_class(algo: str) -> type[BaseAlgorithm]:
    """The agent class of ``--algo`` (sb3-contrib's TRPO and the tabular agents are imported only when asked for)."""
    if algo == "ppo":
        return LagrangianPPO
    if algo == "a2c":
        return LagrangianA2C
    if algo == "trpo":
        try:
            from sb3_contrib import TRPO
        except ImportError:
            raise ConfigError(f"--algo trpo is sb3-contrib's TRPO, which is not installed: {CONTRIB}") from None
        return TRPO
    try:
        from lagrl.agents.tabular import BellmanPlanner, LagrangianQLearning
    except ImportError as error:
        raise ConfigError(f"--algo {algo} needs lagrl.agents.tabular, which failed to import: {error}") from None
    return {"q": LagrangianQLearning, "planner": BellmanPlanner}[algo]


def accepted_keywords(cls: type) -> set[str]:
    """Keyword arguments of ``cls(...)``: its ``__init__`` and, through ``**kwargs``, its bases'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names |= {p.name for p in params if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def hyperparameter_file(algo: str) -> str:
    """The name of ``algo``'s YAML file inside the package."""
    return f"hyperparams/{algo}.yml"


def load_hyperparams(algo: str, env_id: str) -> dict[str, Any] | None:
    """The YAML entry of ``env_id`` for ``algo`` as written (``None`` where there is none)."""
    resource = files("lagrl.agents").joinpath(hyperparameter_file(algo))
    if not resource.is_file():
        return None
    entries = yaml.safe_load(resource.read_text()) or {}
    entry = entries.get(env_id)
    return None if entry is None else dict(entry)


def linear_schedule(text: str) -> LinearSchedule:
    """rl-zoo's ``lin_<x>``: ``x · progress_remaining``, from x at the start to 0 at the end."""
    try:
        start = float(text.removeprefix("lin_"))
    except ValueError:
        raise ConfigError(f"bad schedule {text!r}: write lin_<start value>, e.g. lin_0.001") from None
    return LinearSchedule(start, 0.0, 1.0)


def policy_kwargs(value: Any) -> dict[str, Any]:
    """``policy_kwargs`` from a mapping or from rl-zoo's string ``"dict(net_arch=[64], activation_fn=nn.ReLU)"``."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = eval(value, {"__builtins__": {}}, {"dict": dict, "nn": nn})  # zoo's format: dict(...) and nn.*
        except Exception as error:
            raise ConfigError(
                f"cannot read policy_kwargs {value!r} ({error}); write e.g. dict(net_arch=[64, 64])"
            ) from None
        if isinstance(parsed, dict):
            return parsed
    raise ConfigError(f"policy_kwargs must be a mapping or a 'dict(...)' string, got {value!r}")


def normalize_kwargs(value: Any, gamma: Any) -> dict[str, Any] | None:
    """VecNormalize's keyword arguments from ``normalize`` (``true``, ``false`` or a mapping), as the zoo does."""
    if value is False or value is None:
        return None
    if value is not True and not isinstance(value, dict):
        raise ConfigError(f"normalize must be true, false or a mapping of VecNormalize arguments, got {value!r}")
    kwargs = {} if value is True else dict(value)
    if gamma is not None:
        kwargs.setdefault("gamma", gamma)  # the return normalisation discounts as the agent does
    return kwargs


def plan_run(
    algo: str,
    env_id: str,
    overrides: dict[str, Any],
    *,
    preconditioner: str | None = None,
    n_envs: int | None = None,
    timesteps: int | None = None,
    seed: int = 0,
) -> RunPlan:
    """Merge ``env_id``'s YAML entry, ``--hyperparams`` overrides and the command-line flags; validate every key.

    Raises :class:`ConfigError` naming an unknown key and the valid ones, before anything is built.
    """
    agent = agent_class(algo)
    accepted = accepted_keywords(agent)
    entry = load_hyperparams(algo, env_id)
    settings = {**(entry or {}), **overrides}
    if preconditioner is not None:
        if "preconditioner" not in accepted:
            instead = "; set its exponent with --hyperparams rho=..." if "rho" in accepted else ""
            raise ConfigError(f"--preconditioner does not apply to --algo {algo} ({agent.__name__}){instead}")
        settings["preconditioner"] = preconditioner
    valid = (accepted - set(SET_BY_LAGRL)) | set(META_KEYS)
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {unknown} for {agent.__name__}; valid keys: {sorted(valid)}")
    meta = {key: settings.pop(key) for key in META_KEYS if key in settings}
    if "policy_kwargs" in settings:
        settings["policy_kwargs"] = policy_kwargs(settings["policy_kwargs"])
    for key, value in settings.items():
        if isinstance(value, str) and value.startswith("lin_"):
            settings[key] = linear_schedule(value)
    return RunPlan(
        algo=algo,
        env_id=env_id,
        agent=agent,
        kwargs=settings,
        n_envs=n_envs or _count(meta, "n_envs", 1),
        timesteps=timesteps or _count(meta, "n_timesteps", DEFAULT_TIMESTEPS),
        seed=seed,
        normalize=normalize_kwargs(meta.get("normalize", False), settings.get("gamma")),
        env_kwargs=dict(meta.get("env_kwargs") or {}),
        source=None if entry is None else f"{hyperparameter_file(algo)}: {env_id}",
    )


def _count(meta: dict[str, Any], key: str, default: int) -> int:
    """A positive whole number from the YAML (``!!float 1e5`` included), else ``default``."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
        raise ConfigError(f"{key} must be a positive whole number, got {value!r}")
    return int(value)


def resolve_device(device: str, policy: str) -> str:
    """SB3's advice for ``"auto"``: the CPU for MLP (and tabular) policies, CUDA where there is one for CNNs."""
    if device != "auto":
        return device
    return "auto" if "Cnn" in policy else "cpu"


def make_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
    """SB3's ``make_vec_env``, with an unknown or uninstallable env id as a :class:`ConfigError`."""
    try:
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    except (gymnasium.error.Error, TypeError) as error:  # TypeError: env_kwargs the env does not take
        raise ConfigError(
            f"cannot make env {env_id!r}: {error} (list the registered ids with "
            "python -c 'import gymnasium; gymnasium.pprint_registry()')"
        ) from None


def check_tabular(env: VecEnv, plan: RunPlan) -> None:
    """The tabular agents need Discrete states and actions (and the planner the transition table ``P``)."""
    if not isinstance(env.observation_space, spaces.Discrete) or not isinstance(env.action_space, spaces.Discrete):
        raise ConfigError(
            f"--algo {plan.algo} needs Discrete observation and action spaces; {plan.env_id} has "
            f"{env.observation_space} and {env.action_space}: use --algo ppo or a2c, or a tabular env "
            "(FrozenLake-v1, Taxi-v3, CliffWalking-v1, lagrl/RiverSwim-v0, lagrl/Garnet-v0)"
        )
    if plan.algo == "planner":
        try:
            env.get_attr("P", indices=0)
        except AttributeError:
            raise ConfigError(
                f"--algo planner needs the transition table unwrapped.P, which {plan.env_id} lacks; use --algo q"
            ) from None


def build_model(plan: RunPlan, device: str = "auto", logdir: Path | None = None) -> BaseAlgorithm:
    """The agent of ``plan`` on its vectorised env; bad env or settings raise :class:`ConfigError`."""
    env = make_env(plan.env_id, plan.n_envs, plan.seed, plan.env_kwargs)
    if plan.algo in TABULAR:
        check_tabular(env, plan)
    try:
        if plan.normalize is not None:
            env = VecNormalize(env, **plan.normalize)
        kwargs = dict(plan.kwargs)
        if plan.algo not in TABULAR:
            kwargs.setdefault("policy", "MlpPolicy")
        given = {"seed": plan.seed, "device": resolve_device(device, str(kwargs.get("policy", "TablePolicy")))}
        if logdir is not None:
            given["tensorboard_log"] = str(logdir)
        accepted = accepted_keywords(plan.agent)
        model = plan.agent(env=env, **kwargs, **{key: value for key, value in given.items() if key in accepted})
    except (ValueError, TypeError, AssertionError) as error:  # SB3 checks spaces and sizes with assert
        raise ConfigError(f"cannot build {plan.agent.__name__} on {plan.env_id}: {error}") from None
    model.lagrl_run = {"algo": plan.algo, "env_id": plan.env_id, "env_kwargs": plan.env_kwargs}
    model.lagrl_vec_normalize = env if isinstance(env, VecNormalize) else None
    return model


def model_path(text: str | Path) -> Path:
    """Where ``--save`` puts the model: the path if it ends in ``.zip``, else with ``.zip`` added (SB3's rule)."""
    path = Path(text)
    return path if path.suffix == ".zip" else path.with_name(path.name + ".zip")


def save_atomically(model: BaseAlgorithm, path: Path) -> None:
    """``model.save`` to a temporary file beside ``path``, then an atomic rename over ``path`` (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as stream:
        model.save(stream)


class AtomicCheckpoint(BaseCallback):
    """Saves the model atomically to ``path`` every ``every`` environment steps; announces the start.

    ``saved_at`` is the step of the last checkpoint written (``None`` before the first).
    """

    def __init__(self, path: Path, every: int) -> None:
        super().__init__()
        self.path = path
        self.every = max(1, every)
        self.saved_at: int | None = None

    def _on_training_start(self) -> None:
        print(f"training started; a checkpoint every {self.every} steps to {self.path}", flush=True)

    def _on_step(self) -> bool:
        if self.num_timesteps - (self.saved_at or 0) >= self.every:
            save_atomically(self.model, self.path)
            self.saved_at = self.num_timesteps
        return True


def train(model: BaseAlgorithm, timesteps: int, checkpoint: AtomicCheckpoint, progress: bool) -> None:
    """``model.learn`` with the checkpoint and SB3's progress bar; SB3's TensorBoard files are closed however it ends.

    The agents close their own trajectory event file in ``learn``; errors and Ctrl-C propagate.
    """
    try:
        model.learn(timesteps, callback=[checkpoint], progress_bar=progress)
    finally:
        if hasattr(model, "_logger"):  # set by learn's setup
            model.logger.close()


def run_directory(model: BaseAlgorithm) -> str | None:
    """The run's TensorBoard folder (``logdir/<ALGO>_<n>``), once ``learn`` has set it up; ``None`` without one."""
    logging = getattr(model, "tensorboard_log", None) is not None and hasattr(model, "_logger")
    return model.logger.get_dir() if logging else None


def load_run(path: Path, device: str = "auto") -> BaseAlgorithm:
    """A model saved by ``lagrl train`` (``.zip`` may be left off): agent class and run record come from the zip."""
    path = path if path.is_file() else model_path(path)
    if not path.is_file():
        raise ConfigError(f"no model at {path}; pass the file lagrl train --save wrote")
    data, _, _ = load_from_zip_file(path, device="cpu")
    run = (data or {}).get("lagrl_run")
    if not isinstance(run, dict) or run.get("algo") not in ALGOS:
        raise ConfigError(f"{path} holds no lagrl run record: it was not written by lagrl train")
    policy = getattr(data.get("policy_class"), "__name__", "tabular")
    return agent_class(run["algo"]).load(path, device=resolve_device(device, policy))


def evaluation_env(model: BaseAlgorithm, seed: int, env_id: str | None = None) -> VecEnv:
    """One env as the model was trained on (its ``env_kwargs``), or ``env_id``, behind a frozen copy of the run's
    VecNormalize statistics: a copy, so that the training env (still wrapped where the model was just trained)
    keeps its own wrapper and keeps updating its statistics."""
    run = model.lagrl_run
    same = env_id is None or env_id == run["env_id"]
    env = make_env(run["env_id"] if same else env_id, 1, seed, run["env_kwargs"] if same else {})
    source = model.lagrl_vec_normalize
    if source is None:
        return env
    frozen = VecNormalize(
        env,
        training=False,
        norm_obs=source.norm_obs,
        norm_reward=False,
        clip_obs=source.clip_obs,
        gamma=source.gamma,
        epsilon=source.epsilon,
        norm_obs_keys=source.norm_obs_keys,
    )
    frozen.obs_rms = copy.deepcopy(source.obs_rms)  # as SB3's sync_envs_normalization copies them
    return frozen


@dataclass(frozen=True)
class Evaluation:
    """Undiscounted episode returns of a policy: mean, standard deviation, number of episodes."""

    mean_return: float
    std_return: float
    episodes: int


def evaluate(model: BaseAlgorithm, env: VecEnv, episodes: int, deterministic: bool) -> Evaluation:
    """SB3's ``evaluate_policy`` over ``episodes`` episodes."""
    try:
        mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=deterministic)
    except (ValueError, AssertionError) as error:  # e.g. an env whose spaces differ from the model's
        raise ConfigError(f"cannot evaluate on this env: {error}") from None
    return Evaluation(float(mean), float(std), episodes)
