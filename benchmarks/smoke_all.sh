#!/usr/bin/env bash
# Run the smoke overlay (params/smoke.yaml) on every paper configuration, one after another, lightest
# first, and record each one's wall time and peak memory (GNU time's largest resident set of any process).
#
#   benchmarks/smoke_all.sh [--out benchmarks/smoke_times.tsv] [--cores N] [--overlay <file.yaml> ...] \
#       [params/paper/<file>.yaml ...]
#
# --overlay adds a params file after params/smoke.yaml (repeatable): params/test/smoke_m50.yaml draws the
# main SIR at M = 50, which a CPU can finish through 30 groups (M = 5,000 takes ~27 CPU-minutes an image).
# Each smoke starts from an empty results/smoke/ (a smoke of one file must not see another's outputs).
# A file that fails stops nothing: its row says "failed" and its log stays in benchmarks/smoke_logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

out=benchmarks/smoke_times.tsv
cores=all
files=()
overlays=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --cores) cores="$2"; shift 2 ;;
    --overlay) overlays+=("$2"); shift 2 ;;
    *) files+=("$1"); shift ;;
  esac
done
if [[ ${#files[@]} -eq 0 ]]; then
  # lightest first (single-group and MNIST models, then the hierarchical NVAEs by image size and groups)
  files=(
    params/paper/mnist_mlp_table2.yaml
    params/paper/celeba64_conv_table1_gmm.yaml
    params/paper/celeba64_conv_table1_gaussian.yaml
    params/paper/mnist_nvae.yaml
    params/paper/cifar10_nvae.yaml
    params/paper/celeba64_nvae_official.yaml
    params/paper/celebahq256_nvae_20groups.yaml
    params/paper/celebahq256_nvae_official.yaml
    params/paper/celeba64_nvae_30groups.yaml
  )
fi
[[ -x /usr/bin/time ]] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }

mkdir -p benchmarks/smoke_logs
[[ -f "$out" ]] || printf 'file\tstatus\twall_s\tcpu_s\tpeak_rss_mib\tjobs\tload_avg_1min\tdate\n' > "$out"
for file in "${files[@]}"; do
  name=$(basename "$file" .yaml)
  log=benchmarks/smoke_logs/$name.log
  rm -rf results/smoke
  load=$(cut -d' ' -f1 /proc/loadavg)
  started=$(date +%s.%N)
  if /usr/bin/time -v -o "benchmarks/smoke_logs/$name.time" \
      snakemake --cores "$cores" --configfile "$file" params/smoke.yaml "${overlays[@]}" > "$log" 2>&1; then
    status=ok
  else
    status=failed
  fi
  wall=$(python -c "import time; print(f'{time.time() - $started:.0f}')")
  rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "benchmarks/smoke_logs/$name.time")
  # user + system seconds of every process: what an idle 2-core machine would need, at most, in CPU time
  cpu=$(awk -F': ' '/User time|System time/ {sum += $2} END {printf "%.0f", sum}' "benchmarks/smoke_logs/$name.time")
  jobs=$(grep -oE '[0-9]+ of [0-9]+ steps' "$log" | tail -1 | cut -d' ' -f3 || true)
  label=$file
  for overlay in "${overlays[@]}"; do label="$label + $overlay"; done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$status" "$wall" "$cpu" "$((rss_kib / 1024))" "$jobs" "$load" \
    "$(date -u +%FT%TZ)" >> "$out"
  echo "$label: $status in ${wall} s (${cpu} CPU-s), peak RSS $((rss_kib / 1024)) MiB (load before: $load)"
done
