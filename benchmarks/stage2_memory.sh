#!/usr/bin/env bash
# Stage 2's memory against the number of (q, p) pairs: the embedded default's DAG up to the classifiers,
# with cache.passes 1 and 8 (4,500 and 36,000 pairs per group), and a Markdown table of each job's peak
# from the rules' `benchmark:` files (Snakemake's max_rss) and, for train_nce, the job's own peak
# (ru_maxrss, in its metrics file).
#
#   benchmarks/stage2_memory.sh [--shard-mb 4]
#
# Why 4 MiB shards: memory is bounded by the buffers (cache-latents: one shard per group; train-nce:
# nce.buffer_shards = 8 shards), so the comparison means something only if the 1x cache already fills
# them. The default's 64 MiB shards make a 512 MiB read window, larger than a whole group at 1x (80 MB),
# so there the buffer itself grows with the pairs up to its bound. Stage 1 runs 2 steps (memory does not
# depend on the weights); the NCE jobs one epoch. Outputs: results/s2mem_p1/, results/s2mem_p8/.
set -euo pipefail
cd "$(dirname "$0")/.."

shard_mb=4
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shard-mb) shard_mb="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

overlays=$(mktemp -d)
trap 'rm -rf "$overlays"' EXIT
for passes in 1 8; do
  cat > "$overlays/p$passes.yaml" <<EOF
experiment: s2mem_p$passes
paper: {tables: [table6, table9], experiments: {table2: [], table7: []}, table8: {sir_num_proposals: [], ld_num_steps: []}}
vae: {train: {max_steps: 2}}
cache: {passes: $passes, shard_mb: $shard_mb}
nce: {epochs: 1}
EOF
  rm -rf "results/s2mem_p$passes"
  snakemake --cores 2 --configfile "$overlays/p$passes.yaml" --until train_nce > "$overlays/p$passes.log" 2>&1 \
    || { tail -20 "$overlays/p$passes.log" >&2; exit 1; }
done

python - "$shard_mb" <<'EOF'
import csv
import json
import sys
from pathlib import Path


def benchmark_mb(experiment, job):
    rows = list(csv.DictReader(open(f"results/{experiment}/benchmarks/{job}.tsv"), delimiter="\t"))
    return float(rows[-1]["max_rss"])


def own_mb(experiment, group):
    record = json.loads(Path(f"results/{experiment}/metrics/nce/group_{group}.json").read_text())
    return record["provenance"]["peak_rss_bytes"] / 2**20


def pairs(experiment, group):
    index = json.loads(Path(f"results/{experiment}/latents/group_{group}/index.json").read_text())
    shards = Path(f"results/{experiment}/latents/group_{group}")
    size = sum(f.stat().st_size for f in shards.glob("shard_*.pt"))
    return index["num_pairs"], size / 2**20


groups = sorted(int(p.name.split("_")[1]) for p in Path("results/s2mem_p1/latents").glob("group_*"))
print(f"shard_mb {sys.argv[1]}; peak RSS in MB (Snakemake's max_rss / the job's own ru_maxrss)\n")
print("| job | pairs per group (1x / 8x) | cache on disk MB (1x / 8x) | 1x | 8x | ratio |")
print("|---|---|---|---:|---:|---:|")
a, b = benchmark_mb("s2mem_p1", "cache_latents"), benchmark_mb("s2mem_p8", "cache_latents")
disk = [sum(pairs(e, k)[1] for k in groups) for e in ("s2mem_p1", "s2mem_p8")]
n = [pairs(e, 0)[0] for e in ("s2mem_p1", "s2mem_p8")]
print(f"| cache_latents ({len(groups)} groups) | {n[0]:,} / {n[1]:,} | {disk[0]:.0f} / {disk[1]:.0f} "
      f"| {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
for k in groups:
    (n1, d1), (n8, d8) = pairs("s2mem_p1", k), pairs("s2mem_p8", k)
    a, b = benchmark_mb("s2mem_p1", f"train_nce_{k}"), benchmark_mb("s2mem_p8", f"train_nce_{k}")
    c, d = own_mb("s2mem_p1", k), own_mb("s2mem_p8", k)
    print(f"| train_nce group {k} | {n1:,} / {n8:,} | {d1:.0f} / {d8:.0f} | {a:,.0f} / {c:,.0f} "
          f"| {b:,.0f} / {d:,.0f} | {b / a:.2f} / {d / c:.2f} |")
EOF
