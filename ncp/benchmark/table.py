"""The Markdown tables of an `ncp benchmark` record (see ncp/benchmark/__init__.py for what is measured)."""

from __future__ import annotations


def _span(entry: dict, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    """'median (min-max)' of a timing entry, in seconds times ``scale``."""
    return (fmt + " ({}–{})").format(
        entry["median_s"] * scale, fmt.format(entry["min_s"] * scale), fmt.format(entry["max_s"] * scale)
    )


def markdown_table(record: dict) -> str:
    """The benchmark record as Markdown tables (median with min–max of the repeats)."""
    lines = [
        f"Benchmark on {record['device']} ({record['machine']}, {record['threads']} torch threads, "
        f"torch {record['torch']}), {record['date']}; median (min–max) of {record['repeats']} runs after a "
        f"warm-up; load average {record['load_average_start']:.2f} at start, {record['load_average_end']:.2f} "
        f"at end; matmul peak {record['matmul_peak_gflops']:.1f} GFLOP/s; total {record['total_s']:.0f} s.",
        "",
        "| SIR M | images | time s | images/s | proposals/s | peak memory MB | classifier share | FLOP fraction |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["sir"]:
        lines.append(
            f"| {r['M']} | {r['batch']} | {_span(r)} | {r['images_per_s']:.3g} | {r['proposals_per_s']:.3g} | "
            f"{r['peak_mem_mb']:.0f} | {r['classifier_time_share']:.0%} | {r['flop_fraction']:.0%} |"
        )
    lines += [
        "",
        "| LD iterations | images | time s | iterations/s | images/s |",
        "|---:|---:|---|---:|---:|",
    ]
    for r in record["ld"]:
        lines.append(
            f"| {r['iterations']} | {r['batch']} | {_span(r)} | {r['iterations_per_s']:.3g} | {r['images_per_s']:.3g} |"
        )
    lines += ["", "| stage 1 model | parameters | batch | step ms | images/s |", "|---|---:|---:|---|---:|"]
    for r in record["stage1"]:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['batch']} | {_span(r, 1000, '{:.0f}')} | {r['images_per_s']:.3g} |"
        )
    lines += ["", "| NCE group | epoch s | pairs/s |", "|---:|---|---:|"]
    for r in record["nce"]:
        lines.append(f"| {r['group']} | {_span(r)} | {r['pairs_per_s']:.3g} |")
    jobs = record["nce_jobs"]
    cache = record["cache"]
    lines += [
        "",
        f"NCE jobs through Snakemake ({jobs['groups']} groups, {jobs['pairs_per_group']} pairs, "
        f"{jobs['threads_per_job']} thread per job), first job's start to last job's end: --cores 1 "
        f"{jobs['jobs_span_cores_1_s']:.1f} s, --cores 2 {jobs['jobs_span_cores_2_s']:.1f} s, ratio "
        f"(nce_parallel_efficiency) {record['nce_parallel_efficiency']:.2f}; whole Snakemake commands "
        f"{jobs['wall_cores_1_s']:.1f} and {jobs['wall_cores_2_s']:.1f} s "
        f"({jobs['wall_cores_2_s'] / jobs['wall_cores_1_s']:.2f}).",
        f"Latent caching: {cache['images_per_s']:.3g} images/s (batch {cache['batch']}, {_span(cache)} s per "
        f"{cache['images']} images).",
        "",
    ]
    return "\n".join(lines)


def table8_beside_paper(record: dict, paper_table8: dict) -> str:
    """Our SIR and LD times for 1 and 10 images and peak memory beside the paper's Table 8 (CelebA-64,
    one V100-class GPU): the paper's numbers come only from ``paper_table8`` (paper_results.yaml)."""
    ours = {("sir", r["M"], r["batch"]): r for r in record["sir"]}
    ours.update({("ld", r["iterations"], r["batch"]): r for r in record["ld"]})
    lines = [
        f"| method | M or T | paper time 1 / 10 images s | ours ({record['device']}) time 1 / 10 images s "
        "| paper memory GB | ours peak memory MB |",
        "|---|---:|---|---|---:|---:|",
    ]
    for row in paper_table8["rows"]:
        method, steps = row["method"], row["steps"]
        one, ten = ours.get((method, steps, 1)), ours.get((method, steps, 10))
        ours_times = f"{one['median_s']:.3g} / {ten['median_s']:.3g}" if one and ten else "not run"
        memory = f"{ten['peak_mem_mb']:.0f}" if ten and "peak_mem_mb" in ten else "—"
        lines.append(
            f"| {method.upper()} | {steps} | {row['time_1_s']} / {row['time_10_s']} | {ours_times} | "
            f"{row['memory_gb']} | {memory} |"
        )
    return "\n".join(lines) + "\n"
