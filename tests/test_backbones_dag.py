"""Stage-1 backbones through the Snakemake DAG: an imported NVAE checkpoint, the MLP VAE (Table 2), the
conv VAE with Gaussian and GMM base priors (Table 1), and dry runs of every paper params file."""

import argparse
import json
import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from workflow_copy import REPO, copy_workflow, jobs_by_experiment

from ncp.data import load_image_set
from ncp.models.nvae.config import NVAE_DEFAULT_ARGS, NVAEConfig, split_training_flags
from ncp.models.registry import load_vae_checkpoint
from ncp.params import deep_merge
from ncp.priors.gmm import GMMPrior

FIXTURES = REPO.parent / "shared" / "fixtures" / "nvae"
SCHEMA = REPO / "ncp" / "params.schema.yaml"

# Everything after stage 1 at toy size: the DAG runs in well under a minute on 2 CPU cores.
TINY = {
    "run": {"device": "cpu", "checkpoint_every": 4, "sir_chunk_size": 4, "grid_size": 16},
    "paper": {
        "tables": ["table6", "table9"],
        "experiments": {"table2": [], "table7": []},
        "table8": {"sir_num_proposals": [], "ld_num_steps": []},
    },  # none of the default's sub-experiments
    "data": {"name": "mnist5k", "train_limit": 256, "test_limit": 64},
    "vae": {"train": {"epochs": 1, "batch_size": 32}},
    "cache": {"passes": 1, "batch_size": 128},
    "nce": {"hidden": 16, "num_blocks": 1, "epochs": 2, "batch_size": 64},
    "sample": {
        "num_samples": 64,
        "batch_size": 32,
        "methods": ["sir"],
        "sir": {"num_proposals": 8},
    },
    "evaluate": {
        "fid": {"features": "domain", "domain_epochs": 1, "reference_images": 256},
        "mmd": {"num_samples": 64, "pca_dim": 8},
        "nll": {"iw_samples": 4, "num_images": 32, "log_z_samples": 256},
    },
}


def _snakemake(
    cwd: Path, *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["snakemake", *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )


def _run_tiny_dag(workdir: Path, experiment: str, overlay: dict) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the whole DAG with TINY + ``overlay`` in a copy of the workflow, on one core with one thread
    per job (two such runs share the machine's two cores); return the result and the results folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    copy_workflow(workdir)
    params = deep_merge(deep_merge(TINY, overlay), {"experiment": experiment})
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = _snakemake(workdir, "--cores", "1", "--configfile", "overlay.yaml", env=env)
    return result, workdir / "results" / experiment


def _import_fixture_checkpoint(workdir: Path) -> dict | None:
    """Write the mnist_tiny fixture in NVAE's checkpoint layout, `ncp import-nvae` it, and return the
    params overlay that starts from it (None where the fixtures are absent)."""
    args_file, weights_file = FIXTURES / "mnist_tiny_args.json", FIXTURES / "mnist_tiny_state_dict.pt"
    if not (args_file.is_file() and weights_file.is_file()):
        return None
    workdir.mkdir(parents=True)
    nvae_args = json.loads(args_file.read_text())["args"]
    state_dict = torch.load(weights_file, weights_only=True)["state_dict"]
    # The layout of NVAE's own train.py checkpoints: weights plus the argparse Namespace it trained with.
    official = workdir / "official_checkpoint.pt"
    torch.save({"state_dict": state_dict, "args": argparse.Namespace(**nvae_args), "epoch": 399}, official)
    imported = workdir / "imported.pt"
    result = subprocess.run(
        ["ncp", "import-nvae", "--checkpoint", str(official), "--out", str(imported)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # vae.nvae describes the architecture only (the schema rejects NVAE's training flags, e.g. weight_decay_norm)
    architecture, _ = split_training_flags(nvae_args)
    return {"vae": {"arch": "nvae", "init_checkpoint": str(imported), "nvae": architecture}}


CONV_TINY = {
    "image_size": 32,
    "in_channels": 1,
    "latent_dim": 6,
    "channels": [8, 16],
    "kernel_size": 4,
    "likelihood": "bernoulli",
}
ADAM = {"optimizer": "adam", "lr": 0.001}
SINGLE_GROUP_OVERLAYS = {
    "mlp": {"vae": {"arch": "mlp", "mlp": {"latent_dim": 8, "hidden": 32}, "train": ADAM}},
    "conv_gaussian": {"vae": {"arch": "conv", "conv": CONV_TINY, "base_prior": "gaussian", "train": ADAM}},
    "conv_gmm": {
        "vae": {"arch": "conv", "conv": CONV_TINY, "base_prior": "gmm", "gmm_components": 3, "train": ADAM}
    },
}


@pytest.fixture(scope="module")
def dag_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The four tiny end-to-end runs, two at a time (a DAG alone leaves a core idle in its serial stages)."""
    base = tmp_path_factory.mktemp("dags")
    overlays = dict(SINGLE_GROUP_OVERLAYS)
    imported = _import_fixture_checkpoint(base / "import")
    if imported is not None:
        overlays = {"imported": imported, **overlays}  # the longest run first
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_run_tiny_dag, base / name, name, overlay) for name, overlay in overlays.items()
        }
        return {name: future.result() for name, future in futures.items()}


def _finished(dag_runs: dict, name: str) -> Path:
    """The results folder of run ``name``, after checking that its DAG completed."""
    result, out = dag_runs[name]
    logs = (
        "\n".join(p.read_text()[-1500:] for p in sorted((out / "logs").glob("*.log")))
        if (out / "logs").exists()
        else ""
    )
    assert result.returncode == 0, result.stderr[-3000:] + logs[-4000:]
    return out


def _assert_finite_summary(out: Path, num_groups: int) -> dict:
    summary = json.loads((out / "metrics/summary.json").read_text())
    for key in ("base", "ncp_sir", "recon"):
        assert math.isfinite(summary["fid"][key]) and summary["fid"][key] >= 0, key
    for key in ("base", "ncp", "log_z"):
        assert math.isfinite(summary["nll"][key]), key
    assert summary["nll"]["base"] > 0 and summary["nll"]["ncp"] > 0
    assert [g["group"] for g in summary["mmd"]["per_group"]] == list(range(num_groups))
    assert all(math.isfinite(g["q_p"]) and math.isfinite(g["q_pncp"]) for g in summary["mmd"]["per_group"])
    assert [g["group"] for g in summary["nce"]["per_group"]] == list(range(num_groups))
    assert all(math.isfinite(g["final_loss"]) for g in summary["nce"]["per_group"])
    assert (out / "tables/results.md").is_file()
    return summary


# ---- an imported NVAE checkpoint: stage 2 onwards without stage-1 training -------------------------------


@pytest.mark.slow
def test_imported_nvae_checkpoint_runs_the_dag_without_training(dag_runs):
    if "imported" not in dag_runs:
        pytest.skip(f"NVAE reference fixtures not found in {FIXTURES}")
    out = _finished(dag_runs, "imported")
    _assert_finite_summary(out, num_groups=4)  # 2 scales x 2 groups
    # train_vae only copied the file: the weights are the fixture's, bit for bit, and nothing was trained.
    state_dict = torch.load(FIXTURES / "mnist_tiny_state_dict.pt", weights_only=True)["state_dict"]
    checkpoint = torch.load(out / "vae/checkpoint.pt", weights_only=True)
    assert checkpoint["arch"] == "nvae" and "training" not in checkpoint
    assert set(checkpoint["state_dict"]) == set(state_dict)
    for name, tensor in state_dict.items():
        assert torch.equal(checkpoint["state_dict"][name], tensor), name
    # The coarsest group is 4 channels at 8x8 (the fixture's z0_size), the finer scale 16x16.
    z0_size = json.loads((FIXTURES / "mnist_tiny_args.json").read_text())["z0_size"]

    def cached_group_shape(k):  # the latent cache's index records each group's latent shape
        return tuple(json.loads((out / f"latents/group_{k}/index.json").read_text())["group_shape"])

    assert cached_group_shape(0) == tuple(z0_size)
    assert cached_group_shape(3) == (4, 16, 16)


# ---- single-group backbones -------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlp_vae_runs_the_dag_and_starts_from_the_training_mean(dag_runs):
    out = _finished(dag_runs, "mlp")
    _assert_finite_summary(out, num_groups=1)
    # The encoder input is centred on the mean training image of pixel / 255 (the Bernoulli
    # probabilities), cropped to the central 28x28 the model reads.
    train = load_image_set(out / "data/train.pt")
    expected = (train.images.double().mean(dim=0) / 255.0)[0, 2:30, 2:30].flatten().float()
    checkpoint = torch.load(out / "vae/checkpoint.pt", weights_only=True)
    torch.testing.assert_close(checkpoint["state_dict"]["data_mean"], expected, atol=1e-6, rtol=0)
    assert checkpoint["base_prior"] == {"kind": "gaussian"}
    assert "data_mean" not in checkpoint["arch_args"]  # the mean travels as a buffer, not as an argument


@pytest.mark.slow
def test_conv_vae_with_gaussian_base_runs_the_dag(dag_runs):
    out = _finished(dag_runs, "conv_gaussian")
    _assert_finite_summary(out, num_groups=1)
    checkpoint = torch.load(out / "vae/checkpoint.pt", weights_only=True)
    assert checkpoint["arch"] == "conv" and checkpoint["base_prior"] == {"kind": "gaussian"}
    assert not any(name.startswith("base_prior.") for name in checkpoint["state_dict"])


@pytest.mark.slow
def test_conv_vae_with_gmm_base_fits_the_mixture_to_posterior_means(dag_runs):
    out = _finished(dag_runs, "conv_gmm")
    _assert_finite_summary(out, num_groups=1)
    checkpoint = torch.load(out / "vae/checkpoint.pt", weights_only=True)
    assert checkpoint["base_prior"] == {"kind": "gmm", "num_components": 3, "covariance_type": "full"}
    model = load_vae_checkpoint(out / "vae/checkpoint.pt")
    assert isinstance(model.base_prior, GMMPrior) and model.base_prior.num_components == 3

    # Known answer of EM: after an M-step the mixture's overall mean and covariance equal those of the
    # points it was fitted to (+ sklearn's 1e-6 ridge). Those points are posterior means of the
    # training images under one binarisation; a fresh binarisation moves their moments by some 10-20%
    # after this short training, whereas a placeholder N(0, I) mixture (a covariance some 100x too
    # large here) or a fit to posterior samples instead of means would be off by orders of magnitude.
    train = load_image_set(out / "data/train.pt")
    generator = torch.Generator().manual_seed(123)
    x = torch.bernoulli(train.images.float() / 255.0, generator=generator)
    with torch.no_grad():
        points = model.encode(x).base_dist.loc.double()  # (N, D)
    weights = model.base_prior.log_weights.double().exp()  # (K,)
    means = model.base_prior.means.double()  # (K, D)
    chol = model.base_prior.scales.double()  # (K, D, D)
    mixture_mean = weights @ means
    second_moment = torch.einsum(
        "k,kij->ij", weights, chol @ chol.transpose(1, 2) + means[:, :, None] * means[:, None, :]
    )
    mixture_cov = second_moment - mixture_mean[:, None] * mixture_mean[None, :]
    data_cov = torch.cov(points.T)
    spread = data_cov.diagonal().sqrt()  # (D,)
    assert ((mixture_mean - points.mean(dim=0)).abs() / spread).max() < 0.3
    assert torch.linalg.matrix_norm(mixture_cov - data_cov) / torch.linalg.matrix_norm(data_cov) < 0.5
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)


# ---- dry runs of the paper params files ----------------------------------------------------------------------

# Latent groups (= NCE classifier jobs) each paper setting has: the paper's and NVAE's counts.
EXPECTED_GROUPS = {
    "paper/mnist_nvae.yaml": 10,  # "10 groups of 4x4 latent variables"
    "paper/cifar10_nvae.yaml": 30,
    "paper/celeba64_nvae_30groups.yaml": 30,
    "paper/celeba64_nvae_official.yaml": 35,  # NVAE's released model: 20 + 10 + 5
    "paper/celebahq256_nvae_20groups.yaml": 20,
    "paper/celebahq256_nvae_official.yaml": 36,  # 16 + 8 + 4 + 4 + 4
    "paper/mnist_mlp_table2.yaml": 1,
    "paper/celeba64_conv_table1_gaussian.yaml": 1,
    "paper/celeba64_conv_table1_gmm.yaml": 1,
    "table2_cpu.yaml": 1,
}


def _groups_by_nvae_rule(nvae: dict) -> int:
    """NVAE's utils.groups_per_scale, written out: from the finest scale down, ada_groups halves the
    count at each coarser scale, never below min_groups_per_scale."""
    count, total = nvae["num_groups_per_scale"], 0
    for _ in range(nvae["num_latent_scales"]):
        total += count
        if nvae["ada_groups"]:
            count = max(nvae["min_groups_per_scale"], count // 2)
    return total


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "params" / name).read_text())


def _schema_knows(dataset: str) -> bool:
    return dataset in yaml.safe_load(SCHEMA.read_text())["properties"]["data"]["properties"]["name"]["enum"]


def test_every_paper_params_file_is_listed():
    shipped = {str(p.relative_to(REPO / "params")) for p in (REPO / "params/paper").glob("*.yaml")}
    assert shipped | {"table2_cpu.yaml"} == set(EXPECTED_GROUPS)


def _leaf_paths(tree: dict, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every non-mapping value in a nested dict."""
    paths = []
    for key, value in tree.items():
        paths += _leaf_paths(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
    return paths


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_paper_params_file_is_self_contained(name):
    params = _load(name)
    assert params["experiment"] and params["paper"]["tables"] and params["paper"]["row"]
    vae = params["vae"]
    # The file overlays params/default.yaml: each value the default sets must be set here too, or the
    # small CPU experiment's value would silently take its place (vae.nvae only matters for NVAE).
    for path in _leaf_paths(_load("default.yaml")):
        if path[:2] == ("vae", "nvae") and vae["arch"] != "nvae":
            continue
        if path[0] == "run":  # an overlay never inherits the default's run settings (ncp.workflow.study)
            continue
        node = params
        for key in path:
            assert isinstance(node, dict) and key in node, f"{name} leaves {'.'.join(path)} to default.yaml"
            node = node[key]
    if vae["arch"] == "nvae":
        # Every NVAE argument is set here, so none of params/default.yaml's small NVAE leaks in.
        assert set(NVAE_DEFAULT_ARGS) <= set(vae["nvae"]), set(NVAE_DEFAULT_ARGS) - set(vae["nvae"])
        assert _groups_by_nvae_rule(vae["nvae"]) == EXPECTED_GROUPS[name]
        assert NVAEConfig.from_args(vae["nvae"]).num_groups == EXPECTED_GROUPS[name]
    else:
        assert EXPECTED_GROUPS[name] == 1
    assert set(params["vae"]["train"]) >= {
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "lr_min",
        "warmup_epochs",
    }


def test_mnist_nvae_has_ten_groups_of_4x4_latents():
    config = NVAEConfig.from_args(_load("paper/mnist_nvae.yaml")["vae"]["nvae"])
    assert config.num_groups == 10
    assert {config.decoder_scale_side(scale) for scale in config.group_scales()} == {4}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Dry-run every listed params file (two at a time: each is mostly interpreter start-up)."""
    workdir = tmp_path_factory.mktemp("dry")
    copy_workflow(workdir)
    substitute = workdir / "known_dataset.yaml"
    substitute.write_text("data:\n  name: celeba64\n")

    def dry_run(name: str):
        files = [f"params/{name}"]
        # No CelebA-HQ-256 loader yet: until the schema knows the name, dry-run the rest of the file.
        if _load(name)["data"]["name"] == "celebahq256" and not _schema_knows("celebahq256"):
            files.append(str(substitute))
        return _snakemake(workdir, "-n", "-p", "--cores", "2", "--configfile", *files, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(sorted(EXPECTED_GROUPS), pool.map(dry_run, sorted(EXPECTED_GROUPS))))


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_paper_params_dry_run_has_one_nce_job_per_group(dry_runs, name):
    result = dry_runs[name]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    params = _load(name)
    main = params["experiment"]
    jobs = jobs_by_experiment(result.stdout)
    assert jobs[("train_nce", main)] == EXPECTED_GROUPS[name]
    assert jobs[("train_vae", main)] == 1 and jobs[("cache_latents", main)] == 1 and jobs[("tables", "")] == 1
    sweep = params["paper"]["table8"]
    # base + each sampler, + each Table 8 setting that is not the run's own (e.g. SIR M=50 is sampled once)
    own = {
        (method, params["sample"][method]["num_proposals" if method == "sir" else "num_steps"])
        for method in params["sample"]["methods"]
    }
    extra = {("sir", m) for m in sweep["sir_num_proposals"]} | {("ld", t) for t in sweep["ld_num_steps"]}
    assert jobs[("sample", main)] == 1 + len(params["sample"]["methods"]) + len(extra - own)
    for table in params["paper"]["tables"] + [
        t for t, files in params["paper"]["experiments"].items() if files
    ]:
        assert jobs[(table, "")] == 1, table


def _tables_job(stdout: str) -> str:
    return next(block for block in stdout.split("\nrule ")[1:] if block.startswith("tables:"))


def test_the_celeba64_study_draws_fig5_also_from_the_run_of_table9(dry_runs):
    # The paper's Table 9 and Fig. 5(a) describe one 15-group model (`paper.table9_from`): the tables job
    # must read that run's classifier and SIR figures and draw its Fig. 5 beside the 30-group run's own.
    job = _tables_job(dry_runs["paper/celeba64_nvae_30groups.yaml"].stdout)
    sub = "results/celeba64_nvae_30groups/table7/celeba64_groups_15/metrics"
    assert f"{sub}/nce/group_14.json" in job and f"{sub}/fid.json" in job and f"--figure5-from {sub}" in job
    assert "results/celeba64_nvae_30groups/figures/fig5_loss_table9_run.png" in job
    # a run without table9_from draws only its own
    assert "table9_run" not in _tables_job(dry_runs["paper/mnist_nvae.yaml"].stdout)


# Sub-experiments the paper params run for their tables' other rows, and their latent groups.
EXPECTED_SUB_EXPERIMENTS = {
    "paper/celeba64_nvae_30groups.yaml": {"table7/celeba64_groups_6": 6, "table7/celeba64_groups_15": 15},
    "paper/celeba64_conv_table1_gaussian.yaml": {"table1/celeba64_conv_table1_gmm": 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SUB_EXPERIMENTS))
def test_paper_params_dry_run_includes_the_sub_experiments(dry_runs, name):
    main = _load(name)["experiment"]
    jobs = jobs_by_experiment(dry_runs[name].stdout)
    subs = {
        exp.removeprefix(main + "/"): n
        for (rule, exp), n in jobs.items()
        if rule == "train_nce" and exp != main
    }
    assert subs == EXPECTED_SUB_EXPERIMENTS[name]
    assert (
        jobs[("prepare_data", main)] == 1 and ("prepare_data", f"{main}/{next(iter(subs))}") not in jobs
    )  # shared
