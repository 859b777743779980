"""What every experiment on one of the paper's claims shares: its command line and its report.

Each experiment takes ``--quick`` (CI-sized), ``--out DIR``, ``--seed`` and ``--device``, writes
``DIR/<name>.json`` (``claim``, ``verdict`` — ``"holds"``, ``"fails"`` or ``"mixed"`` — ``settings`` and
``numbers``) atomically beside its PNG plot (matplotlib, Agg backend), and prints the verdict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)
import torch  # noqa: E402

from lagrl.atomic import atomic_open  # noqa: E402

VERDICTS = ("holds", "fails", "mixed")


def parse_arguments(description: str, quick: str) -> argparse.Namespace:
    """The shared command line (``quick`` says what ``--quick`` runs); one torch thread, as on CI."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"CI-sized: {quick}")
    parser.add_argument("--out", type=Path, default=Path("experiments/out"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def save_figure(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    args: argparse.Namespace, name: str, claim: str, verdict: str, settings: dict[str, Any], numbers: Any
) -> None:
    """``DIR/<name>.json`` (written to a temporary file, then renamed), then the verdict on stdout."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    shared = {"quick": args.quick, "seed": args.seed, "device": args.device}
    report = {"claim": claim, "verdict": verdict, "settings": shared | settings, "numbers": numbers}
    with atomic_open(args.out / f"{name}.json") as handle:
        json.dump(report, handle, indent=2)
    print(f"verdict: {verdict} — {claim}")
