"""Stage-1 training step, ours against NVAE's reference implementation, on the same CPU in one process.

    python benchmarks/nvae_side_by_side.py --nvae-repo <clone of NVlabs/NVAE> [--configs mnist_tiny,paper_mnist]

Each configuration's architecture is NVAE's own argparse values, read from the reference fixtures
(../shared/fixtures/nvae: `mnist_tiny_args.json`, and `nvae_paper_state_dict_shapes.json`'s MNIST entry).
One step is forward + backward + Adamax on a batch of 16 random binary 32x32 images with KL weight 1:
ours through `ncp.train_vae.train_step` (channels-last, as stage 1 trains on the CPU), NVAE's through its
`AutoEncoder`, `reconstruction_loss`, `kl_balancer` and its spectral and BatchNorm regularisers, as its
train.py assembles them. The two alternate (`--alternations` turns of `--steps` steps each) so that a
change in the machine's load falls on both; each turn prints both medians and the ratio.

NVAE's code is imported from the clone, never copied: to run it on a CPU this script makes `.cuda()` a
no-op, stubs `tensorboardX`, and replaces its CUDA-only fused BatchNorm-Swish by the same function in
plain torch ops. Not a test: figures depend on the machine (README, Performance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nvae"


def nvae_step(nvae_repo: Path, args: dict, x: torch.Tensor):
    """One reference NVAE training step as a closure (the model and optimiser built once)."""
    sys.modules.setdefault("tensorboardX", types.SimpleNamespace(SummaryWriter=object))
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(nvae_repo))
    try:
        import model as nvae_model
        import thirdparty.inplaced_sync_batchnorm as nvae_bn
        import utils as nvae_utils
    finally:
        sys.path.pop(0)

    def bn_swish(self, inputs):  # the fused CUDA kernel's function: BatchNorm, then x * sigmoid(x)
        y = F.batch_norm(
            inputs, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip
        return y * torch.sigmoid(y)

    nvae_bn.SyncBatchNormSwish.forward = bn_swish
    torch.manual_seed(0)
    namespace = types.SimpleNamespace(**{"num_x_bits": 8, "num_mixture_dec": 10, **args})
    model = nvae_model.AutoEncoder(namespace, None, nvae_utils.get_arch_cells(args["arch_instance"])).train()
    optimizer = torch.optim.Adamax(model.parameters(), 1e-2, weight_decay=3e-4, eps=1e-3)

    def step():
        logits, _, _, kl_all, _ = model(x)
        recon = nvae_utils.reconstruction_loss(model.decoder_output(logits), x, crop=model.crop_output)
        balanced_kl, _, _ = nvae_utils.kl_balancer(kl_all, 1.0, kl_balance=True, alpha_i=None)
        norm_loss = model.spectral_norm_parallel() + model.batchnorm_loss()
        loss = torch.mean(recon + balanced_kl) + args.get("weight_decay_norm", 1e-2) * norm_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def our_step(args: dict, x: torch.Tensor):
    """One training step of this project's NVAE as stage 1 runs it on the CPU."""
    from ncp.config import ExperimentConfig
    from ncp.models.nvae import NVAE
    from ncp.models.nvae.config import split_training_flags
    from ncp.params import resolve_params
    from ncp.train_vae import build_optimizer, train_step

    train = ExperimentConfig.from_params(resolve_params({})).vae.train
    torch.manual_seed(0)
    model = NVAE.from_args(split_training_flags(args)[0]).train().to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train)
    x = x.contiguous(memory_format=torch.channels_last)
    return lambda: train_step(model, optimizer, x, 1.0, train)


def architecture(name: str) -> dict:
    if name == "mnist_tiny":
        path = FIXTURES / "mnist_tiny_args.json"
        return json.loads(path.read_text())["args"] if path.is_file() else _missing(path)
    path = FIXTURES / "nvae_paper_state_dict_shapes.json"
    return json.loads(path.read_text())["mnist"]["args"] if path.is_file() else _missing(path)


def _missing(path: Path):
    sys.exit(f"nvae_side_by_side: {path} is missing (the reference fixtures sit beside the project)")


def median_seconds(step, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvae-repo", type=Path, required=True, help="a clone of NVlabs/NVAE")
    parser.add_argument("--configs", default="mnist_tiny,paper_mnist")
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    options = parser.parse_args()
    if not (options.nvae_repo / "model.py").is_file():
        sys.exit(f"nvae_side_by_side: {options.nvae_repo} is not a clone of NVlabs/NVAE (no model.py)")
    for name in options.configs.split(","):
        args = architecture(name)
        x = torch.rand(16, 1, 32, 32).round()
        ours, theirs = our_step(args, x), nvae_step(options.nvae_repo, args, x)
        ours(), theirs()  # warm-up (and NVAE's spectral-norm vectors)
        medians = {"ours": [], "nvae": []}
        for turn in range(options.alternations):
            medians["ours"].append(median_seconds(ours, options.steps))
            medians["nvae"].append(median_seconds(theirs, options.steps))
            o, r = medians["ours"][-1], medians["nvae"][-1]
            print(f"{name} turn {turn}: ours {o * 1e3:.0f} ms, NVAE {r * 1e3:.0f} ms, speed-up {r / o:.2f}x")
        o, r = statistics.median(medians["ours"]), statistics.median(medians["nvae"])
        print(f"{name}: median ours {o * 1e3:.0f} ms, NVAE {r * 1e3:.0f} ms -> {r / o:.2f}x", flush=True)


if __name__ == "__main__":
    main()
