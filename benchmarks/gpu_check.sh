#!/usr/bin/env bash
# The CelebA-64 30-group smoke (params/paper/celeba64_nvae_30groups.yaml + params/smoke.yaml) on one device,
# with per-stage times and peak memory, and `ncp plan`'s estimates beside them: run it first on a GPU
# machine, before spending days on the paper's run.
#
#   benchmarks/gpu_check.sh                      # on cuda (fails if there is none)
#   benchmarks/gpu_check.sh --device cpu         # the same on the CPU
#   benchmarks/gpu_check.sh --target results/gpu_check/vae/checkpoint.pt   # stop after one output (partial run)
#   benchmarks/gpu_check.sh --no-plan                                       # without `ncp plan` beside it
#
# Writes benchmarks/gpu_check_<device>.md: every Snakemake job's wall seconds and peak resident memory
# (its benchmark file), the CUDA allocator peaks the stages record, and the plan's estimate per job.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
target=()
with_plan=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --target) target+=("$2"); shift 2 ;;
    --no-plan) with_plan=0; shift ;;
    *) echo "unknown argument $1 (expected --device cpu|cuda[:N], --target <output file>, --no-plan)" >&2; exit 2 ;;
  esac
done
if [[ "$device" == cuda* ]] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; use --device cpu to run on the CPU" >&2
  exit 1
fi

paper=params/paper/celeba64_nvae_30groups.yaml
overlay=$(mktemp --suffix=.yaml)
trap 'rm -f "$overlay"' EXIT
# its own results folder, so a smoke_all.sh run beside it is left alone
printf 'experiment: gpu_check\nrun:\n  device: "%s"\n' "$device" > "$overlay"
report=benchmarks/gpu_check_${device%%:*}.md
log=benchmarks/smoke_logs/gpu_check_${device%%:*}.log
mkdir -p benchmarks/smoke_logs
rm -rf results/gpu_check

gpus=$([[ "$device" == cuda* ]] && echo 1 || echo 0)
started=$(date +%s)
# targets first: --configfile takes every word after it
/usr/bin/time -v -o "$log.time" snakemake "${target[@]}" --cores all --resources gpu="$gpus" \
  --configfile "$paper" params/smoke.yaml "$overlay" > "$log" 2>&1 || {
  echo "gpu_check: snakemake failed; see $log" >&2
  tail -20 "$log" >&2
  exit 1
}
wall=$(( $(date +%s) - started ))

if [[ $with_plan == 1 ]]; then
  ncp plan --configfile "$paper" params/smoke.yaml "$overlay" --device "$device" --compare results > "$report.plan" 2>&1 || true
else
  echo "(ncp plan skipped: --no-plan)" > "$report.plan"
fi

python - "$report" "$device" "$wall" "$log.time" "$report.plan" <<'PY'
import csv, sys
from pathlib import Path

import torch

report, device, wall, time_file, plan_file = sys.argv[1:]
rows = []
for path in sorted(Path("results/gpu_check").rglob("benchmarks/*.tsv")):
    with open(path) as handle:
        record = next(csv.DictReader(handle, delimiter="\t"))
    rows.append(f"| {path.parent.parent.relative_to('results')} | {path.stem} | {float(record['s']):.1f} | "
                f"{float(record['max_rss']):.0f} | {float(record['cpu_time']):.1f} |")
cuda = []
for path in sorted(Path("results/gpu_check").rglob("samples/*.pt")):
    record = torch.load(path, map_location="cpu", weights_only=True)
    cuda.append(f"| {path.relative_to('results')} | {record['memory_kind']} | {record['peak_memory_bytes'] / 2**20:.0f} | "
                f"{record.get('time_1_s', float('nan')):.2f} |")
checkpoint = Path("results/gpu_check/vae/checkpoint.pt")
stage1 = ""
if checkpoint.is_file():
    training = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("training", {})
    peak = training.get("peak_cuda_bytes")
    stage1 = (f"stage 1: {training.get('steps')} steps in {training.get('seconds', float('nan')):.1f} s"
              + (f", CUDA allocator peak {peak / 2**20:.0f} MiB" if peak else ""))
peak_rss = next(line.split(": ")[1] for line in Path(time_file).read_text().splitlines() if "Maximum resident" in line)
text = [f"# gpu_check on {device}", "",
        f"CelebA-64, 30 groups, smoke overlay: {wall} s wall for the whole DAG; peak resident memory of any "
        f"process {int(peak_rss) / 1024:.0f} MiB", stage1, "",
        "| run | job | wall s | peak RSS MiB | CPU s |", "|---|---|---:|---:|---:|", *rows, "",
        "| sample file | memory kind | peak MiB | 1 image at the file's M (s) |", "|---|---|---:|---:|", *cuda, "",
        "## ncp plan on the same device", "", "```", Path(plan_file).read_text(), "```"]
Path(report).write_text("\n".join(text) + "\n")
print("\n".join(text))
PY
rm -f "$report.plan"
