rule prepare_data:
    """Load the dataset named in the params and write its train/test splits."""
    input:
        overlay=overlay,
        code=code("prepare-data"),
    output:
        train=f"{RESULTS}/data/train.pt",
        test=f"{RESULTS}/data/test.pt",
    log:
        f"{RESULTS}/logs/prepare_data.log",
    conda:
        "../envs/ncp.yaml"
    params:
        cfg=params_json("prepare-data"),
    shell:
        "ncp prepare-data --params-json {params.cfg:q} --train-out {output.train} --test-out {output.test} --log {log}"
