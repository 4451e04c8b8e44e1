# The paper's Table 9 and Fig. 5(a) describe one 15-group model; with `paper.table9_from` that is a
# sub-experiment, and Fig. 5 is drawn from it too (fig5_<panel>_table9_run.png) beside this run's own.
TABLE9_RUN = table9_run(list(EXPERIMENTS.values()))
FIG5_OF_TABLE9_RUN = [] if TABLE9_RUN == MAIN else ["loss", "ess", "log_z_k"]


rule tables:
    """metrics/summary.json, the results table (base vs NCP on every metric) and Fig. 5, for this run."""
    input:
        fid=f"{MAIN_RESULTS}/metrics/fid.json",
        mmd=f"{MAIN_RESULTS}/metrics/mmd.json",
        nll=f"{MAIN_RESULTS}/metrics/nll.json",
        nce=expand(f"{MAIN_RESULTS}/metrics/nce/group_{{group}}.json", group=groups_of(MAIN)),
        table9_run=(
            [f"results/{TABLE9_RUN}/metrics/fid.json"]
            + expand(f"results/{TABLE9_RUN}/metrics/nce/group_{{group}}.json", group=groups_of(TABLE9_RUN))
            if FIG5_OF_TABLE9_RUN
            else []
        ),
        code=code("tables"),
    output:
        summary=f"{MAIN_RESULTS}/metrics/summary.json",
        results=report(
            f"{MAIN_RESULTS}/tables/results.md", caption="../report/results_table.rst", category="Tables"
        ),
        latex=f"{MAIN_RESULTS}/tables/results.tex",
        figure5=report(
            expand(f"{MAIN_RESULTS}/figures/fig5_{{panel}}.png", panel=["loss", "ess", "log_z_k"]),
            caption="../report/figure5.rst",
            category="Figure 5",
        ),
        figure5_table9_run=expand(
            f"{MAIN_RESULTS}/figures/fig5_{{panel}}_table9_run.png", panel=FIG5_OF_TABLE9_RUN
        ),
    log:
        f"{MAIN_RESULTS}/logs/tables.log",
    localrule: True
    conda:
        "../envs/ncp.yaml"
    params:
        cfg=main_params_json("tables"),
        metrics_dir=lambda wildcards, input: Path(input.fid).parent,
        tables_dir=lambda wildcards, output: Path(output.results).parent,
        figures_dir=lambda wildcards, output: Path(output.figure5[0]).parent,
        figure5_from=f"--figure5-from results/{TABLE9_RUN}/metrics" if FIG5_OF_TABLE9_RUN else "",
    shell:
        "ncp tables --params-json {params.cfg:q} --metrics-dir {params.metrics_dir} --summary-out {output.summary} "
        "--tables-dir {params.tables_dir} --figures-dir {params.figures_dir} {params.figure5_from} --log {log}"


# One rule per paper table, named after it: `snakemake --cores all table8` builds just what Table 8 needs.
# Rows come from this run and the sub-experiments `paper.experiments` names; rows no run supplies are
# listed as missing under the table (see ncp/paper_tables.py).
for TABLE in PAPER_TABLE_NAMES:

    rule:
        name:
            TABLE
        input:
            metrics=paper_table_inputs(TABLE),
            code=code("tables"),
        output:
            markdown=report(
                f"{MAIN_RESULTS}/tables/{TABLE}.md", caption="../report/paper_tables.rst", category="Tables"
            ),
            latex=f"{MAIN_RESULTS}/tables/{TABLE}.tex",
        log:
            f"{MAIN_RESULTS}/logs/{TABLE}.log",
        localrule: True
        conda:
            "../envs/ncp.yaml"
        params:
            cfg=main_params_json("tables"),
            runs=paper_table_runs(TABLE),
            variants=TABLE8_VARIANTS if TABLE == "table8" else [],
            table=TABLE,
        shell:
            "ncp paper-table {params.table} --params-json {params.cfg:q} --runs {params.runs} "
            "--variants {params.variants} --out {output.markdown} --log {log}"
