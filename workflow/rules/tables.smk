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
        results=report(f"{RESULTS}/tables/results.md", caption="../report/results_table.rst", category="Tables"),
        paper_tables=report(
            expand(f"{RESULTS}/tables/{{name}}.md", name=PAPER_TABLES),
            caption="../report/paper_tables.rst",
            category="Tables",
        ),
        latex=expand(f"{RESULTS}/tables/{{name}}.tex", name=["results"] + PAPER_TABLES),
        figure5=report(
            expand(f"{RESULTS}/figures/fig5_{{panel}}.png", panel=["loss", "ess"]),
            caption="../report/figure5.rst",
            category="Figure 5",
        ),
    params:
        cfg=params_json("tables"),
        metrics_dir=lambda wildcards, input: Path(input.fid).parent,
        tables_dir=lambda wildcards, output: Path(output.results).parent,
        figures_dir=lambda wildcards, output: Path(output.figure5[0]).parent,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/tables.log",
    shell:
        "ncp tables --params-json {params.cfg:q} --metrics-dir {params.metrics_dir} --summary-out {output.summary} "
        "--tables-dir {params.tables_dir} --figures-dir {params.figures_dir} > {log} 2>&1"
