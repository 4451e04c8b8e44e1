"""How `ncp plan` prices stage 1's peak memory at larger batches from a step timed at a small one (CPU).

    python benchmarks/plan_stage1_memory.py params/default.yaml params/paper/celebahq256_nvae_20groups.yaml \
        params/smoke.yaml params/test/smoke_m50.yaml params/test/smoke_batch2.yaml --timed-batch 1 --batches 2 4

Runs the plan's own stage-1 timing (``plan_timing.time_stage1``: real optimiser steps at ``--timed-batch``)
in this process, then prints the built and held bytes, the timed peak, and for each of ``--batches`` the
plan's price (``stage1_peak_at_batch``: only the activations grow) beside the old price (the whole rise
above the built model grown). Compare with a measured run at that batch (a `benchmark:` file or GNU time).
"""

import argparse
import json

import torch

from ncp.params import load_params_files
from ncp.workflow import plan_timing

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("params", nargs="+", help="params files, in overlay order (params/default.yaml first)")
parser.add_argument("--timed-batch", type=int, default=1)
parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
args = parser.parse_args()

torch.set_num_threads(1)  # the smoke's jobs run one thread
measured = plan_timing.time_stage1(load_params_files(args.params), "cpu", args.timed_batch)[
    "vae_measured_bytes"
]
built, held, peak = measured["built"], measured["held"], measured["timed_peak"]
GB = 1e9
report = {"built_GB": built / GB, "held_GB": held / GB, f"peak_at_batch_{args.timed_batch}_GB": peak / GB}
for batch in args.batches:
    scale = batch / args.timed_batch
    report[f"plan_batch_{batch}_GB"] = plan_timing.stage1_peak_at_batch(built, held, peak, scale) / GB
    report[f"old_price_batch_{batch}_GB"] = (built + (peak - built) * scale) / GB
print(json.dumps({key: round(value, 2) for key, value in report.items()}, indent=1))
