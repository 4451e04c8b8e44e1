"""Snakemake and DVC together: the generated dvc.yaml, DVC runs of a tiny DAG, `ncp sync`, overlays, profiles.

The DVC tests share one temporary git + DVC repository (module scope) and run in file order: a full
`dvc repro`, a no-op repro, a params change run by Snakemake and recorded with `dvc commit`, a fresh
clone brought in line by `ncp sync`, the report, and a `dvc exp run -S`.
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_copy import REPO, copy_workflow, job_counts

from ncp.params import load_params_files, num_latent_groups
from ncp.workflow.export_dvc import JobSpec, main_export, render_dvc_yaml, workflow_graph
from ncp.workflow.sync import main_sync, restored_jobs, touch_command

needs_tools = pytest.mark.skipif(
    not (shutil.which("dvc") and shutil.which("git") and shutil.which("snakemake")),
    reason="dvc, git and snakemake must be on PATH",
)

# The micro params cut further: one latent scale with two groups, SIR only, CPU (Snakemake then never
# imports torch to look for a GPU), no sub-experiments or Table 8 sweep. The DAG has 15 jobs: 2 NCE
# classifiers, 2 samplers, Fig. 4 and Tables 6 and 9.
NANO = """\
experiment: nano
run: {device: cpu}
paper: {tables: [table6, table9], experiments: {table2: [], table7: []}, table8: {sir_num_proposals: [], ld_num_steps: []}}
vae:
  nvae:
    num_latent_scales: 1
    num_groups_per_scale: 2
sample:
  methods: [sir]
"""
CONFIGFILES = ["params/test/micro.yaml", "params/test/nano.yaml"]
STAGES = {
    "prepare_data_nano",
    "train_vae_nano",
    "fid_features_nano",
    "cache_latents_nano",
    "sample_nano_base",
    "train_nce_nano_0",
    "train_nce_nano_1",
    "sample_nano_sir",
    "evaluate_nll_nano",
    "evaluate_fid_nano",
    "evaluate_mmd_nano",
    "nearest_neighbours_nano",
    "tables",
    "table6",
    "table9",
}
AFTER_NCE = {
    "train_nce_nano_0",
    "train_nce_nano_1",
    "sample_nano_sir",
    "evaluate_nll_nano",
    "evaluate_fid_nano",
    "evaluate_mmd_nano",
    "nearest_neighbours_nano",
    "tables",
    "table6",
}
# Table 9 reads only mmd.json, which a small classifier change can leave byte-identical (SIR then picks
# the same proposals), so DVC may or may not see it changed.
MAYBE_AFTER_NCE = {"table9"}


def _run(args, cwd: Path, env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _changed_stages(repo: Path, env: dict) -> set[str]:
    return set(json.loads(_run(["dvc", "status", "--json"], repo, env).stdout or "{}"))


# ---------------------------------------------------------------------------------------------
# The committed files


def test_committed_dvc_yaml_is_the_generated_one(tmp_path, capsys):
    copy_workflow(tmp_path, link_code=True)
    generated = render_dvc_yaml((), tmp_path)
    assert generated == (REPO / "dvc.yaml").read_text(), (
        "dvc.yaml is stale: run `ncp export-dvc --out dvc.yaml`"
    )
    # `--check` is what CI can run: silent when current, a diff and status 1 when not
    (tmp_path / "dvc.yaml").write_text(generated.replace("--allowed-rules tables", "--allowed-rules tabels"))
    assert main_export(["--check", "--directory", str(tmp_path)]) == 1
    assert (
        "+    cmd: snakemake --cores all --rerun-incomplete --allowed-rules tables" in capsys.readouterr().out
    )
    (tmp_path / "dvc.yaml").write_text(generated)
    assert main_export(["--check", "--directory", str(tmp_path)]) == 0


def test_dvc_yaml_has_one_stage_per_snakemake_job():
    text = (REPO / "dvc.yaml").read_text()
    assert (
        text.startswith("# Generated from the Snakemake job graph")
        and "ncp export-dvc --out dvc.yaml" in text
    )
    assert not re.search(r"[&*]id\d", text), "YAML anchors or aliases"
    stages = yaml.safe_load(text)["stages"]
    # params/default.yaml: 2 scales x 2 groups; Table 2's MLP VAE (1 group) and Table 7's 2-group NVAE
    assert sorted(name for name in stages if name.startswith("train_nce_")) == [
        "train_nce_default-table2-table2_cpu_0",
        "train_nce_default-table7-groups_2_0",
        "train_nce_default-table7-groups_2_1",
        "train_nce_default_0",
        "train_nce_default_1",
        "train_nce_default_2",
        "train_nce_default_3",
    ]
    # samplers base and SIR, and Table 8's settings (fewer images each, so SIR M=50 is drawn again)
    assert {name for name in stages if name.startswith("sample_default_")} == {
        "sample_default_base",
        "sample_default_sir",
        "sample_default_sir_m5",
        "sample_default_sir_m50",
        "sample_default_sir_m200",
        "sample_default_ld_t5",
        "sample_default_ld_t25",
    }
    assert stages["sample_default_sir_m200"]["cmd"] == (
        "snakemake --cores all --rerun-incomplete --allowed-rules sample --force "
        "results/default/samples/sir_m200.pt results/default/figures/samples_sir_m200.png"
    )
    nce = stages["train_nce_default_2"]
    assert shlex.split(nce["cmd"]) == [
        "snakemake",
        "--cores",
        "all",
        "--rerun-incomplete",
        "--allowed-rules",
        "train_nce",
        "--force",
        "results/default/nce/group_2.pt",
        "results/default/metrics/nce/group_2.json",
    ]
    assert nce["deps"][0] == "results/default/latents" and "ncp/train_nce.py" in nce["deps"]
    assert nce["params"] == [
        {"params/default.yaml": ["nce", "seed"]}
    ]  # STAGE_SECTIONS["train-nce"]: no `run` (device, threads, ...), so changing it reruns nothing
    assert nce["outs"] == ["results/default/nce/group_2.pt"]
    assert nce["metrics"] == ["results/default/metrics/nce/group_2.json"]
    # a sub-experiment's stages depend on its overlay file; its data split is the default's
    sub_vae = stages["train_vae_default-table7-groups_2"]
    assert sub_vae["deps"][:2] == ["results/default/data/train.pt", "params/ablations/groups_2.yaml"]
    assert stages["tables"]["params"] == [
        {"params/default.yaml": ["evaluate", "experiment", "paper", "sample"]}
    ]
    assert "results/default/figures/fig5_loss.png" in stages["tables"]["outs"]
    assert set(stages["table8"]["deps"]) >= {
        f"results/default/metrics/fid/{v}.json" for v in ("sir_m5", "sir_m50", "sir_m200", "ld_t5", "ld_t25")
    }
    assert stages["table2"]["deps"][0] == "results/default/table2/table2_cpu/metrics/nll.json"


def test_dvc_config_opts_out_of_telemetry():
    config = (REPO / ".dvc/config").read_text()
    assert re.search(r"analytics\s*=\s*false", config) and re.search(r"check_update\s*=\s*false", config)
    ignored = (REPO / ".dvcignore").read_text().split()
    assert ".snakemake/" in ignored and "results/*/work/" in ignored


def test_overlay_files_are_listed_per_file_and_repeated_in_commands(tmp_path):
    copy_workflow(tmp_path, link_code=True)
    (tmp_path / "params/test/nano.yaml").write_text(NANO)
    stages = yaml.safe_load(render_dvc_yaml(CONFIGFILES, tmp_path))["stages"]
    assert set(stages) == STAGES
    nce = stages["train_nce_nano_1"]
    assert nce["params"] == [
        {"params/default.yaml": ["nce", "seed"]},
        {"params/test/micro.yaml": ["nce"]},
    ]  # nano.yaml sets only `run` among this stage's keys: not a param
    assert shlex.split(nce["cmd"])[3:6] == ["--configfile", *CONFIGFILES]
    # a pipeline in a subfolder runs its stages from the repository root
    sub = yaml.safe_load(render_dvc_yaml(CONFIGFILES, tmp_path, out="pipelines/nano/dvc.yaml"))["stages"]
    assert sub["tables"]["wdir"] == "../.." and sub["tables"]["deps"] == stages["tables"]["deps"]
    with pytest.raises(ValueError, match="dvc.yaml"):
        render_dvc_yaml(CONFIGFILES, tmp_path, out="pipeline.yaml")


def test_sync_touches_only_jobs_whose_outputs_and_upstream_are_all_present(tmp_path):
    def job(rule, inputs, outputs):
        return JobSpec(
            rule=rule, wildcards=(), inputs=tuple(inputs), outputs=tuple(outputs), sections=(), description=""
        )

    jobs = [
        job("a", ["code.py"], ["a.pt"]),
        job("b", ["a.pt"], ["b.pt", "b.json"]),
        job("c", ["b.pt"], ["c.pt"]),
        job("d", ["a.pt"], ["d.pt"]),
    ]
    for name in ("a.pt", "b.pt", "c.pt", "d.pt"):  # b.json was never pulled
        (tmp_path / name).write_text(name)
    done, missing = restored_jobs(jobs, tmp_path)
    assert [j.rule for j in done] == ["a", "d"] and missing == ["b.json"]
    assert touch_command(["x.yaml"], ["a.pt"]) == [
        "snakemake",
        "--configfile",
        "x.yaml",
        "--touch",
        "--forceall",
        "--cores",
        "1",
        "a.pt",
    ]


# ---------------------------------------------------------------------------------------------
# Ablation overlays

ABLATION_BASES = {"": "params/default.yaml", "celeba64": "params/paper/celeba64_nvae_30groups.yaml"}


def _ablation_files():
    return sorted((REPO / "params/ablations").rglob("*.yaml"))


def test_ablation_overlays_name_their_experiments_and_set_the_swept_value():
    names = []
    for path in _ablation_files():
        folder = path.parent.relative_to(REPO / "params/ablations").as_posix().replace(".", "")
        base = REPO / ABLATION_BASES[folder]
        params = load_params_files([REPO / "params/default.yaml", base, path])
        expected = f"{folder}_{path.stem}" if folder else path.stem
        assert params["experiment"] == expected, path
        names.append(expected)
        kind, value = path.stem.rsplit("_", 1)
        if kind == "mmd_samples":
            assert params["sample"]["num_samples"] == params["evaluate"]["mmd"]["num_samples"] == int(value)
        else:
            assert kind == "groups" and num_latent_groups(params["vae"]) == int(value), path
    assert len(names) == len(set(names)) and len(names) == 7
    assert {p.stem for p in _ablation_files()} >= {"groups_2", "groups_6", "groups_15", "groups_30"}
    # Table 8's SIR / LD settings are no overlays (each retrained three VAEs): `snakemake table8` sweeps
    # them from the run's own VAE and classifiers (paper.table8 of the default and the CelebA-64 config)
    assert not [p for p in _ablation_files() if p.stem.startswith(("sir_proposals", "ld_steps"))]


def test_groups_overlay_gives_one_nce_job_per_group(tmp_path):
    copy_workflow(tmp_path, link_code=True)
    graph = workflow_graph(["params/default.yaml", "params/ablations/groups_15.yaml"], tmp_path)
    assert sum(job.rule == "train_nce" for job in graph.jobs) == 15
    assert all(out.startswith("results/groups_15/") for job in graph.jobs for out in job.outputs)
    assert graph.params_files == ("params/default.yaml", "params/ablations/groups_15.yaml")


# ---------------------------------------------------------------------------------------------
# Profiles and lint


def test_slurm_profile_passes_a_dry_run(tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    copy_workflow(tmp_path, link_code=True)
    (tmp_path / "profiles").symlink_to("workflow/profiles")  # as in a clone: the default profile applies too
    result = subprocess.run(
        ["snakemake", "-n", "--profile", "workflow/profiles/slurm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = result.stdout.split("\n\n")
    # the main run's stage 1 (the dry run lists jobs in no fixed order; Table 2's CPU-only one asks for no GPU)
    train_vae = next(
        block for block in jobs if "rule train_vae:" in block and "output: results/default/vae/" in block
    )
    assert "gpu=1" in train_vae and "runtime=2880" in train_vae
    cpu_only = next(block for block in jobs if "rule train_vae:" in block and "table2_cpu" in block)
    assert "gpu=1" not in cpu_only  # gpu=0: no GPU asked of SLURM
    # a CPU-only job asks for no GPU (evaluate_mmd now encodes test images with the VAE, so it asks for one)
    neighbours = next(block for block in jobs if "rule nearest_neighbours:" in block)
    assert "gpu=" not in neighbours


def test_default_profile_is_picked_up_from_the_repository_root(tmp_path):
    # Snakemake looks for profiles/default beside the Snakefile (the root one); `profiles` links to
    # workflow/profiles, where the snakemake-workflows layout keeps them.
    assert (REPO / "profiles").is_symlink() and (REPO / "profiles/default/config.yaml").is_file()
    copy_workflow(tmp_path, link_code=True)
    (tmp_path / "profiles").symlink_to("workflow/profiles")
    result = subprocess.run(
        ["snakemake", "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using workflow specific profile profiles/default" in result.stdout + result.stderr
    assert "ncp prepare-data --run-json" in result.stdout  # the profile's printshellcmds: true


def test_snakemake_lint_passes(tmp_path):
    copy_workflow(tmp_path, link_code=True)
    result = subprocess.run(
        ["snakemake", "--lint"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# ---------------------------------------------------------------------------------------------
# DVC runs of the nano DAG in one git repository


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvc")
    repo = root / "repo"
    repo.mkdir()
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(root / "dvc-site"),
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.org",
    )
    copy_workflow(repo, link_code=False)
    (repo / "params/test/nano.yaml").write_text(NANO)
    (repo / ".gitignore").write_text("__pycache__/\n.snakemake/\n/results/*/\n")
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "test"],
        ["git", "config", "user.email", "test@example.org"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "core.check_update", "false"],
    ):
        _run(command, repo, env)
    (repo / "dvc.yaml").write_text(render_dvc_yaml(CONFIGFILES, repo))
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "nano experiment"], repo, env)
    return repo, env


@needs_tools
@pytest.mark.slow
def test_repro_runs_every_stage_after_its_inputs_then_nothing(dvc_repo):
    repo, env = dvc_repo
    ran = _ran_stages(_run(["dvc", "repro"], repo, env).stdout)
    assert sorted(ran) == sorted(STAGES)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    producer = {
        out: name
        for name, stage in stages.items()
        for out in stage.get("outs", []) + stage.get("metrics", [])
    }
    for name in ran:
        for dep in stages[name]["deps"]:
            if dep in producer:
                assert ran.index(producer[dep]) < ran.index(name), (producer[dep], name)
    again = _run(["dvc", "repro"], repo, env).stdout
    assert _ran_stages(again) == [] and "Data and pipelines are up to date" in again
    # Snakemake agrees: each stage ran through Snakemake, which recorded it
    assert "Nothing to be done" in _run(["snakemake", "-n", "--configfile", *CONFIGFILES], repo, env).stdout


@needs_tools
@pytest.mark.slow
def test_nce_param_change_reruns_nce_sampling_evaluation_and_tables_only(dvc_repo):
    repo, env = dvc_repo
    micro = repo / "params/test/micro.yaml"
    text = micro.read_text()
    assert re.search(r"\nnce:\n(  .*\n)*  epochs: 2\n", text)
    micro.write_text(re.sub(r"(\nnce:\n(?:  .*\n)*?  epochs: )2\n", r"\g<1>3\n", text))
    assert _changed_stages(repo, env) == {
        "train_nce_nano_0",
        "train_nce_nano_1",
    }  # the stages that read `nce`
    # Snakemake runs the DAG (as on a cluster), then DVC records the results
    result = _run(["snakemake", "--cores", "2", "--configfile", *CONFIGFILES], repo, env)
    counts = job_counts(result.stdout + result.stderr)
    assert counts == {
        "train_nce": 2,
        "sample": 1,
        "evaluate_nll": 1,
        "evaluate_fid": 1,
        "evaluate_mmd": 1,
        "nearest_neighbours": 1,
        "tables": 1,
        "table6": 1,
        "table9": 1,
        "default": 1,
        "total": 11,
    }
    assert AFTER_NCE <= _changed_stages(repo, env) <= AFTER_NCE | MAYBE_AFTER_NCE
    _run(["dvc", "commit", "-f"], repo, env)
    assert _changed_stages(repo, env) == set()
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "nce epochs 3"], repo, env)


@needs_tools
@pytest.mark.slow
def test_sync_makes_snakemake_agree_after_clone_and_checkout(dvc_repo, tmp_path):
    repo, env = dvc_repo
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    _run(["dvc", "cache", "dir", "--local", str(repo / ".dvc/cache")], clone, env)
    _run(["dvc", "checkout"], clone, env)
    # the checkpoint, restored last, looks newer than what was computed from it
    checkpoint = clone / "results/nano/vae/checkpoint.pt"
    os.utime(checkpoint, (checkpoint.stat().st_atime + 3600, checkpoint.stat().st_mtime + 3600))
    before = _run(["snakemake", "-n", "--configfile", *CONFIGFILES], clone, env).stdout
    assert "Nothing to be done" not in before and "train_nce" in before
    assert main_sync(["--configfile", *CONFIGFILES, "--directory", str(clone)]) == 0
    assert "Nothing to be done" in _run(["snakemake", "-n", "--configfile", *CONFIGFILES], clone, env).stdout
    assert _changed_stages(clone, env) == set()


@needs_tools
@pytest.mark.slow
def test_report_holds_tables_sample_grids_and_figures(dvc_repo):
    repo, env = dvc_repo
    _run(["snakemake", "--report", "report.html", "--configfile", *CONFIGFILES], repo, env)
    html = (repo / "report.html").read_text()
    for name in (
        "samples_base.png",
        "samples_sir.png",
        "fig5_loss.png",
        "fig5_ess.png",
        "table6.md",
        "table9.md",
    ):
        assert name in html, name
    assert "NCP-VAE, SIR" in html  # results.md's rows, included in its caption
    (repo / "report.html").unlink()


@needs_tools
@pytest.mark.slow
def test_exp_run_with_a_set_param_reruns_only_the_stages_reading_it(dvc_repo):
    repo, env = dvc_repo
    # `paper` is read by the table stages alone; --temp runs in a copy and leaves the workspace as it is
    before = (repo / "params/default.yaml").read_text()
    result = _run(
        ["dvc", "exp", "run", "--temp", "-n", "relabel", "-S", "params/default.yaml:paper.row=relabelled"],
        repo,
        env,
    )
    assert sorted(_ran_stages(result.stdout + result.stderr)) == ["table6", "table9", "tables"]
    assert (repo / "params/default.yaml").read_text() == before
    experiments = json.loads(_run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert "relabel" in json.dumps(experiments) and "relabelled" in json.dumps(experiments)
