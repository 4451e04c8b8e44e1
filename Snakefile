# The workflow lives in workflow/ (the snakemake-workflows layout); this file lets `snakemake` run
# from the repository root.
include: "workflow/Snakefile"
