rule cache_latents:
    """Stage 2a: (z ~ q, z ~ p with the same z_<k, context) for every latent group."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        train=rules.prepare_data.output.train,
        code=code("cache-latents"),
    output:
        latents=expand(f"{RESULTS}/latents/group_{{group}}.pt", group=GROUPS),
    params:
        cfg=params_json("cache-latents"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/cache_latents.log",
    shell:
        "ncp cache-latents --params-json {params.cfg:q} --checkpoint {input.checkpoint} "
        "--train-data {input.train} --out {output.latents} > {log} 2>&1"


rule train_nce:
    """Stage 2b: the binary classifier D_k of latent group {wildcards.group} (independent jobs)."""
    input:
        latents=f"{RESULTS}/latents/group_{{group}}.pt",
        code=code("train-nce"),
    output:
        classifier=f"{RESULTS}/nce/group_{{group}}.pt",
        metrics=f"{RESULTS}/metrics/nce/group_{{group}}.json",
    params:
        cfg=params_json("train-nce"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/train_nce_{{group}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_nce_{{group}}.tsv"
    shell:
        "ncp train-nce --params-json {params.cfg:q} --latents {input.latents} "
        "--out {output.classifier} --metrics-out {output.metrics} > {log} 2>&1"
