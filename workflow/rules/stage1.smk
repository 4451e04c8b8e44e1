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
    resources:
        # vae.train.num_processes > 1: one DDP process per GPU (ncp train-vae starts torchrun itself)
        gpu=lambda wildcards: GPU_PER_JOB * experiment_params(wildcards)["vae"]["train"]["num_processes"],
    params:
        cfg=params_json("train-vae"),
        work_dir=f"{RESULTS}/work/vae",
    shell:
        "ncp train-vae --params-json {params.cfg:q} --train-data {input.train} "
        "--out {output.checkpoint} --work-dir {params.work_dir} --log {log}"
