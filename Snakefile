# The workflow lives in workflow/ (the snakemake-workflows layout); this file lets `snakemake` run
# from the repository root.
include: "workflow/Snakefile"


# Snakemake takes the default target from this file, not from included ones.
rule default:
    default_target: True
    input:
        rules.all.input,
