"""How jobs execute: run settings that rerun nothing, threads, profiles, code inputs, work directories,
overlays, file modes and abandoned jobs."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from workflow_copy import REPO, copy_workflow, job_counts, jobs_by_experiment

from ncp.config import ExperimentConfig
from ncp.params import STAGE_SECTIONS, ConfigError, resolve_params
from ncp.workflow.code_deps import stage_code


def _snakemake(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


# ---------------------------------------------------------------------------------------------
# The run section


def test_run_settings_are_no_stage_params_and_old_places_say_where_they_went():
    assert all("run" not in sections and "device" not in sections for sections in STAGE_SECTIONS.values())
    with pytest.raises(ConfigError, match=r"vae\.train\.checkpoint_every is now run\.checkpoint_every"):
        resolve_params({"vae": {"train": {"checkpoint_every": 5}}})
    with pytest.raises(ConfigError, match=r"^params: device is now run\.device"):
        resolve_params({"device": "cpu"})
    # the stage modules still read them in place, filled from `run`
    run = {"checkpoint_every": 7, "grid_size": 9, "grid_readjust_passes": 3, "device": "cpu"}
    cfg = ExperimentConfig.from_params({"run": run})
    assert (cfg.vae.train.checkpoint_every, cfg.sample.grid_size, cfg.device) == (7, 9, "cpu")
    assert cfg.sample.grid_readjust_passes == 3


# Stands in for `ncp` on PATH: writes a stage's output files (empty) and nothing else, so Snakemake runs
# and records every job of a study (params, code, inputs) in seconds.
FAKE_NCP = """#!/usr/bin/env python3
import sys
from pathlib import Path

args, outputs = sys.argv[1:], []
for flag, value in zip(args, args[1:] + [None]):
    if flag in ("--out", "--train-out", "--test-out", "--grid", "--metrics-out", "--summary-out"):
        outputs.append(value)
if args[0] == "cache-latents":  # --out group_0.pt group_1.pt ...
    start = args.index("--out") + 1
    outputs += [a for a in args[start:] if not a.startswith("--")]
if args[0] == "tables":
    tables, figures = args[args.index("--tables-dir") + 1], args[args.index("--figures-dir") + 1]
    outputs += [tables + "/results.md", tables + "/results.tex"]
    outputs += [figures + "/fig5_loss.png", figures + "/fig5_ess.png", figures + "/fig5_log_z_k.png"]
if args[0] == "paper-table":
    outputs.append(outputs[0][: -len(".md")] + ".tex")
if args[0] == "evaluate" and args[1] == "features":
    outputs.append(str(Path(outputs[0]).with_name("network.pt")))
for output in outputs:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("")
"""


def _finish_with_fake_jobs(workdir: Path, configfile: str) -> dict:
    """A finished run of ``configfile`` as Snakemake records it, with `ncp` replaced by FAKE_NCP; returns
    the environment that runs it."""
    bin_dir = workdir / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "ncp").write_text(FAKE_NCP)
    (bin_dir / "ncp").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    _snakemake(workdir, "--cores", "2", "--configfile", configfile, env=env)
    return env


def _overlay(workdir: Path, name: str, content: dict) -> str:
    base = yaml.safe_load((workdir / "params/test/micro.yaml").read_text())
    for key, value in content.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(base))
    return f"{name}.yaml"


def test_changing_run_settings_reruns_nothing_but_a_science_change_does(tmp_path):
    copy_workflow(tmp_path)
    env = _finish_with_fake_jobs(tmp_path, "params/test/micro.yaml")
    nothing = _snakemake(tmp_path, "-n", "--configfile", "params/test/micro.yaml", env=env)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    assert "missing provenance" not in nothing.stdout + nothing.stderr  # every trigger could have fired
    # device, threads, checkpoint frequency, SIR chunk, the grids' temperature, size and BatchNorm passes,
    # memory: all run settings
    run = {
        "device": "cpu",
        "threads": 3,
        "checkpoint_every": 1,
        "sir_chunk_size": 2,
        "grid_temperature": 0.5,
        "grid_size": 4,
        "grid_readjust_passes": 2,
        "mem_mb": {"train_vae": 123},
    }
    changed_run = _snakemake(tmp_path, "-n", "--configfile", _overlay(tmp_path, "run", {"run": run}), env=env)
    assert "Nothing to be done" in changed_run.stdout + changed_run.stderr
    # a science change (the classifiers' epochs) reruns the classifiers and everything after them
    science = _snakemake(
        tmp_path, "-n", "--configfile", _overlay(tmp_path, "science", {"nce": {"epochs": 3}})
    )
    jobs = job_counts(science.stdout)
    assert jobs["train_nce"] == 4 + 2 and "train_vae" not in jobs and "prepare_data" not in jobs


def test_jobs_get_the_run_settings_of_their_experiment(tmp_path):
    # The workflow writes .snakemake/ncp-run/<experiment>.json when it starts running (not on a dry run);
    # each job's command reads its own experiment's file.
    copy_workflow(tmp_path)
    target = "results/default/data/train.pt"
    _snakemake(tmp_path, "-n", target)
    assert not (tmp_path / ".snakemake/ncp-run").exists()
    _snakemake(tmp_path, "--cores", "1", "--touch", "--allowed-rules", "prepare_data", "-f", target)
    main = json.loads((tmp_path / ".snakemake/ncp-run/default.json").read_text())
    table2 = json.loads((tmp_path / ".snakemake/ncp-run/default/table2/table2_cpu.json").read_text())
    assert main["device"] == "auto" and table2["device"] == "cpu" and main["threads"] == 2
    printed = _snakemake(
        tmp_path, "-n", "-p", "--forceall", "results/default/table2/table2_cpu/vae/checkpoint.pt"
    )
    assert "--run-json .snakemake/ncp-run/default/table2/table2_cpu.json" in printed.stdout


# ---------------------------------------------------------------------------------------------
# Threads and memory


def test_every_compute_rule_declares_threads_memory_and_a_benchmark(tmp_path):
    copy_workflow(tmp_path)
    result = _snakemake(tmp_path, "-n", "--cores", "64")
    compute = {
        "train_vae",
        "cache_latents",
        "train_nce",
        "sample",
        "fid_features",
        "evaluate_fid",
        "evaluate_fid_setting",
        "evaluate_mmd",
        "evaluate_nll",
        "nearest_neighbours",
    }
    seen = set()
    for block in result.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if rule not in compute:
            continue
        seen.add(rule)
        assert "threads: 2" in block, rule  # params/default.yaml: run.threads 2
        assert "benchmark: " in block, rule
        if rule != "nearest_neighbours":
            assert "mem_mb=" in block, rule
        assert "--threads 2 " in block or "--threads {threads}" not in block, rule
    assert seen == compute


@pytest.mark.parametrize("share, side_by_side", [(0.6, False), (0.3, True)])
def test_a_local_run_starts_jobs_side_by_side_only_while_their_memory_fits(tmp_path, share, side_by_side):
    # Snakemake alone caps threads at --cores but memory at nothing: two NCE jobs asking 0.6 of this
    # machine's memory each would run at once and meet the OOM killer together. The workflow registers
    # the machine's memory as the mem_mb resource, so they run one after the other; at 0.3 each, two fit.
    # Fails if the registration is gone (both shares overlap) or counts wrong (neither does). The real
    # micro jobs run (a stand-in `ncp` first on PATH is not what Snakemake runs when it was started
    # through a pyenv shim or a virtualenv's bin), and each NCE job logs when it started and finished.
    from ncp.workflow.machine import memory_mb

    copy_workflow(tmp_path)
    request = int(share * memory_mb())
    overlay = _overlay(tmp_path, "memory", {"run": {"mem_mb": {"train_nce": request}}})
    result = _snakemake(tmp_path, "--cores", "2", "--configfile", overlay, "--until", "train_nce")
    assert f"mem_mb={request}" in result.stdout + result.stderr  # the request as asked (not capped)
    spans = []
    for log in (tmp_path / "results").rglob("train_nce_*.log"):
        stamps = re.findall(r"(?:started|finished) at (\S+)", log.read_text())
        spans.append(tuple(datetime.fromisoformat(stamp) for stamp in stamps))
    spans.sort()
    assert len(spans) == 6  # the micro study's 4 groups and its Table 7 sub-experiment's 2
    overlapping = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlapping == side_by_side, spans


def test_a_local_job_asking_more_memory_than_the_machine_has_runs_alone_not_never(tmp_path):
    # The paper files ask 64 GB for stage 1: on a smaller machine the request is lowered to the machine's
    # memory (the job then runs alone). Fails if such a request stops the run ("Job needs mem_mb=...").
    from ncp.workflow.machine import memory_mb

    copy_workflow(tmp_path)
    overlay = _overlay(tmp_path, "big", {"run": {"mem_mb": {"train_vae": 10 * memory_mb()}}})
    result = _snakemake(tmp_path, "-n", "--cores", "2", "--configfile", overlay)
    assert f"mem_mb={memory_mb()}," in result.stdout


def test_snakemake_caps_a_jobs_threads_at_the_cores(tmp_path):
    # With --cores 1 every job runs with (and passes torch) 1 thread, so the threads of the jobs running
    # at once never exceed the cores (a dry run shows the declared 2; Snakemake scales them when it runs).
    copy_workflow(tmp_path)
    env = _finish_with_fake_jobs(tmp_path, "params/test/micro.yaml")
    result = _snakemake(
        tmp_path,
        "-p",
        "--cores",
        "1",
        "--configfile",
        "params/test/micro.yaml",
        "-f",
        "results/micro/vae/checkpoint.pt",
        env=env,
    )
    assert (
        "ncp train-vae --run-json .snakemake/ncp-run/micro.json --threads 1 " in result.stdout + result.stderr
    )


def test_torch_in_a_job_uses_the_threads_it_was_given(tmp_path):
    script = textwrap.dedent(
        """
        import sys, torch
        from ncp import runtime
        runtime.set_threads(int(sys.argv[1]))
        print(torch.get_num_threads(), torch.get_num_interop_threads())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "7"}
    result = subprocess.run(
        [sys.executable, "-c", script, "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["3", "3"], result.stderr


# ---------------------------------------------------------------------------------------------
# Profiles


def _parsed_args(workdir: Path, *argv: str):
    script = textwrap.dedent(
        """
        import json, sys
        from snakemake.cli import parse_args
        _, args = parse_args(sys.argv[1:])
        print(json.dumps({"resources": str(args.resources), "jobs": args.jobs, "executor": args.executor,
                          "default_resources": str(args.default_resources), "config": args.config}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_slurm_profile_limits_win_with_the_default_profile_linked_as_in_a_clone(tmp_path):
    # Snakemake parses profiles/default (the link) after --profile and lets its keys win; the default
    # profile therefore sets no resources, and the SLURM profile's GPU cap and job count stand.
    copy_workflow(tmp_path)
    (tmp_path / "profiles").symlink_to("workflow/profiles")
    args = _parsed_args(tmp_path, "--profile", "workflow/profiles/slurm", "-n")
    assert 'Resource("gpu", 50)' in args["resources"] and args["jobs"] == 50 and args["executor"] == "slurm"
    assert 'Resource("runtime", 60)' in args["default_resources"] and args["config"] == ["cluster_gpus=true"]
    # without --profile, the default profile applies alone and caps nothing (the workflow caps GPUs)
    alone = _parsed_args(tmp_path, "-n")
    assert "gpu" not in alone["resources"] and alone["executor"] in (None, "local")


def test_slurm_dry_run_asks_each_job_for_its_own_gpus_memory_and_cpus(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    copy_workflow(tmp_path)
    (tmp_path / "profiles").symlink_to("workflow/profiles")
    result = _snakemake(tmp_path, "-n", "--profile", "workflow/profiles/slurm")
    blocks = result.stdout.split("\nrule ")[1:]

    def block(rule, cpu_experiment):
        return next(b for b in blocks if b.startswith(rule + ":") and ("table2_cpu" in b) == cpu_experiment)

    main_vae, cpu_vae = block("train_vae", False), block("train_vae", True)
    assert "gpu=1" in main_vae and "runtime=2880" in main_vae and "mem_mb=4000" in main_vae
    assert "threads: 2" in main_vae  # the plugin sends threads as --cpus-per-task
    assert "gpu=0" in cpu_vae  # params/table2_cpu.yaml: run.device cpu asks SLURM for no GPU
    # a CPU-only rule asks for no GPU (evaluate_mmd encodes the test split with the VAE: it asks for one)
    assert "gpu=" not in block("nearest_neighbours", False)


# ---------------------------------------------------------------------------------------------
# Code inputs


def test_code_inputs_are_the_modules_each_stage_imports():
    assert {"ncp/distributed.py", "ncp/data/readers.py", "ncp/train_vae.py"} <= set(stage_code("train-vae"))
    for stage in ("prepare-data", "cache-latents", "evaluate"):
        assert "ncp/data/readers.py" in stage_code(stage), stage
    assert "ncp/paper_results.yaml" in stage_code("tables")  # a data file read by name
    assert "ncp/params.schema.yaml" in stage_code("train-nce")
    # and nothing a stage does not run: the classifiers' training does not depend on the VAE's code
    assert not {"ncp/train_vae.py", "ncp/models/nvae/model.py"} & set(stage_code("train-nce"))


# ---------------------------------------------------------------------------------------------
# Work directories and overlays


def test_a_work_directory_outside_the_repository_runs(tmp_path):
    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    repo.mkdir()
    copy_workflow(repo)
    # --configfile is read from the work directory (Snakemake's rule), so give it as an absolute path
    _snakemake(
        repo,
        "results/micro/data/train.pt",
        "-d",
        str(scratch),
        "--cores",
        "1",
        "--configfile",
        str(repo / "params/test/micro.yaml"),
    )
    assert (scratch / "results/micro/data/train.pt").is_file() and not (repo / "results").exists()
    # params/default.yaml was read under it (Snakemake skips a missing `configfile:` when --configfile is
    # given): its NVAE (2 latent scales) reaches the training command
    printed = _snakemake(
        repo,
        "results/micro/vae/checkpoint.pt",
        "-n",
        "-p",
        "-d",
        str(scratch),
        "--configfile",
        str(repo / "params/test/micro.yaml"),
    )
    assert '"num_latent_scales":2' in printed.stdout


def test_an_overlay_runs_just_its_experiment(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "x.yaml").write_text("experiment: x\n")
    jobs = jobs_by_experiment(_snakemake(tmp_path, "-n", "--configfile", "x.yaml").stdout)
    experiments = {experiment for (_, experiment) in jobs if experiment}
    assert experiments == {"x"}  # no default/table2/... sub-experiments
    assert jobs[("sample", "x")] == 2 and ("evaluate_fid_setting", "x") not in jobs  # no Table 8 sweep


def test_micro_params_sample_the_runs_own_sir_setting_once():
    params = resolve_params(
        {**yaml.safe_load((REPO / "params/default.yaml").read_text())}
        | {"paper": yaml.safe_load((REPO / "params/test/micro.yaml").read_text())["paper"]}
    )
    params["sample"] = {
        **params["sample"],
        "num_samples": 64,
        "sir": {**params["sample"]["sir"], "num_proposals": 8},
    }
    from ncp.workflow.study import sweep_variants

    assert sweep_variants(params) == ["sir_m2", "sir", "ld_t3"]


# ---------------------------------------------------------------------------------------------
# File modes and abandoned jobs


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from ncp.runtime import atomic_save, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_save({"x": 1}, tmp_path / "a.pt")
        atomic_write_text("x", tmp_path / "b.txt")
    finally:
        os.umask(old)
    for name in ("a.pt", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_job_whose_snakemake_process_ends_stops_and_writes_nothing(tmp_path):
    workflow = subprocess.Popen(["sleep", "60"])  # stands in for the Snakemake process
    job_script = textwrap.dedent(
        """
        import sys, time
        from ncp import runtime
        runtime.exit_with_workflow(poll_seconds=0.1)
        print("started", flush=True)
        time.sleep(3)
        runtime.atomic_save({"x": 1}, sys.argv[1])
        """
    )
    out = tmp_path / "checkpoint.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NCP_WORKFLOW_PID": str(workflow.pid)}
    job = subprocess.Popen(
        [sys.executable, "-c", job_script, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert job.stdout.readline().strip() == "started"
    workflow.send_signal(signal.SIGKILL)
    workflow.wait()
    started = time.monotonic()
    assert job.wait(timeout=10) == -signal.SIGKILL and time.monotonic() - started < 2.5
    assert not out.exists()


def test_jobs_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    # Tensors of 4-20 MB of changing sizes allocated, computed on and freed 100 times, as SIR's chunks and
    # NCE's batches are. By default glibc hands such blocks back to the kernel (its dynamic mmap and trim
    # thresholds) and every reuse faults in fresh pages; with keep_freed_memory they are reused. Fails if
    # the call does nothing (e.g. wrong mallopt parameter numbers) or is dropped from the job start.
    code = textwrap.dedent(
        """
        import resource, sys, torch
        from ncp import runtime
        torch.set_num_threads(1)
        if sys.argv[1] == "tuned":
            assert runtime.keep_freed_memory()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(100):
            x = torch.randn(1_000_000 * (1 + i % 5))
            y = (x * 2).exp()
            del x, y
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True
            ).stdout
        )  # fmt: skip
        for mode in ("default", "tuned")
    }
    # Measured (three runs each): 113,000-545,000 faults by default, 19,600-22,500 with the call.
    assert faults["default"] > 80_000, faults  # the premise: fresh pages again and again
    assert faults["tuned"] * 3 < faults["default"], faults
    import inspect

    from ncp import cli

    assert "runtime.keep_freed_memory()" in inspect.getsource(cli._start_job)  # every stage starts with it
