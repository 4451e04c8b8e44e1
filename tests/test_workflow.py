"""The Snakemake DAG: dry runs of the shipped params, and the micro params end to end."""

import json
import math
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch

from workflow_copy import copy_workflow, job_counts



def _snakemake(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)



def test_dry_run_has_one_nce_job_per_latent_group(tmp_path):
    copy_workflow(tmp_path)
    result = _snakemake(tmp_path, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train_nce"] == 4  # params/default.yaml: 2 scales x 2 groups
    assert counts["sample"] == 2  # base prior and SIR
    assert counts["train_vae"] == 1 and counts["tables"] == 1


def test_bad_params_stop_the_workflow_before_any_job(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "bad.yaml").write_text("nce:\n  epochs: 0\n")
    result = _snakemake(tmp_path, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert "epochs" in result.stdout + result.stderr


@pytest.mark.slow
def test_micro_params_run_end_to_end(tmp_path):
    copy_workflow(tmp_path)
    result = _snakemake(tmp_path, "--cores", "2", "--configfile", "params/test/micro.yaml")
    logs = "\n".join(p.read_text() for p in (tmp_path / "results/micro/logs").glob("*.log")) if (tmp_path / "results/micro/logs").exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + logs[-3000:]
    out = tmp_path / "results/micro"
    summary = json.loads((out / "metrics/summary.json").read_text())
    for key in ("base", "ncp_sir", "ncp_ld", "recon"):
        assert math.isfinite(summary["fid"][key]) and summary["fid"][key] >= 0
    assert summary["fid"]["num_samples"] == 64
    assert math.isfinite(summary["nll"]["base"]) and math.isfinite(summary["nll"]["ncp"])
    assert summary["nll"]["iw_samples"] == 4
    assert [g["group"] for g in summary["mmd"]["per_group"]] == [0, 1, 2, 3]
    assert [g["group"] for g in summary["nce"]["per_group"]] == [0, 1, 2, 3]
    for group in summary["nce"]["per_group"]:
        assert 0 < group["final_loss"] < 2.5
    samples = torch.load(out / "samples/sir.pt", weights_only=True)
    assert samples["images"].shape == (64, 1, 32, 32) and samples["images"].dtype == torch.uint8
    for name in ("tables/results.md", "tables/table6.md", "tables/table9.md", "figures/samples_base.png",
                 "figures/samples_sir.png", "figures/samples_ld.png", "figures/fig5_loss.png", "vae/checkpoint.pt"):
        assert (out / name).is_file(), name
    # The resume state of stage 1 is removed once the final checkpoint exists.
    assert not (out / "work/vae/resume.pt").exists()
    # The per-group NCE jobs run side by side with --cores 2: rerun just them (each logs when it started
    # and ended) and check that two of them overlap in time.
    rerun = _snakemake(tmp_path, "--cores", "2", "--configfile", "params/test/micro.yaml",
                       "--forcerun", "train_nce", "--until", "train_nce")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "rule sample" not in rerun.stdout + rerun.stderr  # --until stops before the downstream jobs
    spans = []
    for log in sorted((out / "logs").glob("train_nce_*.log")):
        stamps = re.findall(r"(?:started|finished) at (\S+)", log.read_text())
        spans.append(tuple(datetime.fromisoformat(s) for s in stamps))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
