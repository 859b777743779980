"""``lagrl sweep``: the trials of a sweep file (:mod:`lagrl.agents.sweep_config`) as a Ray Tune experiment.

Each trial is one ``lagrl train`` run (:func:`lagrl.agents.training.plan_run` and ``build_model``) in a Ray
worker with one CPU and one torch thread. Along the run it reports, every :data:`REPORTS` th of its budget,
the steps so far, the 100-episode training mean, the step at which that mean first reached the env's threshold
and the throughput; the first report ``checkpoint_seconds`` (the sweep file's, 60 by default) after the trial's
start or its last checkpoint carries a checkpoint (the model's zip, its VecNormalize statistics and the
threshold watch's state), so that a killed worker loses at most about that much training. After training it
reports a deterministic evaluation. Under ``DIR``:

- ``tune/`` — Ray Tune's experiment (its state, each trial's ``progress.csv`` and checkpoints): ``--resume``
  restores it (``Tuner.restore``) and runs only what did not finish; a trial whose worker dies is retried from
  its last checkpoint (``FailureConfig(max_failures=MAX_FAILURES)``). A restored trial goes on from the saved
  model, optimizer and threshold watch with fresh environments and random state (SB3 saves neither), so it is
  not bit-identical to the uninterrupted run; its ``attempts`` is above 1;
- ``trials/<trial>/`` — the trial's TensorBoard logs (SB3's and lagrl's tags, flushed at every report) and
  its final model ``model.zip``;
- ``trials.csv``, ``summary.json``, ``summary.md`` and the plots of :mod:`lagrl.agents.sweep_summary`.

An experiment's sweep (``experiment: exponent``, :class:`~lagrl.agents.sweep_config.ExponentSweep`) runs one
trial per cell of :mod:`lagrl.exponent` (:func:`lagrl.exponent.sweep_trial`, one report with the cell) and
writes ``trials.csv`` (one row per cell), ``exponent.json`` and ``exponent.png``.

By default the command starts a local Ray on all cores and stops it at the end; ``address`` (``"auto"`` or
``host:port``) joins a running cluster, whose nodes must all see ``DIR`` (a shared filesystem). Ray is an
optional dependency: the ``sweep`` extra.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from lagrl.agents.sweep_config import ExponentSweep, SweepConfig, TrialSpec
from lagrl.agents.threshold import ThresholdWatch
from lagrl.agents.training import ConfigError, build_model, evaluate, evaluation_env, plan_run, save_atomically
from lagrl.atomic import atomic_open

REPORTS = 10  # reports per trial (the first one ``checkpoint_seconds`` after the last checkpoint carries one)
MAX_FAILURES = 2  # retries of a trial whose worker dies
EVALUATION_SEED = 10_000  # + the trial's seed: an env the training never saw
EXPERIMENT = "tune"
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}  # Ray's system config
CSV_COLUMNS = (
    "trial_id", "algo", "env", "preconditioner", "seed", "hyperparams", "timesteps", "eval_mean", "eval_std",
    "train_mean", "steps_to_threshold", "fps", "wall_seconds", "node", "attempts", "logdir",
)  # fmt: skip
CELL_COLUMNS = (
    "trial_id", "model", "rho", "beta2", "lr", "validation_median", "test_median", "validation", "test", "grid",
    "diverged", "wall_seconds", "node",
)  # fmt: skip


def require_ray() -> Any:
    """``ray.tune``, or a :class:`ConfigError` naming the extra that provides it."""
    try:
        from ray import tune
    except ImportError:
        raise ConfigError(
            "lagrl sweep needs Ray Tune and rliable: pip install -c constraints.txt -e '.[sweep]'"
        ) from None
    return tune


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at ``address`` or, without one, start a local Ray on ``num_cpus`` (default all cores).

    No dashboard and no worker logs on the console. A local Ray starts no idle workers: by default its raylet
    prestarts one interpreter per CPU for tasks when the driver connects, which Tune's trial actors do not use
    (each gets a worker of its own); on a 2-core machine those idle interpreters cost about 0.8 CPU-seconds each
    (measured), taken from the trials. A cluster's configuration is its own (``ray start``'s).
    """
    import ray

    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address is None:
        options |= {"num_cpus": num_cpus, "_system_config": NO_PRESTART}
    ray.init(address=address, **options)


def trial_name(spec: TrialSpec, trial_id: str) -> str:
    """A folder name for a trial: its id, algorithm, env, preconditioner and seed (path-safe)."""
    name = f"{trial_id}_{spec.algo}_{spec.env}_{spec.preset}_seed{spec.seed}"
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "-", name)


class TuneReporter(BaseCallback):
    """Reports the run's progress to Tune every ``budget / REPORTS`` steps; the first report at least
    ``checkpoint_seconds`` after the start or the last checkpoint carries a checkpoint.

    A checkpoint holds ``model.zip`` (:func:`save_atomically`), ``vec_normalize.pkl`` where the env is
    normalised, and ``progress.json`` (the threshold watch's state, the seconds trained, the attempt).
    """

    def __init__(
        self, budget: int, watch: ThresholdWatch, elapsed: float, attempt: int, checkpoint_seconds: float
    ) -> None:
        super().__init__()
        self.budget = budget
        self.every = max(1, budget // REPORTS)
        self.watch = watch
        self.elapsed = elapsed  # seconds trained by earlier attempts
        self.attempt = attempt
        self.checkpoint_seconds = checkpoint_seconds
        self.start = self.checkpointed = time.perf_counter()
        self.start_steps = 0
        self.reported_at = 0

    def _on_training_start(self) -> None:
        self.start = self.checkpointed = time.perf_counter()
        self.start_steps = self.reported_at = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        """A report every ``every`` steps; none at the budget, where the final report (with the evaluation) follows
        (so that a scheduler's last rung judges the finished trial, not its last rollout)."""
        if self.num_timesteps - self.reported_at >= self.every and self.num_timesteps < self.budget:
            due = time.perf_counter() - self.checkpointed >= self.checkpoint_seconds
            self.report(checkpoint=due)

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.start

    def metrics(self) -> dict[str, Any]:
        """What every report carries (``steps_to_threshold`` is -1 until the threshold is reached)."""
        episodes = self.model.ep_info_buffer
        train_mean = sum(info["r"] for info in episodes) / len(episodes) if episodes else float("nan")
        run_seconds = time.perf_counter() - self.start
        steps = self.num_timesteps - self.start_steps
        return {
            "timesteps": self.num_timesteps,
            "train_mean": train_mean,
            "steps_to_threshold": -1 if self.watch.reached is None else self.watch.reached,
            "fps": steps / run_seconds if run_seconds > 0 else float("nan"),
            "wall_seconds": self.seconds(),
            "attempts": self.attempt,
            "node": _node(),
        }

    def report(self, checkpoint: bool, **extra: Any) -> None:
        from ray import tune

        self._flush_logs()
        metrics = self.metrics() | extra
        self.reported_at = self.num_timesteps
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(self.model, Path(directory), self.watch, metrics["wall_seconds"], self.attempt)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        self.checkpointed = time.perf_counter()

    def _flush_logs(self) -> None:
        """SB3's writers and lagrl's trajectory writer, so that a killed worker loses at most one report's logs."""
        for output in getattr(self.model.logger, "output_formats", []):
            writer = getattr(output, "writer", None)
            if writer is not None:
                writer.flush()
        trajectory = getattr(self.model, "_trajectory_callback", None)
        if trajectory is not None and trajectory.writer is not None:
            trajectory.writer.flush()


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def save_checkpoint(model: BaseAlgorithm, directory: Path, watch: ThresholdWatch, seconds: float, attempt: int) -> None:
    """A trial's checkpoint in ``directory``: model, VecNormalize statistics and the run's progress."""
    save_atomically(model, directory / "model.zip")
    if model.lagrl_vec_normalize is not None:
        model.lagrl_vec_normalize.save(str(directory / "vec_normalize.pkl"))
    progress = {"reached": watch.reached, "seconds": seconds, "attempt": attempt}
    (directory / "progress.json").write_text(json.dumps(progress))


def restore_checkpoint(model: BaseAlgorithm, directory: Path, device: str) -> tuple[BaseAlgorithm, dict[str, Any]]:
    """The model of a checkpoint on ``model``'s env (its statistics restored), and the checkpoint's progress."""
    env = model.get_env()
    if isinstance(env, VecNormalize):
        env = VecNormalize.load(str(directory / "vec_normalize.pkl"), env.venv)
    restored = type(model).load(directory / "model.zip", env=env, device=device)
    restored.lagrl_run = model.lagrl_run
    restored.lagrl_vec_normalize = env if isinstance(env, VecNormalize) else None
    return restored, json.loads((directory / "progress.json").read_text())


def train_trial(settings: dict[str, Any]) -> None:
    """Tune's function trainable: one trial, resumed from Tune's checkpoint where there is one."""
    from ray import tune

    torch.set_num_threads(1)
    spec = TrialSpec(**settings["trial"])
    hyperparams = {**spec.hyperparams, **settings.get("search", {})}
    plan = plan_run(
        spec.algo, spec.env, hyperparams, preconditioner=spec.preconditioner, timesteps=spec.timesteps, seed=spec.seed
    )
    logdir = Path(settings["out"]) / "trials" / trial_name(spec, tune.get_context().get_trial_id())
    model = build_model(plan, settings["device"], logdir)
    watch, progress = ThresholdWatch(settings["threshold"].get(spec.env, float("inf"))), {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            model, progress = restore_checkpoint(model, Path(directory), settings["device"])
        watch.reached = progress["reached"]
    attempt = progress.get("attempt", 0) + 1
    elapsed = progress.get("seconds", 0.0)
    reporter = TuneReporter(plan.timesteps, watch, elapsed, attempt, settings["checkpoint_seconds"])
    remaining = plan.timesteps - model.num_timesteps
    try:
        if remaining > 0:
            fresh = checkpoint is None
            model.learn(remaining, callback=[watch, reporter], reset_num_timesteps=fresh, tb_log_name="run")
    finally:
        if hasattr(model, "_logger"):
            model.logger.close()
    result = evaluate(
        model, evaluation_env(model, EVALUATION_SEED + spec.seed), settings["eval_episodes"], deterministic=True
    )
    save_atomically(model, logdir / "model.zip")
    reporter.report(checkpoint=False, eval_mean=result.mean_return, eval_std=result.std_return, logdir=str(logdir))


def _trial_dirname(trial: Any) -> str:
    """Tune's folder of a trial: its id (Tune's default spells out the whole config)."""
    return str(trial.trial_id)


def _shared(config: SweepConfig | ExponentSweep, out: Path) -> dict[str, Any]:
    """The settings every trial of the sweep gets beside its own: the config's, and where the sweep writes."""
    return {"out": str(out.resolve()), **config.shared()}


def _distribution(tune: Any, distribution: dict[str, list[Any]]) -> Any:
    """A search-space entry of the sweep file as Tune's sampler (``randint``'s high is exclusive)."""
    ((kind, values),) = distribution.items()
    return tune.choice(values) if kind == "choice" else getattr(tune, kind)(*values)


class Experiment(NamedTuple):
    """One Tune experiment of a sweep: the whole grid, or (a search) one grid point's samples."""

    name: str
    param_space: dict[str, Any]
    tune_config: dict[str, Any]


def experiments(config: SweepConfig | ExponentSweep, out: Path) -> list[Experiment]:
    """The grid as one experiment (a ``grid_search`` over the trials); a search as one experiment per grid point,
    Optuna sampling ``search.trials`` settings of its space, a scheduler stopping poor ones on ``train_mean``."""
    tune = require_ray()
    shared = _shared(config, out)
    if config.search is None:
        trials = tune.grid_search([asdict(spec) for spec in config.trials()])
        return [Experiment(EXPERIMENT, {"trial": trials, **shared}, {})]
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    search, found = config.search, []
    space = {key: _distribution(tune, distribution) for key, distribution in search.space.items()}
    for index, spec in enumerate(config.trials()):
        budget = plan_run(spec.algo, spec.env, spec.hyperparams, preconditioner=spec.preconditioner,
                          timesteps=spec.timesteps, seed=spec.seed).timesteps  # fmt: skip
        schedulers = {
            "asha": lambda: ASHAScheduler(time_attr="timesteps", max_t=budget, grace_period=max(1, budget // 4)),
            "median": lambda: MedianStoppingRule(time_attr="timesteps", grace_period=budget // 4),
            "fifo": FIFOScheduler,
        }
        settings = {
            "metric": search.metric,
            "mode": search.mode,
            "num_samples": search.trials,
            "search_alg": OptunaSearch(seed=spec.seed),
            "scheduler": schedulers[search.scheduler](),
        }
        found.append(Experiment(f"{EXPERIMENT}-{index}", {"trial": asdict(spec), "search": space, **shared}, settings))
    return found


class SweepResult(NamedTuple):
    """The finished trials' ``trials.csv`` rows, each trial's reported ``(timesteps, train_mean)`` curve by
    trial id, how many trials a scheduler stopped early, and whether some trials did not end (an interrupt,
    or a trial that failed every retry)."""

    rows: list[dict[str, Any]]
    curves: dict[str, list[tuple[int, float]]]
    stopped_early: int
    incomplete: bool


def run_sweep(
    config: SweepConfig | ExponentSweep,
    out: Path,
    *,
    address: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
) -> SweepResult:
    """Run (or, with ``resume``, continue) the sweep in ``out``.

    Starts a local Ray (all cores) unless ``address`` is given, and shuts down what it started. ``out/sweep.json``
    records the grid; ``resume`` refuses a config whose grid differs from it.
    """
    tune = require_ray()
    import ray

    out.mkdir(parents=True, exist_ok=True)
    record = out / "sweep.json"
    grid = {"trials": [asdict(spec) for spec in config.trials()], "search": config.search, **_shared(config, out)}
    grid = json.loads(json.dumps(grid, default=asdict))
    if resume:
        if not record.is_file():
            raise ConfigError(f"--resume: no sweep to resume in {out}; run without --resume first")
        if json.loads(record.read_text()) != grid:
            raise ConfigError(f"--resume: the config's grid differs from the one the sweep in {out} started with")
    elif record.exists():
        raise ConfigError(f"{out} already holds a sweep; continue it with --resume or choose another --out")
    else:
        with atomic_open(record) as handle:
            json.dump(grid, handle, indent=1)
    started = not ray.is_initialized()
    if started:
        start_ray(address)
    results: list[Any] = []
    terminated = 0  # trials that ended: finished, or stopped early by a scheduler
    try:
        if isinstance(config, ExponentSweep):
            from lagrl.exponent import sweep_trial

            trainable = tune.with_resources(sweep_trial, {"cpu": 1})
        else:
            trainable = tune.with_resources(train_trial, {"cpu": 1})
        for experiment in experiments(config, out):
            path = str(out.resolve() / experiment.name)
            if resume and tune.Tuner.can_restore(path):
                tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=experiment.param_space,
                    tune_config=tune.TuneConfig(
                        max_concurrent_trials=max_concurrent,
                        trial_dirname_creator=_trial_dirname,
                        reuse_actors=True,
                        **experiment.tune_config,
                    ),  # fmt: skip
                    run_config=tune.RunConfig(
                        storage_path=str(out.resolve()),
                        name=experiment.name,
                        verbose=1,
                        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    ),
                )
            grid_results = tuner.fit()
            results += list(grid_results)
            ended = _ended_trials(path)
            terminated += ended
            if ended < len(grid_results):
                break  # interrupted, or a trial failed every retry: the rest starts on --resume
    finally:
        if started:
            ray.shutdown()
    if isinstance(config, ExponentSweep):
        cells = [result for result in results if "cell" in result.metrics]
        return SweepResult([cell_row(result) for result in cells], {}, 0, terminated < _expected(config))
    finished = [result for result in results if "eval_mean" in result.metrics]  # trained to the end, evaluated
    curves = {
        result.metrics["trial_id"]: [
            (int(step), float(mean)) for step, mean in zip(frame["timesteps"], frame["train_mean"])
        ]
        for result in finished
        if (frame := result.metrics_dataframe) is not None
    }
    incomplete = terminated < _expected(config)
    return SweepResult([trial_row(result) for result in finished], curves, terminated - len(finished), incomplete)


def _ended_trials(path: str) -> int:
    """Trials that ended (finished, or stopped by a scheduler) in the experiment state Tune saved at ``path``.

    Read back from disk: Tune snapshots the state before it tears down the trials of an interrupted run, so an
    interrupted trial is saved as pending, where the in-memory result grid already calls it terminated.
    """
    from ray.tune import ExperimentAnalysis

    return sum(trial.status == "TERMINATED" for trial in ExperimentAnalysis(path).trials)


def _expected(config: SweepConfig | ExponentSweep) -> int:
    """How many trials the sweep makes: the grid's, or each grid point's search samples."""
    points = len(config.trials())
    return points if config.search is None else points * config.search.trials


def trial_row(result: Any) -> dict[str, Any]:
    """One ``trials.csv`` row of a finished Tune result (``steps_to_threshold`` empty where not reached)."""
    spec = TrialSpec(**result.config["trial"])
    metrics = result.metrics
    row = {
        "trial_id": metrics["trial_id"],
        "algo": spec.algo,
        "env": spec.env,
        "preconditioner": spec.preset,
        "seed": spec.seed,
        "hyperparams": json.dumps({**spec.hyperparams, **result.config.get("search", {})}, sort_keys=True),
    }
    row |= {key: metrics[key] for key in CSV_COLUMNS if key not in row}
    if row["steps_to_threshold"] < 0:
        row["steps_to_threshold"] = None
    return row


def cell_row(result: Any) -> dict[str, Any]:
    """One ``trials.csv`` row of a finished exponent cell (:data:`CELL_COLUMNS`; lists and the walk as JSON), with
    the cell itself under ``"cell"`` (for the report, not written to the CSV)."""
    from lagrl.exponent import cell_from_json

    cell = cell_from_json(result.metrics["cell"])
    row: dict[str, Any] = {"trial_id": result.metrics["trial_id"], "cell": cell}
    for key in CELL_COLUMNS[1:-2]:
        value = cell[key]
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return row | {"wall_seconds": result.metrics["wall_seconds"], "node": result.metrics["node"]}


def write_trials(rows: list[dict[str, Any]], path: Path, cells: bool = False) -> None:
    """``rows`` as CSV (:data:`CSV_COLUMNS`, or :data:`CELL_COLUMNS` for an experiment's ``cells``), written whole
    or not at all (:func:`~lagrl.atomic.atomic_open`)."""
    if cells:
        columns, order = CELL_COLUMNS, lambda row: (row["model"], row["beta2"], row["rho"])
    else:
        columns, order = CSV_COLUMNS, lambda row: (row["env"], row["algo"], row["preconditioner"], row["seed"])
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=order))
