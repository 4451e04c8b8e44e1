"""Workflow tooling, apart from the stage modules: the study planner (sub-experiments, Table 8's sweep),
`ncp export-dvc` (dvc.yaml from the Snakemake job graph) and `ncp sync` (Snakemake and DVC in step)."""
