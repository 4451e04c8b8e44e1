"""`ncp plan`'s arithmetic against step counts worked out by hand for params/test/micro.yaml, and the jobs
of every paper file, with the timing replaced by known prices (the timing itself is a measurement: see
the README's "Cost plan", not a test; one test runs the real timing code to check what it times)."""

import math
import os
from pathlib import Path

import pytest
import torch

from ncp.params import load_params_files
from ncp.workflow import plan, plan_jobs

REPO = Path(__file__).resolve().parents[1]


def _micro():
    return load_params_files([REPO / "params" / "default.yaml", REPO / "params" / "test" / "micro.yaml"])


def _fake_timing(groups: int) -> dict:
    """Round prices, so every estimate below is a sum a reader can check."""
    return {
        "startup_s": 2.0,
        "build_s": 0.5,
        "vae_step_s": 3.0,
        "vae_first_step_s": 5.0,
        "vae_peak_bytes": 1e9,
        "num_parameters": 1000,
        "encode_image_s": 0.01,
        "stream_image_s": [0.01] * groups,  # cache.mode stream only: job k's pass, stopped after group k
        "base_image_s": 0.1,
        "sir_proposal_s": 0.0125,
        "load_s": 0.25,
        "baseline_bytes": 3e8,
        "ld_step_s": 0.2,
        "nce_step_s": [0.25] * groups,
        "classifier_parameters": [100] * groups,
        "group_shapes": [(4, 2, 2)] * groups,
        "context_shapes": [None] + [(8, 2, 2)] * (groups - 1),
        "sample_peak_bytes": 5e8,
        "peak_bytes": 6e8,
        "threads": 1,
    }


def test_micro_study_work_counts_match_the_stages_own_arithmetic():
    jobs = plan_jobs.study_jobs(_micro())
    main = {
        (j.stage, j.detail.get("method"), j.detail.get("group")): j for j in jobs if j.experiment == "micro"
    }
    # 256 training images, batch 32, 1 epoch: 8 stage-1 steps
    assert main[("train_vae", None, None)].units == 8
    # one pass over the 256 images: 256 pairs; 51 held out (val + test, round(0.2 x 256)), 205 left,
    # batch 64: 4 steps per epoch, 2 epochs
    assert main[("cache_latents", None, None)].units == 256
    assert main[("train_nce", None, 0)].units == 8 and main[("train_nce", None, 3)].units == 8
    # 64 samples + a warm-up image + the timed batches of 1 and 10 (the grid reuses the samples at t = 1)
    assert main[("sample", "sir", None)].units == 64 + 1 + 1 + 10
    # Table 8's sweep: SIR M = 2 and 8, LD 3 steps. M = 8 and 3 steps are the run's own settings, sampled
    # once (params/test/micro.yaml: table8.num_samples null, so sir.pt serves as M = 8, as `snakemake -n`
    # lists); M = 2 draws sample.num_samples, 64 + a warm-up + the timed batches of 1 and 10
    sweep = {j.detail["method"]: j for j in jobs if j.experiment == "micro" and j.stage == "sample"}
    assert sorted(sweep) == ["base", "ld", "sir", "sir_m2"]
    assert sweep["sir_m2"].units == 64 + 1 + 11
    # the 2-group Table 7 sub-experiment: its own stage 1, classifiers and samples, no sweep
    sub = [j for j in jobs if j.experiment == "micro/table7/groups_2"]
    assert sum(j.stage == "train_nce" for j in sub) == 2
    assert sorted(j.detail["method"] for j in sub if j.stage == "sample") == ["base", "ld", "sir"]
    assert sum(j.stage == "prepare_data" for j in jobs) == 1  # one data split for the study
    # log Z walks the prior log_z_samples times under each of its 5 seeds (the schema's default)
    assert main[("evaluate_nll", None, None)].detail["log_z"] == 256 * 5


def test_estimates_are_start_up_plus_units_at_the_timed_price():
    t = {**_fake_timing(4), "sir_num_proposals": 8, "ld_num_steps": 3}
    jobs = {
        (j.stage, j.detail.get("method")): j
        for j in plan_jobs.study_jobs(_micro())
        if j.experiment == "micro"
    }
    # stage 1: the first step at its own price (it first touches the optimiser state and memory; the
    # official CelebA-HQ-256 smoke's one step was priced at 0.41 of its time without it), then 7 more
    assert plan.estimate_seconds(jobs[("train_vae", None)], t) == pytest.approx(2.0 + 0.5 + 5.0 + 7 * 3.0)
    # stage 2 jobs also read the VAE checkpoint and hash it (load_s)
    assert plan.estimate_seconds(jobs[("cache_latents", None)], t) == pytest.approx(
        2.0 + 0.5 + 0.25 + 256 * 0.01
    )
    # SIR at M = 8: a prior walk plus 8 proposals per image, 76 images
    t.update(readjusts_batchnorm=False, bn_readjust_s=0.0)
    per_image = 0.1 + 8 * 0.0125
    assert plan.estimate_seconds(jobs[("sample", "sir")], t) == pytest.approx(2.75 + 76 * per_image)
    # the sweep's M = 2 costs a quarter of M = 8's proposals, not a whole chunk (the smoke's M = 5 sweep
    # was billed a chunk of 250 and estimated at 3x its measured time); LD 3 steps
    assert plan.sample_seconds_per_image(t, "sir", proposals=2) == pytest.approx(0.125)
    assert plan.sample_seconds_per_image(t, "ld") == pytest.approx(0.1 + 3 * 0.2)
    # NLL: encoder passes (32 test images x iw_samples 4, base and NCP), log Z's prior walks, and a classifier
    # evaluation through every group for each walk and each NCP sample (one SIR proposal's price); without
    # it the official CelebA-HQ-256 smoke's NLL was priced at 0.49 of its time
    nll = jobs[("evaluate_nll", None)]
    assert nll.units == 32 * 4 * 2 and nll.detail["log_z"] == 256 * 5
    assert plan.estimate_seconds(nll, t) == pytest.approx(
        2.75 + 256 * 0.01 + 1280 * 0.1 + (1280 + 128) * 0.0125
    )
    # the paper's FID: 50,000 images at the file's M (here 8), in hours
    assert plan.paper_fid_hours(t) == pytest.approx(50_000 * per_image / 3600)


def test_disk_and_memory_follow_the_shapes_and_the_cache_dtype():
    params = _micro()
    t = _fake_timing(4)
    jobs = {
        (j.stage, j.detail.get("method")): j for j in plan_jobs.study_jobs(params) if j.experiment == "micro"
    }
    # per pair: z_q and z_p (2 x 16 values) in every group, a 32-value context in groups 1-3; float32
    per_pair = 4 * (2 * 16) + 3 * 32
    assert plan.disk_bytes(jobs[("cache_latents", None)], params, t) == 256 * per_pair * 4
    params["cache"]["dtype"] = "float16"
    assert plan.disk_bytes(jobs[("cache_latents", None)], params, t) == 256 * per_pair * 2
    # 64 sample images of 1 x 32 x 32 bytes, with their 64 float32 latent values each
    assert plan.disk_bytes(jobs[("sample", "sir")], params, t) == 64 * (1024 + 4 * 64)
    # stage 1 holds its 256 training images beside the model's own peak
    assert plan.peak_bytes(jobs[("train_vae", None)], params, t) == 1e9 + 256 * 1024
    # data preparation: a process with torch (baseline_bytes) and both splits (256 + 64 images)
    prepare = next(j for j in plan_jobs.study_jobs(params) if j.stage == "prepare_data")
    assert plan.peak_bytes(prepare, params, t) == 3e8 + (256 + 64) * 1024

    # stage 2's memory does not grow with the pairs: one shard buffer per group while caching (4 groups of
    # cache.shard_mb), nce.buffer_shards of them in an NCE job
    shard = params["cache"]["shard_mb"] * 2**20
    assert plan.peak_bytes(jobs[("cache_latents", None)], params, t) == 5e8 + 256 * 1024 + 4 * shard
    nce_job = next(j for j in plan_jobs.study_jobs(params) if j.stage == "train_nce")
    assert plan.peak_bytes(nce_job, params, t) == 6e8 + params["nce"]["buffer_shards"] * shard


def test_stream_mode_writes_no_cache_and_prices_the_vae_passes_inside_each_nce_job():
    # Fails if the plan still counted a cache on disk, or left out the VAE passes that cache.mode: stream
    # moves into every NCE job (one per training image and epoch), or priced job k's pass as another
    # group's (each stops after its own group, so the later groups' jobs cost more).
    params = _micro()
    params["cache"]["mode"] = "stream"
    t = {**_fake_timing(4), "stream_image_s": [0.001, 0.002, 0.004, 0.008]}
    jobs = [j for j in plan_jobs.study_jobs(params) if j.experiment == "micro"]
    cache = next(j for j in jobs if j.stage == "cache_latents")
    assert cache.units == 0 and plan.disk_bytes(cache, params, t) == 0
    nce = {j.detail["group"]: j for j in jobs if j.stage == "train_nce"}
    # 256 images, 51 held out, batch 64, 2 epochs: 8 steps; and 2 x 256 VAE passes at group k's price
    for k, price in enumerate(t["stream_image_s"]):
        assert nce[k].units == 8
        assert plan.estimate_seconds(nce[k], t) == pytest.approx(
            2.0 + 8 * 0.25 + 0.5 + 0.25 + 2 * 256 * price
        )
    nce = nce[0]
    # the VAE and the images live in the NCE job now, not a shard buffer; the timed peak (6e8) already
    # holds the VAE beside the classifiers, so the sampling peak is not added again (that double count
    # estimated the 30-group smoke's NCE jobs at 2.1x their measured 2.4 GB)
    assert plan.peak_bytes(nce, params, t) == 6e8 + 256 * 1024
    # cache.num_images caps the images each epoch draws from: 100 images, 20 held out, 2 x 2 steps
    params["cache"]["num_images"] = 100
    capped = next(j for j in plan_jobs.study_jobs(params) if j.stage == "train_nce")
    assert capped.units == 4 and capped.detail["stream_images"] == 2 * 100


def test_the_stage_table_sums_the_jobs(monkeypatch):
    import ncp.workflow.plan_timing as timing

    monkeypatch.setattr(
        timing,
        "time_experiment",
        lambda p, device, batch: _fake_timing(4 if "table7" not in p["experiment"] else 2),
    )
    rows, _ = plan.make_plan(_micro(), "cpu")
    table = plan.stage_table(rows)
    assert table.loc["total", "jobs"] == len(rows)
    assert table.loc["total", "hours"] == pytest.approx(sum(r["seconds"] for r in rows) / 3600)
    assert table.loc["train_nce", "jobs"] == 4 + 2
    assert table.loc["train_vae", "hours"] == pytest.approx(2 * (2.0 + 0.5 + 5.0 + 7 * 3.0) / 3600)
    assert math.isclose(table.loc["total", "peak_gb"], max(r["peak_bytes"] for r in rows) / 1e9)


def test_the_timing_processes_get_params_a_stage_can_build(monkeypatch):
    # plan_timing builds each experiment's config in a child process with ExperimentConfig.from_params,
    # as a stage does. Fails if make_plan hands it params with the run settings already copied into the
    # science sections (from_params refuses vae.train.checkpoint_every there): `ncp plan` then failed on
    # every params file, which the fake timing of the other tests could not see.
    import ncp.workflow.plan_timing as timing

    built = []

    def timing_that_builds(p, device, batch):
        timing._build(p, torch.device("cpu"))  # the child's own config building, without the child
        built.append(p["experiment"])
        return _fake_timing(4 if "table7" not in p["experiment"] else 2)

    monkeypatch.setattr(timing, "time_experiment", timing_that_builds)
    plan.make_plan(_micro(), "cpu")
    assert built == ["micro", "micro/table7/groups_2"]  # the main run and its Table 7 sub-experiment


def test_an_unknown_dataset_size_is_a_one_line_error():
    params = _micro()
    params["data"].update(name="folder", train_limit=None, image_size=32)
    with pytest.raises(ValueError, match="size of dataset 'folder' is unknown; set data.train_limit"):
        plan_jobs.study_jobs(params)


def test_step_counts_follow_held_out_pairs_processes_and_max_steps():
    # 100 pairs, 10 held out: 90 / 10 = 9 steps per epoch (10 if the held-out pairs were trained on)
    assert plan_jobs.nce_steps(100, {"val_fraction": 0.1, "epochs": 3, "batch_size": 10}) == 27
    train = {"batch_size": 16, "num_processes": 4, "epochs": 2, "max_steps": None}
    assert plan_jobs.stage1_steps(1000, train, None) == 2 * math.ceil(1000 / 64)  # a global batch of 4 x 16
    assert plan_jobs.stage1_steps(1000, {**train, "max_steps": 5}, None) == 5
    assert plan_jobs.stage1_steps(1000, train, "imported.pt") == 0
    assert plan_jobs.cache_pairs(1000, {"num_images": 300, "passes": 4}) == 1200


def test_the_comparison_reads_each_jobs_snakemake_benchmark_file(tmp_path):
    folder = tmp_path / "smoke" / "benchmarks"
    folder.mkdir(parents=True)
    (folder / "train_nce_3.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n40.0\t0:00:40\t500\t4.5\n")
    rows = [
        {"stage": "train_nce", "experiment": "smoke", "group": 3, "seconds": 20.0, "peak_bytes": 1.5e9},
        # group 4 has no benchmark file: left out
        {"stage": "train_nce", "experiment": "smoke", "group": 4, "seconds": 20.0, "peak_bytes": 1e9},
    ]
    (compared,) = plan.compare_with_benchmarks(rows, str(tmp_path))
    assert compared["job"] == "smoke: train_nce_3" and compared["measured_s"] == 40.0
    assert compared["ratio"] == 0.5 and compared["measured_cpu_s"] == 4.5
    # max_rss is in MB: 500 MB measured against 1.5 GB estimated is 3x, outside the 2x the issue asks for
    assert compared["measured_gb"] == 0.5 and compared["memory_ratio"] == pytest.approx(3.0)
    assert plan.within_factor([compared]) == (
        "within 2x of measured: time 1 of 1 jobs (ratios 0.50-0.50); peak memory 0 of 1 jobs (ratios 3.00-3.00)"
    )


def test_the_factor_line_counts_both_bounds_and_skips_jobs_without_a_memory_sample():
    compared = [
        {"ratio": 0.49, "memory_ratio": None},  # under half: outside; no memory sampled: not counted
        {"ratio": 2.0, "memory_ratio": 1.0},  # exactly 2x: inside
        {"ratio": 1.0, "memory_ratio": 0.4},
    ]
    assert plan.within_factor(compared) == (
        "within 2x of measured: time 2 of 3 jobs (ratios 0.49-2.00); peak memory 1 of 2 jobs (ratios 0.40-1.00)"
    )


@pytest.mark.parametrize("num_proposals, timed", [(3, 3), (8, 4)])  # micro's run.sir_chunk_size is 4
def test_stage2_timing_prices_sir_per_proposal_from_a_chunk_no_larger_than_m(
    monkeypatch, num_proposals, timed
):
    # The real timing code on the micro model. Fails if SIR is timed at a whole chunk whatever M is: the
    # 30-group smoke (M = 50, chunks of 250) was estimated at 3x its measured SIR time that way. Also
    # fails if the checkpoint read (load_s) that every stage-2 job pays is not timed.
    import ncp.samplers.sir as sir_module
    import ncp.workflow.plan_timing as timing

    timed_sizes = []

    class RecordingSIR(sir_module.SIRSampler):
        def __init__(self, prior, num_proposals, chunk_size, **kwargs):
            timed_sizes.append((num_proposals, chunk_size))
            super().__init__(prior, num_proposals=num_proposals, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(sir_module, "SIRSampler", RecordingSIR)
    params = _micro()
    params["sample"]["sir"]["num_proposals"] = num_proposals
    result = timing.time_stage2(params, "cpu")
    assert timed_sizes == [(timed, timed)]
    assert result["sir_proposal_s"] >= 0 and result["load_s"] > 0
    assert len(result["nce_step_s"]) == len(result["group_shapes"]) == 4


def test_stream_timing_prices_each_groups_stopped_pass_from_five_timed_groups(monkeypatch):
    # ncp plan prices stream-mode job k at posterior_group(x, k). Fails if it times every group (36
    # stopped passes cost ~18 whole forward passes at 256x256), times other groups than the five spread
    # from first to last, or does not interpolate between them; and if time_stage2 leaves the prices out.
    import ncp.workflow.plan_timing as timing

    calls = []

    class NineGroups:
        num_groups = 9

        def posterior_group(self, x, k):
            calls.append(k)
            return k

    # a pass's "seconds" are 1 + its group squared, so interpolation is visible between timed groups
    monkeypatch.setattr(timing, "_timed", lambda fn, device, warm_up=True: 1.0 + fn() ** 2)
    prices = timing._group_pass_seconds(NineGroups(), None, torch.device("cpu"))
    assert calls == [8, 0, 2, 4, 6, 8]  # one warm-up through the whole walk, then the five groups
    assert prices[::2] == [1.0, 5.0, 17.0, 37.0, 65.0]
    assert prices[1::2] == [3.0, 11.0, 27.0, 51.0]  # halfway between the neighbours
    monkeypatch.undo()
    params = _micro()
    params["cache"]["mode"] = "stream"
    assert len(timing.time_stage2(params, "cpu")["stream_image_s"]) == 4


def test_stage1_memory_scales_the_activations_but_not_the_gradients_or_the_optimiser_state():
    # On a CPU stage 1 is timed at a small batch and its peak scaled to the real one. Gradients and Adamax's
    # two moments are the size of the parameters at any batch; scaling them with the batch priced the
    # 20-group CelebA-HQ-256 NVAE at 58.9 GB for batch 4. Fails if the held bytes miss the gradients or
    # a moment (the count after a real step of stage 1's own optimiser), or if the scaling includes them.
    from types import SimpleNamespace

    import ncp.workflow.plan_timing as timing
    from ncp.train_vae import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 30))
    optimizer = build_optimizer(model, SimpleNamespace(optimizer="adamax", lr=1e-3, weight_decay=0.0))
    assert timing.held_training_bytes(model, optimizer) == 0  # nothing is held before the first step
    model(torch.randn(8, 50)).square().sum().backward()
    optimizer.step()
    parameter_bytes = sum(p.nbytes for p in model.parameters())
    step_counters = sum(v.nbytes for st in optimizer.state.values() for k, v in st.items() if k == "step")
    held = timing.held_training_bytes(model, optimizer)
    assert held == 3 * parameter_bytes + step_counters  # gradients, exp_avg, exp_inf (+ a step count each)

    # 2 GB built, 3 GB held, 10 GB peak at the timed batch: 5 GB of activations, four times at 4x the batch
    gb = 1e9
    assert timing.stage1_peak_at_batch(2 * gb, 3 * gb, 10 * gb, scale=4) == pytest.approx(25 * gb)
    # on a GPU the timed batch is the real one: the timed peak, unchanged
    assert timing.stage1_peak_at_batch(2 * gb, 3 * gb, 10 * gb, scale=1) == pytest.approx(10 * gb)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every thread count is 1")
def test_the_timing_processes_run_at_the_jobs_threads():
    # The jobs run at run.threads (Snakemake lowers it to --cores); a timing process left at torch's
    # default takes every core, and priced the 1-thread smoke jobs as if they had two. Fails if the
    # child is not set to the run's threads, or the timing of two thread counts is shared.
    import ncp.workflow.plan_timing as timing

    params = _micro()
    params["run"]["threads"] = 1
    assert timing.time_experiment(params, "cpu", timing_batch=4)["threads"] == 1
    threaded = dict(params, run={**params["run"], "threads": 2})
    assert plan._timing_key(threaded) != plan._timing_key(params)


# The main run's latent groups in each paper file: the paper's own counts (30 groups for CIFAR-10 and
# CelebA-64, 20 for CelebA-HQ-256), NVAE's released models (35 and 36 groups), NVAE's MNIST (10), and 1
# for the single-group VAEs of Tables 1 and 2.
PAPER_FILE_GROUPS = {
    "celeba64_conv_table1_gaussian": 1,
    "celeba64_conv_table1_gmm": 1,
    "celeba64_nvae_30groups": 30,
    "celeba64_nvae_official": 35,
    "celebahq256_nvae_20groups": 20,
    "celebahq256_nvae_official": 36,
    "cifar10_nvae": 30,
    "mnist_mlp_table2": 1,
    "mnist_nvae": 10,
}


@pytest.mark.parametrize("overlays", [[], ["smoke.yaml"]], ids=["paper", "smoke"])
@pytest.mark.parametrize("name", sorted(PAPER_FILE_GROUPS))
def test_every_paper_file_plans_one_classifier_per_group_and_prices_every_job(monkeypatch, name, overlays):
    # `ncp plan` on every paper file, alone and under the smoke overlay, with known prices in place of the
    # timing (which the smokes measure). Fails if a file's study cannot be turned into jobs (an unknown
    # dataset size, a sub-experiment the planner cannot name), if the main run's NCE jobs are not one per
    # group, or if a job gets no finite, positive estimate.
    import ncp.workflow.plan_timing as timing
    from ncp.params import num_latent_groups

    def fake_timing(p, device, batch):
        return {
            **_fake_timing(num_latent_groups(p["vae"])),
            "sir_num_proposals": p["sample"]["sir"]["num_proposals"],
            "ld_num_steps": p["sample"]["ld"]["num_steps"],
        }

    monkeypatch.setattr(timing, "time_experiment", fake_timing)
    files = [REPO / "params" / "default.yaml", REPO / "params" / "paper" / f"{name}.yaml"]
    params = load_params_files(files + [REPO / "params" / o for o in overlays])
    rows, _ = plan.make_plan(params, "cpu")
    main = [r for r in rows if r["experiment"] == params["experiment"]]
    assert sum(r["stage"] == "train_nce" for r in main) == PAPER_FILE_GROUPS[name]
    assert {"prepare_data", "cache_latents", "train_nce", "sample", "evaluate_nll"} <= {
        r["stage"] for r in main
    }
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows)
    # an official checkpoint is imported: no stage-1 steps to price
    trains_stage1 = params["vae"]["init_checkpoint"] is None
    assert any(r["stage"] == "train_vae" and r["units"] > 0 for r in main) == trains_stage1
