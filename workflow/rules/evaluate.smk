rule fid_features:
    """The FID feature network and the training set's reference features (cached once per run)."""
    input:
        train=shared("prepare-data", "data/train.pt"),
        test=shared("prepare-data", "data/test.pt"),
        code=code("evaluate-features"),
    output:
        features=f"{RESULTS}/features/reference.npz",
        network=f"{RESULTS}/features/network.pt",
    log:
        f"{RESULTS}/logs/fid_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/fid_features.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("evaluate"),
    params:
        cfg=params_json("evaluate-features"),
    shell:
        "ncp evaluate features --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --train-data {input.train} "
        "--test-data {input.test} --out {output.features} --log {log}"


rule evaluate_fid:
    """FID and KID of every sampler's images (and of reconstructions) against the training set."""
    input:
        features=shared("evaluate-features", "features/reference.npz"),
        network=shared("evaluate-features", "features/network.pt"),
        samples=samples,
        checkpoint=rules.train_vae.output.checkpoint,
        train=shared("prepare-data", "data/train.pt"),
        overlay=overlay,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/fid.json",
    log:
        f"{RESULTS}/logs/evaluate_fid.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fid.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("evaluate"),
    params:
        cfg=params_json("evaluate"),
    shell:
        "ncp evaluate fid --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --features {input.features} --samples {input.samples} "
        "--checkpoint {input.checkpoint} --train-data {input.train} --out {output.metrics} --log {log}"


rule evaluate_mmd:
    """MMD between q(z_k) (encoded from the held-out test split), p(z_k) and p_NCP(z_k) per group (Table 9)."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        test=shared("prepare-data", "data/test.pt"),
        samples=samples,
        overlay=overlay,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/mmd.json",
    log:
        f"{RESULTS}/logs/evaluate_mmd.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_mmd.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("evaluate_mmd"),
    params:
        cfg=params_json("evaluate"),
    shell:
        "ncp evaluate mmd --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --checkpoint {input.checkpoint} "
        "--test-data {input.test} --samples {input.samples} --out {output.metrics} --log {log}"


rule evaluate_nll:
    """Test NLL of the base VAE and of NCP-VAE (importance weighted, minus an estimated log Z)."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        classifiers=classifiers,
        test=shared("prepare-data", "data/test.pt"),
        overlay=overlay,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/nll.json",
    log:
        f"{RESULTS}/logs/evaluate_nll.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_nll.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("evaluate"),
    params:
        cfg=params_json("evaluate"),
    shell:
        "ncp evaluate nll --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --checkpoint {input.checkpoint} "
        "--classifiers {input.classifiers} --test-data {input.test} --out {output.metrics} --log {log}"


rule evaluate_fid_setting:
    """FID and KID of one sampling setting of Table 8's sweep (no reconstructions)."""
    input:
        features=shared("evaluate-features", "features/reference.npz"),
        network=shared("evaluate-features", "features/network.pt"),
        samples=f"{RESULTS}/samples/{{method}}.pt",
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/fid/{{method}}.json",
    log:
        f"{RESULTS}/logs/evaluate_fid_{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fid_{{method}}.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("evaluate"),
    params:
        cfg=params_json("evaluate"),
    shell:
        "ncp evaluate fid --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --features {input.features} --samples {input.samples} "
        "--out {output.metrics} --log {log}"


rule nearest_neighbours:
    """Fig. 4: NCP samples beside their nearest training images (resized, centre-cropped, KD-tree)."""
    input:
        samples=f"{RESULTS}/samples/{NCP_METHOD}.pt",
        train=shared("prepare-data", "data/train.pt"),
        code=code("evaluate"),
    output:
        figure=report(
            f"{RESULTS}/figures/fig4_neighbours.png", caption="../report/neighbours.rst", category="Figure 4"
        ),
    log:
        f"{RESULTS}/logs/nearest_neighbours.log",
    benchmark:
        f"{RESULTS}/benchmarks/nearest_neighbours.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: job_threads()
    params:
        cfg=params_json("evaluate"),
    shell:
        "ncp evaluate neighbours --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --samples {input.samples} --train-data {input.train} "
        "--out {output.figure} --log {log}"
