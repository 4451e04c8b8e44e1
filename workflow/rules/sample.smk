CLASSIFIERS = expand(f"{RESULTS}/nce/group_{{group}}.pt", group=GROUPS)


rule sample:
    """Images from the base prior (method=base) or the NCP prior (sir, ld)."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        classifiers=lambda w: [] if w.method == "base" else CLASSIFIERS,
        code=code("sample"),
    output:
        samples=f"{RESULTS}/samples/{{method}}.pt",
        grid=report(
            f"{RESULTS}/figures/samples_{{method}}.png",
            caption="../report/samples.rst",
            category="Samples",
            labels={"sampler": "{method}"},
        ),
    wildcard_constraints:
        method="base|sir|ld",
    params:
        cfg=params_json("sample"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/sample_{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_{{method}}.tsv"
    shell:
        "ncp sample --params-json {params.cfg:q} --method {wildcards.method} --checkpoint {input.checkpoint} "
        "--classifiers {input.classifiers} --out {output.samples} --grid {output.grid} > {log} 2>&1"
