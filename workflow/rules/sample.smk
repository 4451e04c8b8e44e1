rule sample:
    """Images from the base prior (method=base) or the NCP prior (sir, ld, or a Table 8 setting such as sir_m500)."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        classifiers=lambda wildcards: [] if wildcards.method == "base" else classifiers(wildcards),
        overlay=overlay,
        code=code("sample"),
    output:
        samples=f"{RESULTS}/samples/{{method}}.pt",
        grid=report(
            f"{RESULTS}/figures/samples_{{method}}.png",
            caption="../report/samples.rst",
            category="Samples",
            labels={"experiment": "{experiment}", "sampler": "{method}"},
        ),
    log:
        f"{RESULTS}/logs/sample_{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_{{method}}.tsv"
    wildcard_constraints:
        method=r"base|sir|ld|sir_m\d+|ld_t\d+",
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("sample"),
    params:
        cfg=params_json("sample"),
        images=sweep_sample_count,
    shell:
        "ncp sample --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --method {wildcards.method} --checkpoint {input.checkpoint} "
        "--classifiers {input.classifiers} --out {output.samples} --grid {output.grid} {params.images} --log {log}"
