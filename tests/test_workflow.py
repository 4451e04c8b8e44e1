"""The Snakemake DAG: dry runs of the shipped params, and the micro params end to end."""

import json
import math
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch
from workflow_copy import copy_workflow, jobs_by_experiment


def _snakemake(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_dry_run_has_one_nce_job_per_latent_group(tmp_path):
    copy_workflow(tmp_path)
    result = _snakemake(tmp_path, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr
    jobs = jobs_by_experiment(result.stdout)
    assert jobs[("train_nce", "default")] == 4  # params/default.yaml: 2 scales x 2 groups
    # base prior and SIR (M=50, 5,000 images), plus Table 8's settings at 500 images each: SIR M=5, 50,
    # 200 and LD 5, 25 steps
    assert jobs[("sample", "default")] == 7 and jobs[("evaluate_fid_setting", "default")] == 5
    assert jobs[("train_vae", "default")] == 1 and jobs[("tables", "")] == 1
    # Table 2's single-group MLP VAE and Table 7's 2-group NVAE run as sub-experiments, with their own
    # stage 1 and classifiers, but reuse the default's data split
    assert (
        jobs[("train_nce", "default/table2/table2_cpu")] == 1
        and jobs[("train_nce", "default/table7/groups_2")] == 2
    )
    assert (
        jobs[("evaluate_nll", "default/table2/table2_cpu")] == 1
        and ("sample", "default/table2/table2_cpu") not in jobs
    )
    assert ("prepare_data", "default/table7/groups_2") not in jobs
    for table in ("table2", "table6", "table7", "table8", "table9"):
        assert jobs[(table, "")] == 1


@pytest.mark.parametrize(
    "bad, key",
    [
        ("nce:\n  epochs: 0\n", "epochs"),
        # a typo in a backbone section (NVAE's default of 10 groups per scale used to take its place)
        ("vae:\n  nvae:\n    num_groups_per_scal: 3\n", "num_groups_per_scal"),
    ],
)
def test_bad_params_stop_the_workflow_before_any_job(tmp_path, bad, key):
    copy_workflow(tmp_path)
    (tmp_path / "bad.yaml").write_text(bad)
    result = _snakemake(tmp_path, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


def _markdown_rows(path: Path) -> list[dict]:
    """The rows of the (first) Markdown table in a file, as dicts of cell text (blank cells -> None)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() or None for cell in line.strip("|").split("|")]
        rows.append({key: _number(value) for key, value in zip(header, cells)})
    return rows


def _number(text):
    try:
        return (
            float(text)
            if text not in (None, "nan") and not text.isdigit()
            else (text if text != "nan" else None)
        )
    except ValueError:
        return text


def _row(rows: list[dict], key: str, value: str) -> dict:
    return next(row for row in rows if row[key] == value)


@pytest.mark.slow
def test_micro_params_run_end_to_end(tmp_path):
    copy_workflow(tmp_path)
    result = _snakemake(tmp_path, "--cores", "2", "--configfile", "params/test/micro.yaml")
    logs = (
        "\n".join(p.read_text() for p in (tmp_path / "results/micro/logs").glob("*.log"))
        if (tmp_path / "results/micro/logs").exists()
        else ""
    )
    assert result.returncode == 0, result.stderr[-3000:] + logs[-3000:]
    out = tmp_path / "results/micro"
    summary = json.loads((out / "metrics/summary.json").read_text())
    for key in ("base", "ncp_sir", "ncp_ld", "recon"):
        assert math.isfinite(summary["fid"][key]) and summary["fid"][key] >= 0
    assert summary["fid"]["num_samples"] == 64
    assert math.isfinite(summary["nll"]["base"]) and math.isfinite(summary["nll"]["ncp"])
    assert summary["nll"]["iw_samples"] == 4
    assert [g["group"] for g in summary["mmd"]["per_group"]] == [0, 1, 2, 3]
    mmd = json.loads((out / "metrics/mmd.json").read_text())
    assert mmd["q_source"].startswith("test split") and mmd["num_q"] == 128  # Table 9's q is held out
    assert {"fid.json", "mmd.json", "nll.json", "summary.json"} <= set(summary["provenance"])
    assert [g["group"] for g in summary["nce"]["per_group"]] == [0, 1, 2, 3]
    for group in summary["nce"]["per_group"]:
        assert 0 < group["final_loss"] < 2.5
    samples = torch.load(out / "samples/sir.pt", weights_only=True)
    assert samples["images"].shape == (64, 1, 32, 32) and samples["images"].dtype == torch.uint8
    for name in (
        "tables/results.md",
        "tables/table6.md",
        "tables/table9.md",
        "figures/samples_base.png",
        "figures/samples_sir.png",
        "figures/samples_ld.png",
        "figures/fig5_loss.png",
        "vae/checkpoint.pt",
        "figures/fig4_neighbours.png",
        "tables/table7.tex",
        "tables/table8.tex",
    ):
        assert (out / name).is_file(), name
    # Table 7: this run's 4 groups and the 2-group sub-experiment, each with both FIDs
    fid_2 = json.loads((out / "table7/groups_2/metrics/fid.json").read_text())["methods"]
    table7 = _markdown_rows(out / "tables/table7.md")
    assert _row(table7, "groups", "2")["ours NVAE"] == pytest.approx(fid_2["base"]["fid"], rel=1e-3)
    assert _row(table7, "groups", "4")["ours NCP-VAE"] == pytest.approx(summary["fid"]["ncp_sir"], rel=1e-3)
    # Table 8: SIR with M=2 and this run's own M=8 and LD 3 steps (sampled once), timed and scored
    table8 = _markdown_rows(out / "tables/table8.md")
    ours = {(row["method"], row["steps"]): row for row in table8 if row["ours FID"] is not None}
    assert set(ours) == {("sir", "2"), ("sir", "8"), ("ld", "3")}
    assert ours[("sir", "8")]["ours FID"] == pytest.approx(summary["fid"]["ncp_sir"], rel=1e-3)
    sir_m2 = torch.load(out / "samples/sir_m2.pt", weights_only=True)
    assert sir_m2["setting"] == {"num_proposals": 2} and sir_m2["time_10_s"] > 0
    # The resume state of stage 1 and of every NCE job is removed once their outputs exist.
    assert not (out / "work/vae/resume.pt").exists()
    assert (out / "latents/group_3/index.json").is_file() and not list((out / "work").glob("nce_group_*"))
    # The per-group NCE jobs run side by side with --cores 2: rerun just them (each logs when it started
    # and ended) and check that two of them overlap in time.
    rerun = _snakemake(
        tmp_path,
        "--cores",
        "2",
        "--configfile",
        "params/test/micro.yaml",
        "--forcerun",
        "train_nce",
        "--until",
        "train_nce",
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "rule sample" not in rerun.stdout + rerun.stderr  # --until stops before the downstream jobs
    spans = []
    for log in sorted((out / "logs").glob("train_nce_*.log")):
        stamps = re.findall(r"(?:started|finished) at (\S+)", log.read_text())
        spans.append(tuple(datetime.fromisoformat(s) for s in stamps))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
