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
from ncp.runtime import atomic_save, load_torch, pick_device, seed_everything

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


def nvae_arch_args(vae: VAEConfig, data: DataConfig) -> dict:
    """NVAE's arguments for this dataset: the params' `vae.nvae` with the dataset filled in."""
    dataset_for = {
        "mnist5k": "mnist",
        "mnist": "mnist",
        "idx": "mnist",
        "cifar10": "cifar10",
        "celeba64": "celeba_64",
    }
    args = dict(vae.nvae)
    if "dataset" not in args:  # a dataset without an NVAE name must give vae.nvae.dataset itself
        if data.name not in dataset_for:
            raise ValueError(f"set vae.nvae.dataset: NVAE has no dataset name for data.name {data.name!r}")
        args["dataset"] = dataset_for[data.name]
    return args


def training_mean_image(train_set) -> torch.Tensor:
    """Mean training image (C, H, W) of pixel / 255: for binary data, the mean of the Bernoulli
    probabilities dynamic binarisation draws from (the IWAE-paper init of the MLP VAE)."""
    total = torch.zeros(train_set.images.shape[1:], dtype=torch.float64)
    for start in range(0, len(train_set.images), 10_000):  # chunks: no float copy of the whole set
        total += train_set.images[start : start + 10_000].to(torch.float64).sum(dim=0)
    return (total / (255.0 * len(train_set.images))).float()


def arch_args_for(vae: VAEConfig, data: DataConfig) -> dict:
    """Constructor arguments of the configured backbone."""
    if vae.arch == "nvae":
        return nvae_arch_args(vae, data)
    return dict(vae.mlp if vae.arch == "mlp" else vae.conv)


def vae_loss(
    model, x: torch.Tensor, beta: float, train: VAETrainConfig, is_nvae: bool, noise_scale: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """Negative ELBO with KL weight ``beta`` (balanced across groups for NVAE) plus NVAE's regulariser.

    ``model`` may be wrapped in DistributedDataParallel: the forward pass goes through the wrapper (which
    synchronises gradients), everything else acts on the model inside it.
    """
    core = distributed.unwrap(model)
    output = model(x, noise_scale=noise_scale)
    recon = -core.log_px(output.logits, x)  # (B,)
    kl_per_group = output.kl  # (B, K)
    if is_nvae and train.kl_balance and beta < 1.0 and kl_per_group.shape[1] > 1:
        from ncp.models.nvae import kl_balance_coefficients

        # Per process, from its own batch, as NVAE's kl_balancer does.
        coefficients = kl_balance_coefficients(kl_per_group, core.kl_alpha())  # (K,), detached
        kl_term = beta * (kl_per_group * coefficients).sum(dim=1)
    else:
        kl_term = beta * kl_per_group.sum(dim=1)
    loss = (recon + kl_term).mean()
    stats = {"recon": recon.mean().item(), "kl": kl_per_group.sum(dim=1).mean().item()}
    if is_nvae and train.weight_decay_norm > 0:
        regulariser = core.spectral_loss() + core.batchnorm_loss()
        loss = loss + train.weight_decay_norm * regulariser
        stats["reg"] = regulariser.item()
    stats["neg_elbo"] = stats["recon"] + stats["kl"]
    return loss, stats


def train_step(
    model,
    optimizer,
    x: torch.Tensor,
    beta: float,
    train: VAETrainConfig,
    is_nvae: bool,
    noise_scale: float = 1.0,
) -> dict:
    """One optimiser step on batch ``x`` (gradients averaged over processes under DDP); returns the loss stats."""
    loss, stats = vae_loss(model, x, beta, train, is_nvae, noise_scale)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite stage-1 loss: lower vae.train.lr or raise weight_decay_norm")
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
) -> Iterator[torch.Tensor]:
    """One epoch of this process's float batches (batch_size, C, H, W).

    Every process shuffles with the same generator state and draws the binarisation of the whole
    global batch before taking its slot, so the generators stay in step and N processes see exactly
    the data one process with an N times larger batch would (on one process: iterate_batches).
    """
    order = torch.randperm(len(train_set.images), generator=generator)
    for step_indices in distributed.split_batch_order(order, batch_size, num_processes):  # (P, B) per step
        global_batch = prepare_batch(train_set.images[step_indices.flatten()], train_set.binary, generator)
        yield global_batch[process_rank * batch_size : (process_rank + 1) * batch_size]


def _optimizer(model, train: VAETrainConfig) -> torch.optim.Optimizer:
    # foreach: one multi-tensor update instead of a loop over NVAE's 240-1,300 parameters (on the CPU
    # the paper MNIST model's Adamax step measured 0.71 s against 0.86 s; the same arithmetic)
    if train.optimizer == "adamax":  # NVAE: Adamax with eps 1e-3 and L2 weight decay
        return torch.optim.Adamax(
            model.parameters(), lr=train.lr, eps=1e-3, weight_decay=train.weight_decay, foreach=True
        )
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, foreach=True)


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
    params = {
        "seed": seed,
        "device": device,
        "data": dataclasses.asdict(data),
        "vae": dataclasses.asdict(vae),
    }
    return [
        "train-vae",
        "--params-json",
        json.dumps(params),
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
    arch_args = arch_args_for(vae, data)
    # The MLP VAE centres its input on the training mean and starts its decoder bias at logit(mean).
    # The mean travels in the state dict (a buffer), so the saved arch_args stay plain values.
    build_args = (
        {**arch_args, "data_mean": training_mean_image(train_set)} if vae.arch == "mlp" else arch_args
    )
    model = build_vae(vae.arch, build_args)
    if num_processes > 1:
        # BatchNorm statistics over the global batch, as NVAE. Only on GPUs: torch's SyncBatchNorm rejects
        # CPU tensors (checked with torch 2.x and gloo), so CPU processes keep per-process BatchNorm.
        if torch_device.type == "cuda":
            model = distributed.convert_sync_batchnorm(model)
        # Own reparameterisation noise per process (NVAE reuses one seed); weights are equal already.
        torch.manual_seed(seed + process_rank)
    memory_format = training_memory_format(vae.arch, torch_device)
    model = model.to(torch_device, memory_format=memory_format)
    optimizer = _optimizer(model, vae.train)
    global_batch = vae.train.batch_size * num_processes
    if len(train_set.images) < global_batch:  # drop_last would give no batch at all
        raise ValueError(
            f"{len(train_set.images)} training images do not fill one batch of "
            f"{vae.train.batch_size} per process x {num_processes} processes"
        )
    steps_per_epoch = math.ceil(len(train_set.images) / global_batch)
    total_steps = vae.train.epochs * steps_per_epoch
    warmup_steps = int(vae.train.warmup_epochs * steps_per_epoch)

    step, history = 0, []
    resume_path = work_dir / RESUME_FILE
    if resume_path.is_file():  # every process reads what rank 0 wrote
        state = load_torch(resume_path)
        if (
            state["arch_args"] == arch_args
            and state["total_steps"] == total_steps
            and state.get("num_processes", 1) == num_processes
        ):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step, history = state["step"], state["history"]
            if is_main:
                print(f"resuming stage-1 training at step {step}/{total_steps} from {resume_path}")
    network = distributed.wrap_model(
        model, torch_device
    )  # DDP when distributed: forward + backward go through it

    model.train()
    started = time.time()
    progress = tqdm(total=total_steps, initial=step, desc="train-vae", mininterval=2.0, disable=not is_main)
    while step < total_steps:
        # Each epoch is a fresh shuffle (and fresh binarisation) from the saved generator state.
        for x in epoch_batches(train_set, vae.train.batch_size, generator, process_rank, num_processes):
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, warmup_steps, vae.train.lr, vae.train.lr_min)
            beta = kl_weight(
                step,
                total_steps,
                vae.train.kl_anneal_portion,
                vae.train.kl_const_portion,
                vae.train.kl_const_coeff,
            )
            x = x.to(torch_device, memory_format=memory_format)
            stats = train_step(network, optimizer, x, beta, vae.train, vae.arch == "nvae")
            step += 1
            progress.update(1)
            if step % 20 == 0 or step == total_steps:
                stats = distributed.mean_over_processes(stats, torch_device)  # every process, same steps
                history.append({"step": step, "beta": beta, **stats})
                progress.set_postfix(neg_elbo=f"{stats['neg_elbo']:.1f}", kl=f"{stats['kl']:.1f}")
            if is_main and step % vae.train.checkpoint_every == 0 and step < total_steps:
                atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "step": step,
                        "history": history,
                        "arch_args": arch_args,
                        "total_steps": total_steps,
                        "num_processes": num_processes,
                    },
                    resume_path,
                )
    progress.close()
    model.eval()
    if is_main:
        if vae.arch != "nvae" and vae.base_prior == "gmm":
            _fit_gmm_base_prior(model, train_set, vae.gmm_components, seed, torch_device)
        save_vae_checkpoint(
            model,
            vae.arch,
            arch_args,
            out,
            training={
                "steps": step,
                "seconds": time.time() - started,
                "history": history,
                "num_processes": num_processes,
            },
        )
        if resume_path.exists():
            resume_path.unlink()
    distributed.barrier()  # the other processes wait until the checkpoint is written


@torch.no_grad()
def _fit_gmm_base_prior(model, train_set, num_components: int, seed: int, device) -> None:
    """RAE's second stage: a Gaussian mixture fitted to the posterior means becomes the base prior."""
    from ncp.priors.gmm import fit_gmm_prior

    means = []
    generator = torch.Generator().manual_seed(seed)
    for x in iterate_batches(train_set, 500, shuffle=False, generator=generator):
        means.append(model(x.to(device), noise_scale=0.0).latents[0].cpu())
    model.set_base_prior(fit_gmm_prior(torch.cat(means), num_components, seed))
