"""TrajectoryWriter: scalars read back with TensorBoard's own EventAccumulator, also after errors."""

import signal
import subprocess
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lagrl.trajectory import TrajectoryWriter


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
