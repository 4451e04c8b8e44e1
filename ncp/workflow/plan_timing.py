"""Timed steps of the real models at the real sizes, for `ncp plan` (see ncp/workflow/plan.py).

Each experiment is timed in two fresh processes (multiprocessing "spawn"): one for stage 1 (a few
optimiser steps of the VAE), one for what follows it (encoding, prior walks, SIR and LD per proposal
chunk and step, classifier steps). Weights are random: a step costs the same trained or not. A process's
peak resident memory (or CUDA allocator peak) is its own, so stage 1's peak is not hidden by another's.
On the CPU stage 1 is timed at a small batch and scaled linearly to the real one (a CPU's step time is
close to linear in the batch); on a GPU at the real batch, where it is not.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import time

import numpy
import torch

TIMED_STEPS = 2  # after one warm-up step: enough to see the steady cost, cheap at paper sizes


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _timed(fn, device: torch.device, repeats: int = 1, warm_up: bool = True) -> float:
    """Mean wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up call (unless not asked)."""
    if warm_up:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def _build(params: dict, device: torch.device):
    from ncp.config import ExperimentConfig
    from ncp.models.registry import build_vae

    # As a stage gets them: no experiment name (a sub-experiment's is a path, which the schema's name
    # pattern refuses; stages never read it) and the run settings in `run`.
    cfg = ExperimentConfig.from_params({k: v for k, v in params.items() if k != "experiment"})
    args = dataclasses.asdict(cfg.vae.backbone)
    if cfg.vae.arch == "mlp":  # its training mean is a buffer; any image will do for timing
        args = {**args, "data_mean": torch.full((1, 32, 32), 0.5)}
    started = time.perf_counter()
    model = build_vae(cfg.vae.arch, args).to(device)
    return cfg, model, time.perf_counter() - started


def _random_batch(cfg, model, size: int, device: torch.device) -> torch.Tensor:
    from ncp.workflow.plan_jobs import image_shape

    x = torch.rand(size, *image_shape(dict(vars(cfg.data))), device=device)
    return torch.bernoulli(x) if cfg.data.name in ("mnist", "mnist5k", "idx") else x


def held_training_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a training step holds whatever its batch: the gradients and the optimiser's state (Adamax's
    two moments, Adam's two, ...), each the size of the parameters."""
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    state = sum(
        value.nbytes
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    )
    return grads + state


def stage1_peak_at_batch(built_bytes: int, held_bytes: int, timed_peak_bytes: int, scale: float) -> float:
    """Stage 1's peak at ``scale`` times the timed batch: what the built model and its optimiser's state hold
    stays; only the rest, the activations the timed batch kept for its backward pass, grows with the batch.
    (Scaling the whole rise above the built model counted gradients and moments ``scale`` times: 58.9 GB
    priced for the 20-group CelebA-HQ-256 NVAE at batch 4 from its 15.8 GB at batch 1.)"""
    activations = max(timed_peak_bytes - built_bytes - held_bytes, 0)
    return built_bytes + held_bytes + activations * scale


def time_stage1(params: dict, device_name: str, timing_batch: int | None) -> dict:
    """Seconds of stage 1's first and of a steady optimiser step at the real batch, model build time, and
    peak memory."""
    from ncp.train_vae import build_optimizer, train_step

    device = torch.device(device_name)
    cfg, model, build_s = _build(params, device)
    batch = cfg.vae.train.batch_size
    timed = batch if device.type == "cuda" or not timing_batch else min(batch, timing_batch)
    optimizer = build_optimizer(model, cfg.vae.train)
    rss_built = _peak_bytes(device)
    x = _random_batch(cfg, model, timed, device)
    model.train()
    step = lambda: train_step(model, optimizer, x, 1.0, cfg.vae.train, cfg.vae.arch == "nvae")  # noqa: E731
    # the first step is timed on its own: it first touches the optimiser's state and the allocator's
    # memory (a 1.8x slower step at 256x256 on a CPU), which a run of a few steps, such as a smoke's, pays
    first_step_s = _timed(step, device, warm_up=False)
    step_s = _timed(step, device, TIMED_STEPS, warm_up=False)
    peak = _peak_bytes(device)
    held = held_training_bytes(model, optimizer)
    scale = batch / timed
    return {
        "build_s": build_s,
        "vae_step_s": step_s * scale,
        "vae_first_step_s": first_step_s * scale,
        "vae_timed_batch": timed,
        "vae_peak_bytes": stage1_peak_at_batch(rss_built, held, peak, scale),
        "vae_measured_bytes": {"built": rss_built, "held": held, "timed_peak": peak},  # the price's inputs
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def time_stage2(params: dict, device_name: str) -> dict:
    """Seconds per encoded image, per prior walk, per SIR chunk and LD step, per classifier step; shapes."""
    from ncp.models.base import sample_from_prior
    from ncp.priors.classifiers import build_classifier
    from ncp.priors.ncp_prior import NCPPrior
    from ncp.samplers.langevin import LangevinSampler
    from ncp.samplers.sir import SIRSampler

    device = torch.device(device_name)
    cfg, model, _ = _build(params, device)
    result = {"load_s": _checkpoint_load_seconds(model, device)}
    model.eval().requires_grad_(False)  # frozen, as stage 2 loads it: LD's gradients reach only z
    group_shapes, context_shapes = model.group_shapes(), model.context_shapes()
    images = max(1, min(cfg.sample.batch_size, cfg.cache.batch_size, 4 if device.type == "cpu" else 64))
    x = _random_batch(cfg, model, images, device)
    result.update(group_shapes=group_shapes, context_shapes=context_shapes)
    with torch.no_grad():
        result["encode_image_s"] = _timed(lambda: model(x), device) / images
        if cfg.cache.mode == "stream":  # job k's pass stops after group k (LatentVAE.posterior_group)
            result["stream_image_s"] = [s / images for s in _group_pass_seconds(model, x, device)]
        result["base_image_s"] = _timed(lambda: model.walk_prior(images, sample_from_prior), device) / images
    classifiers = [
        build_classifier(g, c, hidden=cfg.nce.hidden, num_blocks=cfg.nce.num_blocks).to(device).eval()
        for g, c in zip(group_shapes, context_shapes)
    ]
    prior = NCPPrior(classifiers)
    prior.freeze()
    # SIR's work is linear in its proposals (chunks only bound its memory): time one chunk of at most the
    # file's M and price a proposal, so a sweep's M = 5 is not billed a whole chunk of 250
    proposals = min(cfg.sample.sir.chunk_size, cfg.sample.sir.num_proposals)
    sir = SIRSampler(prior, num_proposals=proposals, chunk_size=proposals)
    sir_s = _timed(lambda: model.walk_prior(images, sir), device) / images
    result["sir_proposal_s"] = max(0.0, sir_s - result["base_image_s"]) / proposals
    ld = LangevinSampler(prior, num_steps=2, step_size=cfg.sample.ld.step_size)
    ld_s = _timed(lambda: model.walk_prior(images, ld), device) / images
    result["ld_step_s"] = max(0.0, ld_s - result["base_image_s"]) / 2
    result["sample_peak_bytes"] = _peak_bytes(device)
    # one classifier step per distinct group: 2B rows (q and p) through forward, backward and Adam
    steps, classifier_parameters, cost_of = [], [], {}
    for classifier, g, c in zip(classifiers, group_shapes, context_shapes):
        classifier_parameters.append(sum(p.numel() for p in classifier.parameters()))
        if (g, c) not in cost_of:
            cost_of[(g, c)] = _classifier_step_seconds(classifier, g, c, cfg.nce, device)
        steps.append(cost_of[(g, c)])
    result.update(
        nce_step_s=steps, classifier_parameters=classifier_parameters, peak_bytes=_peak_bytes(device)
    )
    return result


def _group_pass_seconds(model, x: torch.Tensor, device: torch.device, points: int = 5) -> list[float]:
    """Seconds of ``model.posterior_group(x, k)`` for every group k: timed at ``points`` groups spread from
    the first to the last, linear in between. Not every group: on a 36-group model the passes of all of
    them add up to ~18 whole forward passes, and the cost grows smoothly down the hierarchy."""
    last = model.num_groups - 1
    timed = sorted({round(i * last / (points - 1)) for i in range(points)})
    model.posterior_group(x, last)  # warm-up, through every cell a pass can reach
    seconds = [_timed(lambda k=k: model.posterior_group(x, k), device, warm_up=False) for k in timed]
    return [float(numpy.interp(k, timed, seconds)) for k in range(last + 1)]


def _checkpoint_load_seconds(model, device: torch.device) -> float:
    """Seconds a stage-2 job spends on the VAE checkpoint: reading the weights and hashing the file (its
    fingerprint); timed on a file of the model's own weights, just written (so read from the page cache)."""
    import tempfile
    from pathlib import Path

    from ncp.priors.checkpoints import vae_fingerprint
    from ncp.runtime import atomic_save

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vae.pt"
        atomic_save(model.state_dict(), path)  # as stage 1 writes it
        started = time.perf_counter()
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        vae_fingerprint(path)
        return time.perf_counter() - started


def _classifier_step_seconds(classifier, group_shape, context_shape, nce, device) -> float:
    import copy

    from torch.nn.functional import binary_cross_entropy_with_logits

    classifier = copy.deepcopy(classifier).train().requires_grad_(True)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=nce.lr)
    rows = 2 * nce.batch_size
    z = torch.randn(rows, *group_shape, device=device)
    context = None if context_shape is None else torch.randn(rows, *context_shape, device=device)
    labels = torch.cat([torch.ones(nce.batch_size), torch.zeros(nce.batch_size)]).to(device)

    def step():
        loss = binary_cross_entropy_with_logits(classifier(z, context), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed(step, device, TIMED_STEPS)


def _child(stage: str, args: tuple, threads: int, queue) -> None:
    from ncp.runtime import set_threads

    ready = time.time()
    # what any job's process holds before its work: the interpreter and torch (prepare_data adds only images)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        set_threads(threads)  # as the jobs do: a job's price is at its own threads
        result = time_stage1(*args) if stage == "stage1" else time_stage2(*args)
        result["baseline_bytes"] = baseline
        result["threads"] = torch.get_num_threads()
        queue.put(("ok", ready, result))
    except Exception as error:  # reported in the parent, which owns the terminal
        queue.put(("error", ready, f"{type(error).__name__}: {error}"))


def time_experiment(params: dict, device: str, timing_batch: int | None) -> dict:
    """Both timing processes for one experiment; ``startup_s`` is a fresh process's start-up and imports."""
    context = multiprocessing.get_context("spawn")
    # Snakemake gives a job run.threads, lowered to --cores: at most this machine's cores
    threads = min(params["run"]["threads"], os.cpu_count() or 1)
    merged = {}
    for stage, args in (("stage1", (params, device, timing_batch)), ("stage2", (params, device))):
        if stage == "stage1" and params["vae"]["init_checkpoint"]:
            continue  # an imported checkpoint: no stage-1 training to time
        queue = context.Queue()
        started = time.time()
        process = context.Process(target=_child, args=(stage, args, threads, queue))
        process.start()
        status, ready, result = queue.get()
        process.join()
        if status != "ok":
            raise RuntimeError(f"ncp plan: timing {stage} of {params['experiment']} failed: {result}")
        merged.setdefault("startup_s", ready - started)
        merged.update(result)
    merged.setdefault("build_s", 0.0)
    merged.setdefault("vae_step_s", 0.0)
    merged.setdefault("vae_first_step_s", 0.0)
    merged.setdefault("vae_peak_bytes", 0.0)
    return merged
