"""The experiments' --quick runs: each writes its JSON (claim, verdict, settings, numbers) and its plot, and
its numbers agree with the closed forms they are measured against."""

import math

import pytest

from helpers import run_quick


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
