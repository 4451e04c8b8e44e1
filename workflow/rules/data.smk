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
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data.tsv"
    conda:
        "../envs/ncp.yaml"
    threads: 1
    params:
        cfg=params_json("prepare-data"),
    shell:
        "ncp prepare-data --run-json .snakemake/ncp-run/{wildcards.experiment}.json --threads {threads} --params-json {params.cfg:q} --train-out {output.train} --test-out {output.test} --log {log}"
