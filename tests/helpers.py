"""Shared by the test modules: random inputs (float64, seeded, on any device) and the experiments' quick runs."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch

F64 = torch.float64


def randn(*shape: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Standard normal float64 tensor from its own seeded generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(device)


def random_spd(n: int, seed: int, device, shift: float = 0.5) -> torch.Tensor:
    """A random symmetric positive definite ``n × n`` matrix ``a aᵀ + shift·I``."""
    a = randn(n, n, seed=seed, device=device)
    return a @ a.T + shift * torch.eye(n, dtype=F64, device=device)


ROOT = Path(__file__).resolve().parents[1]


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test interrupts with SIGINT: a shell without job control starts its
    background commands (``cmd &``, nohup, some CI runners) with SIGINT ignored, which their children inherit,
    and Python then never raises ``KeyboardInterrupt``; this gives the child the default disposition back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_quick(name: str, out: Path) -> dict:
    """``experiments/<name>.py --quick --out out``: its report, checked for the shape every experiment shares."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((out / f"{name}.json").read_text())
    assert {"claim", "verdict", "settings", "numbers"} <= set(report)
    assert report["verdict"] in {"holds", "fails", "mixed"}
    assert f"verdict: {report['verdict']}" in completed.stdout
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def torch_adam_path(task, lr: float, betas: tuple[float, float], steps: int, seed: int) -> list[torch.Tensor]:
    """The independent reference of the experiments' Adam rows: ``torch.optim.Adam`` on ``task`` (an
    ``lagrl.generative`` task) from the same initialisation and minibatches, the step size decayed
    linearly to 0 as the runs do; the flat parameters after each step."""
    torch.manual_seed(seed)
    model = task.make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1 - done / steps)
    batches = torch.Generator().manual_seed(seed)
    inputs, targets = task.train
    path = []
    for _ in range(steps):
        index = torch.randint(len(inputs), (task.batch_size,), generator=batches)
        optimizer.zero_grad()
        (-model(inputs[index]).log_prob(targets[index]).mean()).backward()
        optimizer.step()
        schedule.step()
        path.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return path
