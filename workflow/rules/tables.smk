rule tables:
    """metrics/summary.json and the result tables (ours beside the paper's), from every metric."""
    input:
        fid=rules.evaluate_fid.output.metrics,
        mmd=rules.evaluate_mmd.output.metrics,
        nll=rules.evaluate_nll.output.metrics,
        nce=expand(f"{RESULTS}/metrics/nce/group_{{group}}.json", group=GROUPS),
        samples=SAMPLES,
        code=code("tables"),
    output:
        summary=f"{RESULTS}/metrics/summary.json",
        results=f"{RESULTS}/tables/results.md",
    params:
        cfg=params_json("tables"),
    log:
        f"{RESULTS}/logs/tables.log",
    shell:
        "ncp tables --params-json {params.cfg:q} --metrics-dir {RESULTS}/metrics --summary-out {output.summary} "
        "--tables-dir {RESULTS}/tables --figures-dir {RESULTS}/figures > {log} 2>&1"
