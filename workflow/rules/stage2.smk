rule cache_latents:
    """Stage 2a: (z ~ q, z ~ p with the same z_<k, context) for every latent group."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        train=shared("prepare-data", "data/train.pt"),
        overlay=overlay,
        code=code("cache-latents"),
    output:
        # one shard folder per group, group_<k>/ (index.json + shard_*.pt); one output folder, since
        # experiments differ in their group counts
        latents=directory(f"{RESULTS}/latents"),
    log:
        f"{RESULTS}/logs/cache_latents.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache_latents.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("cache_latents"),
    params:
        cfg=params_json("cache-latents"),
        files=lambda wildcards, output: [f"{output.latents}/group_{k}" for k in groups(wildcards)],
    shell:
        "ncp cache-latents --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --checkpoint {input.checkpoint} "
        "--train-data {input.train} --out {params.files} --log {log}"


rule train_nce:
    """Stage 2b: the binary classifier D_k of latent group {wildcards.group} (independent jobs)."""
    input:
        latents=rules.cache_latents.output.latents,
        # read only with cache.mode stream, where the NCE job draws its pairs from the VAE
        checkpoint=rules.train_vae.output.checkpoint,
        train=shared("prepare-data", "data/train.pt"),
        overlay=overlay,
        code=code("train-nce"),
    output:
        classifier=f"{RESULTS}/nce/group_{{group}}.pt",
        metrics=f"{RESULTS}/metrics/nce/group_{{group}}.json",
    log:
        f"{RESULTS}/logs/train_nce_{{group}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_nce_{{group}}.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("train_nce"),
    params:
        cfg=params_json("train-nce"),
        latents=lambda wildcards, input: f"{input.latents}/group_{wildcards.group}",
        work_dir=lambda wildcards: f"results/{wildcards.experiment}/work/nce_group_{wildcards.group}",
    shell:
        "ncp train-nce --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --latents {params.latents} "
        "--checkpoint {input.checkpoint} --train-data {input.train} --out {output.classifier} "
        "--metrics-out {output.metrics} --work-dir {params.work_dir} --log {log}"
