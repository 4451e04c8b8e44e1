"""Smoke test of `ncp benchmark --quick`: the JSON has every section and its numbers agree.

Not a speed test (speed targets are the benchmark's own output); this checks the bookkeeping, which
would be wrong if, e.g., proposals/s stopped being M x images/s or a section went missing.
"""

from __future__ import annotations

import json

import pytest

from ncp.cli import main


@pytest.mark.slow
def test_quick_benchmark_writes_consistent_positive_figures(tmp_path):
    assert main(["benchmark", "--quick", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "cpu.json").read_text())
    assert (tmp_path / "cpu.md").read_text().count("| SIR M |") == 1
    sir = record["sir"]
    assert {(r["M"], r["batch"]) for r in sir} == {(5, 1), (5, 2), (20, 1), (20, 2)}
    for r in sir:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] < r["all_runs_s"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["proposals_per_s"] == pytest.approx(r["M"] * r["images_per_s"])
        assert r["peak_mem_mb"] > 50 and 0 < r["flop_fraction"] and 0 < r["classifier_time_share"] <= 1
    # more proposals per image cost more classifier work: FLOPs scale with M x batch
    by_key = {(r["M"], r["batch"]): r for r in sir}
    assert by_key[(20, 2)]["classifier_gflop"] == pytest.approx(8 * by_key[(5, 1)]["classifier_gflop"])
    for r in record["ld"]:
        assert r["iterations_per_s"] == pytest.approx(r["iterations"] / r["median_s"])
    assert [r["model"] for r in record["stage1"]] == ["default"] and record["stage1"][0]["images_per_s"] > 0
    assert len(record["nce"]) == record["nce_jobs"]["groups"] and all(
        r["pairs_per_s"] > 0 for r in record["nce"]
    )
    jobs = record["nce_jobs"]
    assert record["nce_parallel_efficiency"] == pytest.approx(
        jobs["jobs_span_cores_2_s"] / jobs["jobs_span_cores_1_s"]
    )
    for cores in (1, 2):  # the jobs ran inside the Snakemake command, and took time
        assert 0 < jobs[f"jobs_span_cores_{cores}_s"] < jobs[f"wall_cores_{cores}_s"]
    assert record["cache"]["images_per_s"] > 0 and record["matmul_peak_gflops"] > 0
