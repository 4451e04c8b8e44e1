rule train_vae:
    """Stage 1: train the backbone VAE (or take an imported NVAE checkpoint)."""
    input:
        train=shared("prepare-data", "data/train.pt"),
        overlay=overlay,
        code=code("train-vae"),
    output:
        checkpoint=f"{RESULTS}/vae/checkpoint.pt",
    log:
        f"{RESULTS}/logs/train_vae.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_vae.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads(training_processes)
    resources:
        gpu=gpus(training_processes),
        mem_mb=mem_mb("train_vae"),
    params:
        cfg=params_json("train-vae"),
        work_dir=f"{RESULTS}/work/vae",
    shell:
        "ncp train-vae --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --train-data {input.train} "
        "--out {output.checkpoint} --work-dir {params.work_dir} --log {log}"
