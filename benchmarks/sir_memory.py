"""Benchmark: SIR's peak memory and time against the number of proposals M (paper Table 8).

Each M runs in a fresh process so the peak resident memory (ru_maxrss) belongs to that M alone; on a
GPU the peak of torch's allocator is reported too. The sampler scores proposals in chunks and keeps a
running Gumbel-max winner, so memory should stay flat as M grows while time grows linearly.

    python benchmarks/sir_memory.py                      # a 4-group NVAE-shaped toy, CPU
    python benchmarks/sir_memory.py --checkpoint results/default/vae/checkpoint.pt \
        --classifiers results/default/nce/group_*.pt --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace, num_proposals: int) -> dict:
    """Sample ``args.images`` images with M = ``num_proposals``; return time and peak memory."""
    import torch

    from ncp.models.registry import load_vae_checkpoint
    from ncp.priors.checkpoints import load_ncp_prior
    from ncp.samplers.sir import SIRSampler

    device = torch.device(args.device)
    model = load_vae_checkpoint(args.checkpoint, device)
    prior = load_ncp_prior(args.classifiers, device)
    sampler = SIRSampler(prior, num_proposals=num_proposals, chunk_size=args.chunk_size)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.no_grad():
        model.walk_prior(args.images, sampler)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "num_proposals": num_proposals,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="results/default/vae/checkpoint.pt")
    parser.add_argument(
        "--classifiers", nargs="+", default=[f"results/default/nce/group_{k}.pt" for k in range(4)]
    )
    parser.add_argument("--proposals", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one M and print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    print(f"{'M':>6} {'seconds':>9} {'peak RSS MiB':>13} {'peak CUDA MiB':>14}")
    for m in args.proposals:
        command = [
            sys.executable,
            __file__,
            "--one",
            str(m),
            "--checkpoint",
            args.checkpoint,
            "--classifiers",
            *args.classifiers,
            "--images",
            str(args.images),
            "--chunk-size",
            str(args.chunk_size),
            "--device",
            args.device,
        ]
        row = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        cuda = "-" if row["peak_cuda_mib"] is None else f"{row['peak_cuda_mib']:.1f}"
        print(f"{m:>6} {row['seconds']:>9.2f} {row['peak_rss_mib']:>13.1f} {cuda:>14}")


if __name__ == "__main__":
    main()
