"""The experiments' --quick runs: each writes its JSON (claim, verdict, settings, numbers) and its plot, and
its numbers agree with the closed forms they are measured against."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(name: str, out: Path) -> dict:
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


def test_planning_quick(tmp_path):
    report = run_quick("planning", tmp_path)
    noise = report["settings"]["noise_var"]
    for block in report["numbers"]:
        p = block["p"]
        for row in block["rows"]:
            assert row["samples_needed"] == math.ceil(p * noise / (row["target"] - noise) - 1e-9)
            # No path beats the bound; the planned path stays within the block the target falls in.
            assert row["samples_needed"] <= row["planned"] <= p * math.ceil(row["samples_needed"] / p)
            assert row["greedy"] >= row["samples_needed"] and row["random_min"] >= row["samples_needed"]


def test_unequal_information_quick(tmp_path):
    report = run_quick("unequal_information", tmp_path)
    for row in report["numbers"]:
        bound = row["bound"]
        assert bound == pytest.approx(report["settings"]["base_noise_var"] + row["p"] / row["information_time"])
        for name in ("planned", "online", "uniform"):  # no allocation beats the information-time bound
            assert row[name]["closed_form"] >= bound - 1e-12
            assert abs(row[name]["monte_carlo"] - row[name]["closed_form"]) <= 4 * row[name]["standard_error"]
        assert abs(row["margin_monte_carlo"] - row["margin_closed_form"]) <= 4 * row["margin_standard_error"]
