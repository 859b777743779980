"""``lagrl train`` and ``lagrl evaluate``: hyperparameters, TensorBoard tags, checkpoints, Ctrl-C and NaN."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import default_sigint
from lagrl.agents import LagrangianA2C, LagrangianPPO
from lagrl.agents.training import build_model, evaluate, evaluation_env, linear_schedule, load_hyperparams, plan_run
from lagrl.cli import main
from lagrl.trajectory import TAGS

NAN_AFTER = 200  # environment steps before the test env's reward turns NaN


class NaNRewardEnv(gymnasium.Env):
    """Reward 1 per step for the first ``NAN_AFTER`` steps of the env's life, NaN afterwards."""

    metadata = {"render_modes": ["rgb_array"]}
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        self.steps += 1
        reward = 1.0 if self.steps <= NAN_AFTER else math.nan
        return self.observation_space.sample(), reward, False, self.steps % 16 == 0, {}


gymnasium.register("lagrl-test/NaNReward-v0", entry_point=NaNRewardEnv)


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    """Every scalar tag in the run folder's event files, with the steps of its events.

    (The trajectory callback's closing HParams summary adds a step-0 event to the lagrangian tags.)
    """
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A 2k-step LagrangianPPO run on CartPole-v1 with the zoo's hyperparameters (8 envs)."""
    directory = tmp_path_factory.mktemp("cartpole")
    argv = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--timesteps", "2000", "--no-progress"]
    argv += ["--logdir", str(directory / "runs"), "--save", str(directory / "model")]
    return directory, main(argv)


def test_train_logs_every_lagrangian_tag_beside_sb3s(cartpole_run, capsys):
    directory, code = cartpole_run
    assert code == 0
    tags = scalar_steps(directory / "runs" / "PPO_1")
    assert set(TAGS) <= set(tags), f"missing {set(TAGS) - set(tags)}"
    updates = list(range(256, 2049, 256))  # one per update: 8 envs × 32 steps per rollout
    assert [step for step in tags["lagrangian/potential"] if step > 0] == updates
    assert "train/loss" in tags and "rollout/ep_rew_mean" in tags


def test_save_adds_zip_and_evaluate_scores_the_model(cartpole_run, capsys):
    directory, _ = cartpole_run
    model = LagrangianPPO.load(directory / "model.zip")
    assert model.num_timesteps == 2048 and model.lagrl_run["env_id"] == "CartPole-v1"
    assert not list(directory.glob(".*.tmp")), "a temporary checkpoint was left behind"
    report = directory / "eval.json"
    code = main(["evaluate", str(directory / "model"), "--episodes", "3", "--json", str(report)])
    assert code == 0
    assert "LagrangianPPO on CartPole-v1: return" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["episodes"] == 3 and result["mean_return"] >= 8 and result["std_return"] >= 0


def test_cartpole_ppo_yaml_is_the_zoos():
    zoo = dict(n_envs=8, n_timesteps=1e5, policy="MlpPolicy", n_steps=32, batch_size=256, gae_lambda=0.8)
    zoo |= dict(gamma=0.98, n_epochs=20, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2)  # both lin_ schedules
    entry = load_hyperparams("ppo", "CartPole-v1")
    for key in ("learning_rate", "clip_range"):
        entry[key] = linear_schedule(entry[key])(1.0)
    assert entry == zoo
    plan = plan_run("ppo", "CartPole-v1", {})
    assert (plan.n_envs, plan.timesteps) == (8, 100_000)
    assert plan.kwargs["learning_rate"](0.25) == pytest.approx(2.5e-4)  # linear to 0 over progress_remaining
    assert plan.kwargs["clip_range"](0.0) == 0.0


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "FrozenLake-v1", "LunarLander-v3", "Pendulum-v1"])
def test_every_shipped_entry_is_valid(algo, env_id):
    assert load_hyperparams(algo, env_id) is not None
    assert plan_run(algo, env_id, {}).source == f"hyperparams/{algo}.yml: {env_id}"


def test_overrides_and_flags_reach_the_model(tmp_path, capsys):
    path = tmp_path / "model.zip"
    argv = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--timesteps", "32", "--n-envs", "2", "--seed", "3"]
    argv += ["--preconditioner", "rmsprop", "--save", str(path), "--no-progress"]
    assert main([*argv, "--hyperparams", "n_steps=16", "batch_size=32", "learning_rate=lin_3e-4"]) == 0
    assert f"model saved to {path}" in capsys.readouterr().out
    model = LagrangianPPO.load(path)
    assert (model.n_steps, model.batch_size, model.n_envs, model.seed) == (16, 32, 2, 3)
    assert model.preconditioner == "rmsprop" and model.learning_rate(1.0) == pytest.approx(3e-4)


def test_env_without_an_entry_uses_the_agents_defaults(tmp_path, capsys):
    argv = ["train", "--algo", "ppo", "--env", "MountainCarContinuous-v0", "--timesteps", "64"]
    argv += ["--save", str(tmp_path / "m")]
    assert main([*argv, "--no-progress", "--hyperparams", "n_steps=64", "batch_size=64", "n_epochs=1"]) == 0
    assert "no entry for MountainCarContinuous-v0 in hyperparams/ppo.yml" in capsys.readouterr().out


def test_normalize_statistics_travel_with_the_model(tmp_path, capsys):
    argv = ["train", "--algo", "a2c", "--env", "Acrobot-v1", "--timesteps", "64", "--n-envs", "2", "--no-progress"]
    assert main([*argv, "--save", str(tmp_path / "m.zip")]) == 0
    statistics = LagrangianA2C.load(tmp_path / "m.zip").lagrl_vec_normalize
    assert statistics.obs_rms.count > 64  # updated in place by training, saved in the zip
    assert main(["evaluate", str(tmp_path / "m.zip"), "--episodes", "1", "--stochastic"]) == 0


def test_a_just_trained_normalised_model_evaluates_behind_a_frozen_copy_of_its_statistics():
    plan = plan_run("ppo", "Acrobot-v1", {"n_steps": 32, "batch_size": 32, "n_epochs": 1}, timesteps=64, seed=0)
    model = build_model(plan, "cpu")
    model.learn(plan.timesteps)
    training = model.get_vec_normalize_env()
    assert training is model.lagrl_vec_normalize and training.training  # the zoo normalises Acrobot
    env = evaluation_env(model, seed=7)  # the training wrapper still holds its envs: its copy must be used
    assert env is not training and not env.training and not env.norm_reward
    np.testing.assert_array_equal(env.obs_rms.mean, training.obs_rms.mean)
    count = training.obs_rms.count
    result = evaluate(model, env, 1, deterministic=True)
    assert math.isfinite(result.mean_return)
    assert training.training and training.obs_rms.count == count  # the training statistics neither frozen nor moved
    np.testing.assert_array_equal(evaluation_env(model, seed=8).obs_rms.mean, training.obs_rms.mean)  # again
    model.learn(32, reset_num_timesteps=False)
    assert training.obs_rms.count > count


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--hyperparams", "n_stepz=16"], "unknown hyperparameter(s) ['n_stepz'] for LagrangianPPO; valid keys: ["),
        (["--hyperparams", "learning_rate=lin_x"], "bad schedule 'lin_x'"),
        (["--hyperparams", "normalize=3"], "normalize must be true, false or a mapping"),
        (["--hyperparams", "n_envs=two"], "n_envs must be a positive whole number, got 'two'"),
        (["--env", "NoSuchEnv-v0"], "cannot make env 'NoSuchEnv-v0'"),
    ],
)
def test_bad_settings_exit_2_before_training(tmp_path, capsys, extra, message):
    argv = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--save", str(tmp_path / "m"), *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "training started" not in captured.out
    assert not list(tmp_path.iterdir())


def test_unknown_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algo", "ppo", "--env", "CartPole-v1", "--save", "m", "--preconditioner", "sgd"])
    assert exit_info.value.code == 2
    assert "'adam', 'rmsprop', 'fisher-sqrt', 'natural'" in capsys.readouterr().err


def test_nonfinite_loss_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    path, logdir = tmp_path / "model.zip", tmp_path / "runs"
    argv = ["train", "--algo", "ppo", "--env", "lagrl-test/NaNReward-v0", "--timesteps", "2000", "--n-envs", "1"]
    argv += ["--save", str(path), "--logdir", str(logdir), "--no-progress"]
    assert main([*argv, "--hyperparams", "n_steps=64", "batch_size=64", "n_epochs=2"]) == 1
    captured = capsys.readouterr()
    assert "update 4 of LagrangianPPO" in captured.err  # rollout 4 (steps 193–256) holds the NaN rewards
    assert f"last good checkpoint ({NAN_AFTER} steps) is {path}" in captured.out
    model = LagrangianPPO.load(path)
    assert model.num_timesteps == NAN_AFTER  # the checkpoint at 10% of the run, not overwritten
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    assert scalar_steps(logdir / "PPO_1")["lagrangian/potential"] == [64, 128, 192]  # the good updates, flushed


def test_ctrl_c_saves_the_model_flushes_tensorboard_and_exits_130(tmp_path):
    path, logdir = tmp_path / "model.zip", tmp_path / "runs"
    command = [sys.executable, "-u", "-m", "lagrl.cli", "train", "--algo", "ppo", "--env", "CartPole-v1"]
    command += ["--timesteps", "1000000", "--n-envs", "2", "--save", str(path), "--logdir", str(logdir)]
    process = subprocess.Popen(
        [*command, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=default_sigint,
    )
    try:
        for line in process.stdout:
            if line.startswith("training started"):
                break
        time.sleep(3.0)  # a few updates
        os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert f"model saved to {path}" in out and "Traceback" not in err
    model = LagrangianPPO.load(path)
    assert 0 < model.num_timesteps < 1_000_000
    tags = scalar_steps(logdir / "PPO_1")
    assert tags["lagrangian/potential"] and tags["train/loss"]


def test_tabular_agents_train_and_reject_other_envs(tmp_path, capsys):
    pytest.importorskip("lagrl.agents.tabular")
    for algo in ("planner", "q"):
        argv = ["train", "--algo", algo, "--env", "FrozenLake-v1", "--timesteps", "500", "--no-progress"]
        assert main([*argv, "--save", str(tmp_path / algo)]) == 0, capsys.readouterr().err
        assert main(["evaluate", str(tmp_path / algo), "--episodes", "2"]) == 0
        assert main(["train", "--algo", algo, "--env", "CartPole-v1", "--save", str(tmp_path / "x")]) == 2
        assert "needs Discrete observation and action spaces" in capsys.readouterr().err
        assert main([*argv, "--save", str(tmp_path / "x"), "--preconditioner", "adam"]) == 2
        assert f"--preconditioner does not apply to --algo {algo}" in capsys.readouterr().err


def test_trpo_is_sb3_contribs_trpo_at_the_zoos_settings(tmp_path, capsys):
    contrib = pytest.importorskip("sb3_contrib")
    argv = ["train", "--algo", "trpo", "--env", "CartPole-v1", "--timesteps", "2048", "--seed", "3", "--no-progress"]
    assert main([*argv, "--save", str(tmp_path / "trpo")]) == 0, capsys.readouterr().err
    assert "hyperparams/trpo.yml: CartPole-v1" in capsys.readouterr().out
    # the reference: sb3-contrib's TRPO built by hand with rl-baselines3-zoo's CartPole-v1 entry of trpo.yml
    zoo = dict(n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99, learning_rate=1e-3)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    reference = contrib.TRPO("MlpPolicy", env, n_critic_updates=20, seed=3, device="cpu", **zoo).learn(2048)
    model = contrib.TRPO.load(tmp_path / "trpo.zip", device="cpu")
    assert model.num_timesteps == reference.num_timesteps == 2048
    for name, value in reference.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[name], value), name  # the same run, bit for bit
    assert main(["evaluate", str(tmp_path / "trpo"), "--episodes", "2"]) == 0
    assert "TRPO on CartPole-v1: return" in capsys.readouterr().out
    assert main([*argv, "--save", str(tmp_path / "x"), "--preconditioner", "natural"]) == 2
    assert "--preconditioner does not apply to --algo trpo (TRPO)" in capsys.readouterr().err


def test_trpo_without_sb3_contrib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # import sb3_contrib raises ImportError
    argv = ["train", "--algo", "trpo", "--env", "CartPole-v1", "--save", str(tmp_path / "m"), "--no-progress"]
    assert main(argv) == 2
    assert "sb3-contrib's TRPO, which is not installed: pip install -c constraints.txt -e '.[bench]'" in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())
