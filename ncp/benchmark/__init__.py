"""`ncp benchmark`: throughput and memory of the project's hot paths on whatever device is present.

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md``. Every figure is the median over
``repeats`` timed runs after a warm-up, with their min and max. The models are the default
experiment's (params/default.yaml) with random weights, plus NVAE's paper MNIST configuration for
stage 1; nothing is read from results/, so the command runs in a fresh clone.

- SIR and Langevin dynamics: whole ancestral draws of 1 and 10 images; SIR for M in 5 ... 5,000. Each
  SIR setting runs in a fresh process so its peak memory (RSS on the CPU, the CUDA allocator's peak on
  a GPU) is its own. The classifier FLOPs (matmuls and convolutions, counted by torch's
  FlopCounterMode) over the time spent inside the classifiers give the achieved FLOP rate, as a
  fraction of the best large-matmul rate measured in the same process just before.
- Stage 1: one optimiser step (forward, backward, Adamax) on random images.
- NCE: training pairs per second per group, and all groups' train-nce jobs through Snakemake with
  --cores 1 and --cores 2: ``nce_parallel_efficiency`` is the ratio of the jobs' spans (first job's
  start to last job's end, from stamps their shells write), which leaves out Snakemake's own start-up;
  the whole commands' wall times are recorded beside it.
- Latent caching: images per second through the frozen VAE.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ncp.benchmark.common import Sizes, device_label, in_fresh_process, matmul_peak_flops
from ncp.benchmark.sampling import ld_records, sir_record
from ncp.benchmark.table import markdown_table, table8_beside_paper
from ncp.benchmark.training import cache_record, nce_parallel, nce_records, stage1_records
from ncp.runtime import atomic_write_text, pick_device, write_json


def run(out_dir: Path, device: str = "auto", quick: bool = False, repeats: int | None = None) -> dict:
    """Measure everything, write ``<out_dir>/<device>.json`` and ``.md``; return the record."""
    sizes = Sizes.quick() if quick else Sizes()
    if repeats is not None:
        sizes = Sizes(**{**sizes.__dict__, "repeats": repeats})
    torch_device = pick_device(device)
    started = time.perf_counter()
    record = {
        "device": device_label(torch_device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": sizes.repeats,
        "load_average_start": os.getloadavg()[0],
        "matmul_peak_gflops": matmul_peak_flops(torch_device) / 1e9,
    }
    print(f"benchmark on {record['device']} ({record['threads']} threads)", flush=True)
    sir = []
    for num_proposals in sizes.sir_proposals:
        for batch in sizes.batches:
            sir.append(in_fresh_process(sir_record, num_proposals, batch, sizes.repeats, str(torch_device)))
            print(f"SIR M={num_proposals} batch={batch}: {sir[-1]['images_per_s']:.3g} img/s", flush=True)
    record["sir"] = sir
    record["ld"] = ld_records(sizes, torch_device)
    print("LD done", flush=True)
    record["stage1"] = stage1_records(sizes, torch_device)
    print("stage 1 done", flush=True)
    record["nce"] = nce_records(sizes, torch_device)
    record["nce_jobs"] = nce_parallel(sizes)
    record["nce_parallel_efficiency"] = (
        record["nce_jobs"]["jobs_span_cores_2_s"] / record["nce_jobs"]["jobs_span_cores_1_s"]
    )
    print("NCE done", flush=True)
    record["cache"] = cache_record(sizes, torch_device)
    record["load_average_end"] = os.getloadavg()[0]
    record["total_s"] = time.perf_counter() - started
    out_dir = Path(out_dir)
    write_json(record, out_dir / f"{record['device']}.json")
    from ncp.paper_results import paper_results

    beside = table8_beside_paper(record, paper_results()["tables"]["table8"])
    atomic_write_text(markdown_table(record) + "\n" + beside, out_dir / f"{record['device']}.md")
    return record


def main(argv: list[str] | None = None) -> int:
    """`ncp benchmark [--out-dir DIR] [--device D] [--quick] [--repeats N]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="ncp benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    record = run(args.out_dir, args.device, args.quick, args.repeats)
    print(json.dumps({"written": str(Path(args.out_dir) / f"{record['device']}.json")}))
    return 0
