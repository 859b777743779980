"""``lagrl sweep``'s YAML: the grid of training runs, checked in full before any trial starts.

A sweep file names, for each key, one value or a list (a list is a grid axis; every combination is a trial)::

    algo: ppo                                # ppo | a2c | trpo | q | planner, or a list
    env: [CartPole-v1]
    preconditioner: [adam, fisher-sqrt]      # presets or PreconditionerConfig dicts (ppo and a2c only)
    seeds: [0, 1]
    timesteps: 20000                         # or per env: {CartPole-v1: 100000, Acrobot-v1: 200000}
    hyperparams: {n_steps: 32}               # overrides of the package YAML (lagrl.agents.training)
    threshold: {CartPole-v1: 475}            # 100-episode training mean that counts as solved
    eval_episodes: 10                        # deterministic evaluation after training
    checkpoint_seconds: 60                   # a trial checkpoints at its first report this long after the last
    device: cpu

``algo``, ``env``, ``preconditioner`` and ``seeds`` may be lists; ``timesteps``, ``hyperparams``, ``threshold``,
``eval_episodes``, ``checkpoint_seconds`` and ``device`` are one value each (``timesteps`` may map envs to
budgets; an env it leaves out, or no ``timesteps`` at all, trains for the package YAML's ``n_timesteps``;
``checkpoint_seconds`` 0 checkpoints at every report). sb3-contrib's TRPO (``trpo``, the bench extra) and the
tabular agents (``q``, ``planner``) take no preconditioner: with them the ``preconditioner`` axis does not apply
and their trials have ``preconditioner: null``. ``hyperparams`` apply to every algorithm of the grid (a key an
agent does not take is refused, naming it). An optional ``search`` block turns the grid's hyperparameters into a
search (see :class:`SearchSpec`). A file with the key ``experiment`` runs an experiment's cells instead of training runs
(:class:`ExponentSweep`). :func:`load_sweep` refuses an unknown key, an unknown env or algorithm, an empty axis and
a bad threshold with a :class:`~lagrl.agents.training.ConfigError` that names the key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import gymnasium
import yaml

from lagrl.agents.preconditioners import resolve
from lagrl.agents.training import ALGOS, PRECONDITIONED, ConfigError, plan_run

AXES = ("algo", "env", "preconditioner", "seeds")
SCALARS = ("timesteps", "hyperparams", "threshold", "eval_episodes", "checkpoint_seconds", "device", "search")
DEFAULTS: dict[str, Any] = {
    "preconditioner": [None],
    "seeds": [0],
    "timesteps": None,
    "hyperparams": {},
    "threshold": {},
    "eval_episodes": 10,
    "checkpoint_seconds": 60.0,
    "device": "cpu",
    "search": None,
}
SEARCH_ALGORITHMS = ("optuna",)
SCHEDULERS = ("asha", "median", "fifo")
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")


@dataclass(frozen=True)
class TrialSpec:
    """One training run of the grid: what :func:`lagrl.agents.training.plan_run` is called with."""

    algo: str
    env: str
    preconditioner: str | dict[str, Any] | None
    seed: int
    timesteps: int | None
    hyperparams: dict[str, Any]

    @property
    def preset(self) -> str:
        """The preconditioner as a short label (a dict by its keys and values; ``-`` for trpo and the tabular ones)."""
        if self.preconditioner is None:
            return "-"
        if isinstance(self.preconditioner, str):
            return self.preconditioner
        return ",".join(f"{key}={value}" for key, value in sorted(self.preconditioner.items()))


@dataclass(frozen=True)
class SearchSpec:
    """``search: {algorithm: optuna, trials: N, space: {...}, metric: ..., mode: ..., scheduler: ...}``.

    ``space`` maps a hyperparameter to ``{loguniform: [low, high]}``, ``{uniform: [low, high]}``,
    ``{randint: [low, high]}`` (high exclusive, Tune's convention) or ``{choice: [a, b, ...]}``; each of the
    grid's (algo, env, preconditioner, seed) points is searched with ``trials`` samples. ``metric`` (what
    Optuna optimises, ``mode`` max by default) is ``train_mean`` (default: the 100-episode training mean, reported
    along the run) or ``eval_mean`` (the final evaluation; ``scheduler: fifo`` only, since a trial stopped early
    has none); ``scheduler`` ``asha`` (default), ``median`` or ``fifo`` stops poor trials early on
    ``train_mean`` against the steps trained.
    """

    algorithm: str
    trials: int
    space: dict[str, dict[str, list[Any]]]
    metric: str = "train_mean"
    mode: str = "max"
    scheduler: str = "asha"


@dataclass(frozen=True)
class SweepConfig:
    """A checked sweep file: the grid's axes and the settings every trial shares."""

    algo: tuple[str, ...]
    env: tuple[str, ...]
    preconditioner: tuple[str | dict[str, Any] | None, ...]
    seeds: tuple[int, ...]
    timesteps: dict[str, int]
    hyperparams: dict[str, Any]
    threshold: dict[str, float]
    eval_episodes: int
    checkpoint_seconds: float
    device: str
    search: SearchSpec | None

    def shared(self) -> dict[str, Any]:
        """The settings every trial gets beside its own :class:`TrialSpec`."""
        return {
            "device": self.device,
            "threshold": self.threshold,
            "eval_episodes": self.eval_episodes,
            "checkpoint_seconds": self.checkpoint_seconds,
        }

    def trials(self) -> list[TrialSpec]:
        """Every combination of the axes, in file order (trpo and the tabular agents once per seed and env)."""
        specs: dict[tuple[Any, ...], TrialSpec] = {}
        for algo, env, preconditioner, seed in itertools.product(self.algo, self.env, self.preconditioner, self.seeds):
            applied = preconditioner if algo in PRECONDITIONED else None
            spec = TrialSpec(algo, env, applied, seed, self.timesteps.get(env), dict(self.hyperparams))
            specs.setdefault((algo, env, spec.preset, seed), spec)
        return list(specs.values())


@dataclass(frozen=True)
class ExponentCell:
    """One cell of the exponent experiment (:mod:`lagrl.exponent`): a model, an exponent ρ and Adam's β2."""

    model: str
    rho: float
    beta2: float


@dataclass(frozen=True)
class ExponentSweep:
    """``experiment: exponent``: :mod:`lagrl.exponent`'s grid (its ρ × β2 for each ``model``) as one trial per cell::

        experiment: exponent
        model: [characters, mixture]             # or one of them
        seeds: [1, 2, 3]                         # the evaluation seeds of every cell
        tuning_seed: 0                           # the seed whose validation loss picks each cell's step size
        quick: false                             # true: the CI-sized runs of ``experiments/exponent.py --quick``
        device: cpu

    The sweep writes ``exponent.json`` and ``exponent.png`` (the experiment's report and heat maps) beside
    ``trials.csv``."""

    model: tuple[str, ...]
    seeds: tuple[int, ...]
    tuning_seed: int
    quick: bool
    device: str
    search: None = None

    def shared(self) -> dict[str, Any]:
        """The settings every cell gets beside its own :class:`ExponentCell`."""
        return {"device": self.device, "seeds": list(self.seeds), "tuning_seed": self.tuning_seed, "quick": self.quick}

    def trials(self) -> list[ExponentCell]:
        from lagrl.exponent import BETA2S, RHOS

        return [ExponentCell(model, rho, beta2) for model in self.model for beta2 in BETA2S for rho in RHOS]


EXPERIMENTS = {"exponent": ("experiment", "model", "seeds", "tuning_seed", "quick", "device")}


def _experiment_sweep(raw: Mapping[str, Any], source: str) -> ExponentSweep:
    """An ``experiment:`` sweep file, checked: the experiment's name, its keys, models and seeds."""
    from lagrl.exponent import MODELS

    name = raw["experiment"]
    if name not in EXPERIMENTS:
        raise ConfigError(f"{source}: experiment {name!r} is unknown; choose from {list(EXPERIMENTS)}")
    unknown = sorted(set(map(str, raw)) - set(EXPERIMENTS[name]))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for experiment {name}; valid: {list(EXPERIMENTS[name])}")
    models = _axis(raw.get("model", list(MODELS)), "model", source)
    for model in models:
        if model not in MODELS:
            raise ConfigError(f"{source}: model {model!r} is unknown; choose from {list(MODELS)}")
    seeds = tuple(_seed(seed, source) for seed in _axis(raw.get("seeds", [1, 2, 3]), "seeds", source))
    tuning_seed = _seed(raw.get("tuning_seed", 0), source)
    if len(set(seeds)) != len(seeds) or tuning_seed in seeds:
        raise ConfigError(f"{source}: seeds {list(seeds)} must be distinct and differ from tuning_seed {tuning_seed}")
    quick = raw.get("quick", False)
    if not isinstance(quick, bool):
        raise ConfigError(f"{source}: quick must be true or false, got {quick!r}")
    return ExponentSweep(tuple(dict.fromkeys(models)), seeds, tuning_seed, quick, str(raw.get("device", "cpu")))


def packaged_sweeps() -> list[str]:
    """The names of the sweep files shipped in the package (``agents/sweeps/<name>.yml``)."""
    return sorted(entry.name.removesuffix(".yml") for entry in files("lagrl.agents").joinpath("sweeps").iterdir())


def load_sweep(path: str | Path) -> SweepConfig | ExponentSweep:
    """Read and check a sweep file (see the module docstring); a name of :func:`packaged_sweeps` that is not a file
    here reads the packaged file (a directory of that name, such as the sweep's own ``--out`` when the command
    runs from its parent, does not hide it)."""
    path = Path(path)
    if not path.is_file() and str(path) in packaged_sweeps():
        path = Path(str(files("lagrl.agents").joinpath("sweeps", f"{path}.yml")))
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(
            f"cannot read the sweep file {path}: {error.strerror} (packaged sweeps: {packaged_sweeps()})"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_sweep(raw, source=str(path))


def parse_sweep(raw: Any, source: str = "the sweep config") -> SweepConfig | ExponentSweep:
    """Check a sweep config's mapping and every trial it makes (agents' keywords included) before any runs."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source} must be a mapping of keys {list(AXES + SCALARS)}, got {type(raw).__name__}")
    if "experiment" in raw:
        return _experiment_sweep(raw, source)
    unknown = sorted(set(map(str, raw)) - set(AXES + SCALARS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {list(AXES + SCALARS)}")
    for key in ("algo", "env"):
        if key not in raw:
            example = "ppo" if key == "algo" else "CartPole-v1"
            raise ConfigError(f"{source}: the key {key!r} is missing (e.g. {key}: {example})")
    settings = {**DEFAULTS, **raw}
    axes = {key: _axis(settings[key], key, source) for key in AXES}
    for algo in axes["algo"]:
        if algo not in ALGOS:
            raise ConfigError(f"{source}: algo {algo!r} is unknown; choose from {list(ALGOS)}")
    for env in axes["env"]:
        _check_env(env, source)
    seeds = tuple(_seed(seed, source) for seed in axes["seeds"])
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds {list(seeds)} repeat a seed; each seed once")
    preconditioners = tuple(_preconditioner(item, source) for item in axes["preconditioner"])
    config = SweepConfig(
        algo=tuple(axes["algo"]),
        env=tuple(axes["env"]),
        preconditioner=preconditioners,
        seeds=seeds,
        timesteps=_budgets(settings["timesteps"], axes["env"], source),
        hyperparams=_mapping(settings["hyperparams"], "hyperparams", source),
        threshold=_thresholds(settings["threshold"], axes["env"], source),
        eval_episodes=_positive_int(settings["eval_episodes"], "eval_episodes", source),
        checkpoint_seconds=_seconds(settings["checkpoint_seconds"], "checkpoint_seconds", source),
        device=str(settings["device"]),
        search=None if settings["search"] is None else _search(settings["search"], source),
    )
    for spec in config.trials():
        check_trial(spec, source, config.search)
    return config


def check_trial(spec: TrialSpec, source: str, search: SearchSpec | None = None) -> None:
    """``plan_run`` of one trial (with a sample of every searched hyperparameter): a bad key fails here."""
    sample = {key: _sample_value(distribution) for key, distribution in (search.space if search else {}).items()}
    try:
        plan_run(
            spec.algo,
            spec.env,
            {**spec.hyperparams, **sample},
            preconditioner=spec.preconditioner,
            timesteps=spec.timesteps,
            seed=spec.seed,
        )
    except ConfigError as error:
        raise ConfigError(f"{source}: trial {spec.algo} on {spec.env} ({spec.preset}): {error}") from None


def _axis(value: Any, key: str, source: str) -> list[Any]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"{source}: {key} is an empty list, so the grid has no trials; give at least one value")
    return items


def _check_env(env: Any, source: str) -> None:
    if not isinstance(env, str):
        raise ConfigError(f"{source}: env {env!r} must be a Gymnasium id such as CartPole-v1")
    try:
        gymnasium.spec(env)
    except gymnasium.error.Error as error:
        raise ConfigError(
            f"{source}: env {env!r} is not registered ({error}); list the ids with "
            "python -c 'import gymnasium; gymnasium.pprint_registry()'"
        ) from None


def _seed(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: seeds must be non-negative integers, got {value!r}")
    return value


def _preconditioner(value: Any, source: str) -> str | dict[str, Any] | None:
    if value is None:
        return None
    try:
        resolve(dict(value) if isinstance(value, Mapping) else value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: preconditioner {value!r}: {error}") from None
    return dict(value) if isinstance(value, Mapping) else value


def _positive_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
        raise ConfigError(f"{source}: {key} must be a positive whole number, got {value!r}")
    return int(value)


def _seconds(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{source}: {key} must be a finite number of seconds ≥ 0 (0: at every report), got {value!r}")
    return float(value)


def _budgets(value: Any, envs: list[str], source: str) -> dict[str, int]:
    """``timesteps`` as a budget per env: one number for every env, a mapping, or none (the YAML's)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {env: _positive_int(value, "timesteps", source) for env in envs}
    for env in value:
        if env not in envs:
            raise ConfigError(f"{source}: timesteps names env {env!r}, which is not in env {envs}")
    return {env: _positive_int(budget, f"timesteps of {env}", source) for env, budget in value.items()}


def _mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key} must be a mapping (e.g. {{n_steps: 32}}), got {value!r}")
    return dict(value)


def _thresholds(value: Any, envs: list[str], source: str) -> dict[str, float]:
    thresholds = _mapping(value, "threshold", source)
    for env, level in thresholds.items():
        if env not in envs:
            raise ConfigError(f"{source}: threshold names env {env!r}, which is not in env {envs}")
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
            raise ConfigError(f"{source}: threshold of {env} must be a finite number (a training mean), got {level!r}")
    return {env: float(level) for env, level in thresholds.items()}


def _search(value: Any, source: str) -> SearchSpec:
    block = _mapping(value, "search", source)
    known = ("algorithm", "trials", "space", "metric", "mode", "scheduler")
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in search; valid keys: {list(known)}")
    algorithm = block.get("algorithm", "optuna")
    if algorithm not in SEARCH_ALGORITHMS:
        raise ConfigError(f"{source}: search.algorithm {algorithm!r} is unknown; choose from {list(SEARCH_ALGORITHMS)}")
    if block.get("scheduler", "asha") not in SCHEDULERS:
        raise ConfigError(f"{source}: search.scheduler {block['scheduler']!r} is unknown; choose from {SCHEDULERS}")
    if block.get("metric", "train_mean") not in ("eval_mean", "train_mean"):
        raise ConfigError(f"{source}: search.metric must be train_mean or eval_mean, got {block['metric']!r}")
    if block.get("metric") == "eval_mean" and block.get("scheduler", "asha") != "fifo":
        raise ConfigError(
            f"{source}: search.metric eval_mean needs search.scheduler fifo (a trial stopped early is never "
            "evaluated); use metric train_mean with asha or median"
        )
    if block.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"{source}: search.mode must be max or min, got {block['mode']!r}")
    space = _mapping(block.get("space"), "search.space", source)
    if not space:
        raise ConfigError(f"{source}: search.space is empty; give at least one hyperparameter to search")
    for key, distribution in space.items():
        _check_distribution(key, distribution, source)
    return SearchSpec(
        algorithm=algorithm,
        trials=_positive_int(block.get("trials"), "search.trials", source),
        space={key: dict(distribution) for key, distribution in space.items()},
        metric=block.get("metric", "train_mean"),
        mode=block.get("mode", "max"),
        scheduler=block.get("scheduler", "asha"),
    )


def _check_distribution(key: str, distribution: Any, source: str) -> None:
    where = f"{source}: search.space.{key}"
    if not isinstance(distribution, Mapping) or len(distribution) != 1 or next(iter(distribution)) not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where} must be a mapping with one key of {list(DISTRIBUTIONS)} (e.g. {{loguniform: [1e-5, 1e-2]}}), "
            f"got {distribution!r}"
        )
    ((kind, values),) = distribution.items()
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind} needs a non-empty list, got {values!r}")
    if kind == "choice":
        return
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.{kind} needs [low, high] numbers, got {values!r}")
    low, high = values
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"{where}.{kind}: need 0 < low < high for loguniform and low < high otherwise, got {values}")


def _sample_value(distribution: Mapping[str, list[Any]]) -> Any:
    """A value inside ``distribution`` (its low end, or its first choice) to check a hyperparameter's key."""
    return next(iter(distribution.values()))[0]
