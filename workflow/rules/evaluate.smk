SAMPLES = expand(f"{RESULTS}/samples/{{method}}.pt", method=SAMPLE_METHODS)


rule fid_features:
    """The FID feature network and the training set's reference features (cached once per run)."""
    input:
        train=rules.prepare_data.output.train,
        test=rules.prepare_data.output.test,
        code=code("evaluate"),
    output:
        features=f"{RESULTS}/features/reference.npz",
        network=f"{RESULTS}/features/network.pt",
    params:
        cfg=params_json("evaluate"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/fid_features.log",
    shell:
        "ncp evaluate features --params-json {params.cfg:q} --train-data {input.train} "
        "--test-data {input.test} --out {output.features} > {log} 2>&1"


rule evaluate_fid:
    """FID and KID of every sampler's images (and of reconstructions) against the training set."""
    input:
        features=rules.fid_features.output.features,
        network=rules.fid_features.output.network,
        samples=SAMPLES,
        checkpoint=rules.train_vae.output.checkpoint,
        train=rules.prepare_data.output.train,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/fid.json",
    params:
        cfg=params_json("evaluate"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/evaluate_fid.log",
    shell:
        "ncp evaluate fid --params-json {params.cfg:q} --features {input.features} --samples {input.samples} "
        "--checkpoint {input.checkpoint} --train-data {input.train} --out {output.metrics} > {log} 2>&1"


rule evaluate_mmd:
    """MMD between q(z_k), p(z_k) and p_NCP(z_k) for every latent group (paper Table 9)."""
    input:
        latents=rules.cache_latents.output.latents,
        samples=SAMPLES,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/mmd.json",
    params:
        cfg=params_json("evaluate"),
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/evaluate_mmd.log",
    shell:
        "ncp evaluate mmd --params-json {params.cfg:q} --latents {input.latents} "
        "--samples {input.samples} --out {output.metrics} > {log} 2>&1"


rule evaluate_nll:
    """Test NLL of the base VAE and of NCP-VAE (importance weighted, minus an estimated log Z)."""
    input:
        checkpoint=rules.train_vae.output.checkpoint,
        classifiers=CLASSIFIERS,
        test=rules.prepare_data.output.test,
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics/nll.json",
    params:
        cfg=params_json("evaluate"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/ncp.yaml"
    log:
        f"{RESULTS}/logs/evaluate_nll.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_nll.tsv"
    shell:
        "ncp evaluate nll --params-json {params.cfg:q} --checkpoint {input.checkpoint} "
        "--classifiers {input.classifiers} --test-data {input.test} --out {output.metrics} > {log} 2>&1"
