"""Stage 1 (`ncp train-vae`): train the backbone VAE with its base prior.

NVAE's recipe (Vahdat & Kautz 2020, train.py): Adamax, linear LR warm-up then cosine decay, a KL weight
that ramps from ``kl_const_coeff`` to 1 over the first ``kl_anneal_portion`` of training, KL balancing
across groups while that weight is below 1, and spectral + BatchNorm regularisation. Resume state is
written every ``checkpoint_every`` steps to an undeclared work folder, so a killed job resumes; only the
final checkpoint is the rule's output.

With ``num_processes`` N > 1 the job re-runs itself under torchrun: DistributedDataParallel with
``batch_size`` per process (as NVAE), each process training on its slot of every shared-seed global
batch; rank 0 alone writes the resume state, the logs and the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from ncp import distributed
from ncp.config import DataConfig, VAEConfig, VAETrainConfig
from ncp.data import ImageSet, iterate_batches, load_image_set, prepare_batch
from ncp.models.registry import build_vae, load_vae_checkpoint, save_vae_checkpoint
from ncp.runtime import atomic_save, pick_device, seed_everything
from ncp.training_state import (
    NonFiniteLoss,
    TrainingState,
    fault_location,
    read_resume_file,
    roll_back_after_fault,
)

RESUME_FILE = "resume.pt"


def learning_rate(step: int, total_steps: int, warmup_steps: int, lr: float, lr_min: float) -> float:
    """LR at ``step``: (1) linear warm-up from 0 to ``lr``; (2) cosine decay from ``lr`` to ``lr_min``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def kl_weight(
    step: int, total_steps: int, anneal_portion: float, const_portion: float, min_coeff: float
) -> float:
    """NVAE's KL warm-up: beta = clamp((step - c T) / (a T), min_coeff, 1)."""
    if anneal_portion <= 0:
        return 1.0
    beta = (step - const_portion * total_steps) / (anneal_portion * total_steps)
    return max(min(beta, 1.0), min_coeff)


def vae_loss(
    model, x: torch.Tensor, beta: float, train: VAETrainConfig, noise_scale: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """Negative ELBO with KL weight ``beta`` plus the backbone's regulariser; the backbone decides how
    its KL is weighted (NVAE balances it across groups) and what its regulariser is (``ncp.models.base``).

    ``model`` may be wrapped in DistributedDataParallel: the forward pass goes through the wrapper (which
    synchronises gradients), everything else acts on the model inside it.
    """
    core = distributed.unwrap(model)
    try:
        output = model(x, noise_scale=noise_scale)
    except ValueError as error:  # torch.distributions refuses NaN parameters before any loss exists
        if "invalid values" not in str(error):
            raise
        raise NonFiniteLoss("in the forward pass (a distribution got NaN parameters)") from None
    recon = -core.log_px(output.logits, x)  # (B,)
    kl_per_group = output.kl  # (B, K)
    kl_term = core.kl_term(kl_per_group, beta, balance=train.kl_balance)  # (B,)
    loss = (recon + kl_term).mean()
    stats = {"recon": recon.mean().item(), "kl": kl_per_group.sum(dim=1).mean().item()}
    regulariser = None
    if train.weight_decay_norm > 0:
        regulariser = core.regulariser()
        loss = loss + train.weight_decay_norm * regulariser
        stats["reg"] = regulariser.item()
    if not torch.isfinite(loss):
        raise NonFiniteLoss(fault_location(recon, kl_per_group, regulariser))
    stats["neg_elbo"] = stats["recon"] + stats["kl"]
    return loss, stats


def train_step(
    model, optimizer, x: torch.Tensor, beta: float, train: VAETrainConfig, noise_scale: float = 1.0
) -> dict:
    """One optimiser step on batch ``x`` (gradients averaged over processes under DDP); returns the loss stats."""
    fault = None
    try:
        loss, stats = vae_loss(model, x, beta, train, noise_scale)
    except NonFiniteLoss as error:
        fault = error
    if distributed.is_distributed():  # all processes roll back together, or none does (no hung all-reduce)
        flag = torch.tensor([float(fault is not None)], device=x.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and fault is None:
            fault = NonFiniteLoss("on another process")
    if fault is not None:
        raise fault
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    return stats


def epoch_batches(
    train_set: ImageSet,
    batch_size: int,
    generator: torch.Generator,
    process_rank: int = 0,
    num_processes: int = 1,
    order: torch.Tensor | None = None,
    start: int = 0,
) -> Iterator[torch.Tensor]:
    """One epoch of this process's float batches (batch_size, C, H, W), from step ``start`` of the
    epoch's shuffled ``order`` (drawn from ``generator`` when not given; a resumed epoch passes its own).

    Every process shuffles with the same generator state and draws the binarisation of the whole
    global batch before taking its slot, so the generators stay in step and N processes see exactly
    the data one process with an N times larger batch would (on one process: iterate_batches).
    """
    if order is None:
        order = torch.randperm(len(train_set.images), generator=generator)
    for step_indices in distributed.split_batch_order(order, batch_size, num_processes)[start:]:  # (P, B)
        global_batch = prepare_batch(train_set.images[step_indices.flatten()], train_set.binary, generator)
        yield global_batch[process_rank * batch_size : (process_rank + 1) * batch_size]


# Above this many parameters a CPU run updates them one tensor at a time (see build_optimizer).
FOREACH_MAX_CPU_PARAMETERS = 50_000_000


def build_optimizer(model, train: VAETrainConfig) -> torch.optim.Optimizer:
    """Stage 1's optimiser (NVAE's Adamax, or Adam), weight decay as the config says."""
    # foreach: one multi-tensor update instead of a loop over NVAE's 240-1,300 parameters (on the CPU
    # the paper MNIST model's Adamax step measured 0.71 s against 0.86 s; the same arithmetic). Its price
    # is temporaries the size of all parameters together (the decayed gradients, their absolute values):
    # 2.6 GB for the 322 M parameters of the CelebA-HQ-256 NVAE, whose CPU smoke (batch 2, 23 GB machine)
    # was killed for memory with foreach and peaked at 21.8 GB without it. Large models on the CPU
    # therefore take the per-tensor loop; GPUs keep foreach.
    parameters = list(model.parameters())
    on_gpu = any(p.device.type == "cuda" for p in parameters)
    foreach = on_gpu or sum(p.numel() for p in parameters) <= FOREACH_MAX_CPU_PARAMETERS
    if train.optimizer == "adamax":  # NVAE: Adamax with eps 1e-3 and L2 weight decay
        return torch.optim.Adamax(
            parameters, lr=train.lr, eps=1e-3, weight_decay=train.weight_decay, foreach=foreach
        )
    return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay, foreach=foreach)


def training_memory_format(arch: str, device: torch.device) -> torch.memory_format:
    """channels_last for NVAE on the CPU, else NCHW.

    oneDNN's depthwise and 1x1 convolution kernels prefer channels-last on the CPU: NVAE steps measured
    1.2-1.3x faster (mnist_tiny, batch 16, median of alternated runs). Not measured on GPUs: NCHW there.
    """
    return torch.channels_last if arch == "nvae" and device.type == "cpu" else torch.contiguous_format


def run(
    data: DataConfig, vae: VAEConfig, seed: int, device: str, train_data: Path, out: Path, work_dir: Path
) -> None:
    """Train the backbone on ``train_data`` and write its final checkpoint to ``out``."""
    out, work_dir = Path(out), Path(work_dir)
    if vae.init_checkpoint:
        # Start from an imported (e.g. official NVAE) checkpoint: stage 1 is skipped, the file is reused.
        load_vae_checkpoint(vae.init_checkpoint)  # fails early and clearly on a wrong file
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vae.init_checkpoint, out)
        return
    if not distributed.launched_by_torchrun():
        if vae.train.num_processes > 1:
            # Same command, N times, under torchrun; this process only waits (it never touches a GPU).
            cli_args = _cli_args(data, vae, seed, device, train_data, out, work_dir)
            distributed.relaunch_under_torchrun(vae.train.num_processes, cli_args)
        else:
            _train(data, vae, seed, pick_device(device), train_data, out, work_dir)
        return
    torch_device = distributed.setup_process_group(device)
    try:
        _train(data, vae, seed, torch_device, train_data, out, work_dir)
    finally:
        distributed.teardown_process_group()


def _cli_args(
    data: DataConfig, vae: VAEConfig, seed: int, device: str, train_data: Path, out: Path, work_dir: Path
) -> list[str]:
    """The `ncp` arguments that run this same stage (the params as JSON, like Snakemake passes them)."""
    vae_section = vae.to_section()
    run = {"device": device, "checkpoint_every": vae.train.checkpoint_every}
    params = {"seed": seed, "run": run, "data": dataclasses.asdict(data), "vae": vae_section}
    return [
        "train-vae",
        "--params-json",
        json.dumps(params),
        "--threads",  # each process gets the parent's threads (ncp.runtime.set_threads exported them)
        os.environ.get("OMP_NUM_THREADS", "1"),
        "--train-data",
        str(train_data),
        "--out",
        str(out),
        "--work-dir",
        str(work_dir),
    ]


def _train(
    data: DataConfig,
    vae: VAEConfig,
    seed: int,
    torch_device: torch.device,
    train_data: Path,
    out: Path,
    work_dir: Path,
) -> None:
    """The training loop, on one process or as one of several (rank 0 alone writes files)."""
    process_rank, num_processes = distributed.rank(), distributed.world_size()
    is_main = process_rank == 0
    generator = seed_everything(seed)  # the same on every process: shared shuffles and binarisation
    train_set = load_image_set(train_data)
    arch_args = dataclasses.asdict(vae.backbone)
    model = build_vae(vae.arch, arch_args)
    # E.g. the MLP VAE's input centring; what it learns travels in the state dict, not in arch_args.
    model.initialise_from_data(train_set.images)
    if num_processes > 1:
        # BatchNorm statistics over the global batch, as NVAE. Only on GPUs: torch's SyncBatchNorm rejects
        # CPU tensors (checked with torch 2.x and gloo), so CPU processes keep per-process BatchNorm.
        if torch_device.type == "cuda":
            model = distributed.convert_sync_batchnorm(model)
        # Own reparameterisation noise per process (NVAE reuses one seed); weights are equal already.
        torch.manual_seed(seed + process_rank)
    memory_format = training_memory_format(vae.arch, torch_device)
    model = model.to(torch_device, memory_format=memory_format)
    _check_images_fit(model, train_set, vae.arch, torch_device)
    optimizer = build_optimizer(model, vae.train)
    global_batch = vae.train.batch_size * num_processes
    if len(train_set.images) < global_batch:  # drop_last would give no batch at all
        raise ValueError(
            f"{len(train_set.images)} training images do not fill one batch of "
            f"{vae.train.batch_size} per process x {num_processes} processes"
        )
    steps_per_epoch = math.ceil(len(train_set.images) / global_batch)
    total_steps = vae.train.epochs * steps_per_epoch
    if vae.train.max_steps is not None:  # a smoke run: a few steps at the full architecture
        total_steps = min(total_steps, vae.train.max_steps)
    warmup_steps = int(vae.train.warmup_epochs * steps_per_epoch)

    # What a resume file must match to be used: anything else trains from scratch.
    settings = {
        "arch_args": arch_args,
        "train": dataclasses.asdict(vae.train),
        "seed": seed,
        "num_images": len(train_set.images),
        "num_processes": num_processes,
    }
    run_state = TrainingState(model=model, optimizer=optimizer, generator=generator)
    resume_path = work_dir / RESUME_FILE
    saved = read_resume_file(resume_path, settings) if resume_path.is_file() else None
    if saved is not None:  # every process reads what rank 0 wrote
        # The global random states are rank 0's: the others re-seed (exact resume is single-process).
        run_state.restore(saved, restore_global_rng=num_processes == 1)
        if num_processes > 1:
            torch.manual_seed(seed + process_rank + 1000 * run_state.step)
        if is_main:
            print(f"resuming stage-1 training at step {run_state.step}/{total_steps} from {resume_path}")
    network = distributed.wrap_model(
        model, torch_device
    )  # DDP when distributed: forward + backward go through it

    model.train()
    started = time.time()
    last_good = run_state.snapshot()  # in memory: where a non-finite loss rolls back to
    # Closed on every way out (a stop after bounded roll-backs too), so no bar is printed at exit.
    with tqdm(
        total=total_steps, initial=run_state.step, desc="train-vae", mininterval=2.0, disable=not is_main
    ) as progress:
        while run_state.step < total_steps:
            if run_state.epoch_order is None:  # a fresh shuffle (and binarisations) from the generator
                run_state.epoch_order = torch.randperm(len(train_set.images), generator=generator)
                run_state.epoch_position = 0
            batches = epoch_batches(
                train_set,
                vae.train.batch_size,
                generator,
                process_rank,
                num_processes,
                order=run_state.epoch_order,
                start=run_state.epoch_position,
            )
            for x in batches:
                if run_state.step >= total_steps:
                    break
                step = run_state.step
                for group in optimizer.param_groups:
                    group["lr"] = run_state.lr_scale * learning_rate(
                        step, total_steps, warmup_steps, vae.train.lr, vae.train.lr_min
                    )
                beta = kl_weight(
                    step,
                    total_steps,
                    vae.train.kl_anneal_portion,
                    vae.train.kl_const_portion,
                    vae.train.kl_const_coeff,
                )
                try:
                    stats = train_step(
                        network, optimizer, x.to(torch_device, memory_format=memory_format), beta, vae.train
                    )
                except NonFiniteLoss as fault:
                    roll_back_after_fault(run_state, last_good, fault, step)
                    progress.n = run_state.step
                    break  # restart the (restored) epoch from its saved position
                run_state.step += 1
                run_state.epoch_position += 1
                progress.update(1)
                if run_state.step % 20 == 0 or run_state.step == total_steps:
                    stats = distributed.mean_over_processes(stats, torch_device)  # every process, same steps
                    run_state.history.append({"step": run_state.step, "beta": beta, **stats})
                    progress.set_postfix(neg_elbo=f"{stats['neg_elbo']:.1f}", kl=f"{stats['kl']:.1f}")
                if run_state.step % vae.train.checkpoint_every == 0 and run_state.step < total_steps:
                    last_good = run_state.snapshot()
                    if is_main:
                        atomic_save({**last_good, "settings": settings}, resume_path)
            else:
                run_state.epoch_order = None  # the epoch ran to its end
    model.eval()
    if is_main:
        if vae.base_prior == "gmm":  # single-group backbones only (VAEConfig checks)
            _fit_gmm_base_prior(model, train_set, vae.gmm_components, seed, torch_device)
        save_vae_checkpoint(
            model,
            vae.arch,
            arch_args,
            out,
            data={"dataset": train_set.name, "synthetic": train_set.synthetic},  # see ncp/provenance.py
            training={
                "steps": run_state.step,
                "rollbacks": run_state.rollbacks,
                "lr_scale": run_state.lr_scale,
                "seconds": time.time() - started,
                "history": run_state.history,
                "num_processes": num_processes,
                # what benchmarks/gpu_check.sh reports: the allocator's peak of this training run
                "peak_cuda_bytes": torch.cuda.max_memory_allocated(torch_device)
                if torch_device.type == "cuda"
                else None,
            },
        )
        if resume_path.exists():
            resume_path.unlink()
    distributed.barrier()  # the other processes wait until the checkpoint is written


def _check_images_fit(model, train_set: ImageSet, arch: str, device: torch.device) -> None:
    """One forward pass on two images, so data of the wrong size or channel count fail at once with one
    line (not deep inside a convolution); random states are left as they were."""
    shape = tuple(train_set.images.shape[1:])
    gpus = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus), torch.no_grad():
        model.eval()
        try:
            model(prepare_batch(train_set.images[:2], train_set.binary).to(device))
        except (RuntimeError, ValueError) as error:
            reason = str(error).splitlines()[0][:160]
            raise ValueError(
                f"training images of shape {shape} do not fit the {arch} VAE of the params ({reason}): "
                f"set vae.{arch} (or data.name) to match the data"
            ) from None
        finally:
            model.train()


@torch.no_grad()
def _fit_gmm_base_prior(model, train_set, num_components: int, seed: int, device) -> None:
    """RAE's second stage: a Gaussian mixture fitted to the posterior means becomes the base prior."""
    from ncp.priors.gmm import fit_gmm_prior

    means = []
    generator = torch.Generator().manual_seed(seed)
    for x in iterate_batches(train_set, 500, shuffle=False, generator=generator):
        means.append(model(x.to(device), noise_scale=0.0).latents[0].cpu())
    model.set_base_prior(fit_gmm_prior(torch.cat(means), num_components, seed))
