"""ncp/workflow/study.py: the sub-experiments a params file's paper tables gather, Table 8's sweep names, and the
metric files (Snakemake inputs) each paper table is built from; all known answers from small params."""

import pytest
import yaml

from ncp.config import ExperimentConfig
from ncp.params import ConfigError, resolve_params
from ncp.variants import apply_variant, parse_variant, variant_name
from ncp.workflow.study import (
    sharing_owner,
    study_experiments,
    sweep_variants,
    table_metric_files,
    table_runs,
    written_tables,
)


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return str(path)


def _default_like(tmp_path):
    """A small default-like study: a 4-group NVAE, a single-group MLP VAE for Table 2 (device cpu, same
    data) and a 2-group NVAE for Table 7 (labelled by its file stem, fewer training images)."""
    mlp = _write(
        tmp_path / "overlays" / "mlp.yaml",
        {
            "experiment": "mlp_vae",
            "run": {"device": "cpu"},
            "vae": {"arch": "mlp"},
            "paper": {"tables": ["table2"], "row": "single-group MLP", "experiments": {"table7": ["x.yaml"]}},
        },
    )
    groups = _write(
        tmp_path / "overlays" / "groups_2.yaml",
        {"vae": {"nvae": {"num_groups_per_scale": 1}}, "data": {"train_limit": 100}},
    )
    return resolve_params(
        {
            "experiment": "main",
            "seed": 3,
            "paper": {
                "tables": ["table6", "table7", "table8", "table9"],
                "experiments": {"table2": [mlp], "table7": [groups]},
                "table8": {"sir_num_proposals": [5, 77, 500], "ld_num_steps": [5, 50]},
            },
            "vae": {"arch": "nvae", "nvae": {"num_latent_scales": 2, "num_groups_per_scale": 2}},
            "sample": {"methods": ["sir"], "sir": {"num_proposals": 77}},
        }
    )


def test_main_first_then_sub_experiments_with_overlays_applied(tmp_path):
    params = _default_like(tmp_path)
    main, mlp, groups = study_experiments(params)
    assert [main.name, mlp.name, groups.name] == ["main", "main/table2/mlp_vae", "main/table7/groups_2"]
    assert (main.overlay, main.table, main.params) == (None, None, params)
    assert (mlp.table, groups.table) == ("table2", "table7")
    assert mlp.overlay == str(tmp_path / "overlays" / "mlp.yaml")
    # the overlay's values applied ...
    assert mlp.params["vae"]["arch"] == "mlp" and mlp.params["run"]["device"] == "cpu"
    assert groups.params["vae"]["nvae"] == {"num_latent_scales": 2, "num_groups_per_scale": 1}
    assert groups.params["data"]["train_limit"] == 100
    # ... the main's kept elsewhere, and the main's params left untouched
    assert mlp.params["seed"] == groups.params["seed"] == 3
    assert mlp.params["sample"]["sir"]["num_proposals"] == 77
    assert mlp.params["vae"]["nvae"] == {"num_latent_scales": 2, "num_groups_per_scale": 2}
    assert groups.params["run"]["device"] == "auto"
    assert params["vae"]["arch"] == "nvae" and params["vae"]["nvae"]["num_groups_per_scale"] == 2
    # sub-experiments gather nothing themselves: no tables, no sub-experiments, no sweep
    for sub in (mlp, groups):
        assert sub.params["experiment"] == sub.name
        assert sub.params["paper"]["tables"] == [] and sub.params["paper"]["experiments"] == {}
        assert sub.params["paper"]["table8"] == {
            "sir_num_proposals": [],
            "ld_num_steps": [],
            "num_samples": None,
        }
    assert mlp.params["paper"]["row"] == "single-group MLP"  # the overlay's row, else its label
    assert groups.params["paper"]["row"] == "groups_2"


def test_two_overlays_with_one_label_are_an_error(tmp_path):
    first = _write(tmp_path / "a" / "g.yaml", {"vae": {"arch": "mlp"}})
    second = _write(tmp_path / "b" / "g.yaml", {"vae": {"arch": "conv"}})  # same stem
    named = _write(tmp_path / "c.yaml", {"experiment": "g"})  # same label by its `experiment`
    for pair in ([first, second], [first, named]):
        with pytest.raises(ConfigError, match="'g'"):
            study_experiments(resolve_params({"paper": {"experiments": {"table7": pair}}}))
    # one label under two tables gives two folders: no clash
    names = [
        e.name
        for e in study_experiments(
            resolve_params({"paper": {"experiments": {"table2": [first], "table7": [second]}}})
        )
    ]
    assert names == ["default", "default/table2/g", "default/table7/g"]


def test_missing_overlay_is_an_error_naming_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "overlay.yaml")
    with pytest.raises(ConfigError, match="not found") as error:
        study_experiments(resolve_params({"paper": {"experiments": {"table2": [missing]}}}))
    assert missing in str(error.value)


def test_sweep_keeps_the_runs_own_setting_plain():
    params = resolve_params(
        {
            "sample": {"methods": ["sir"], "sir": {"num_proposals": 50}, "ld": {"num_steps": 50}},
            "paper": {"table8": {"sir_num_proposals": [5, 50, 500], "ld_num_steps": [50, 5]}},
        }
    )
    # ld is not among this run's methods, so even its own step count is a sweep sample
    assert sweep_variants(params) == ["sir_m5", "sir", "sir_m500", "ld_t50", "ld_t5"]
    params["sample"]["methods"] = ["sir", "ld"]
    params["sample"]["sir"]["num_proposals"] = 500
    assert sweep_variants(params) == ["sir_m5", "sir_m50", "sir", "ld", "ld_t5"]
    params["sample"]["methods"] = ["ld"]  # SIR not run: its default M is a sweep sample
    params["sample"]["sir"]["num_proposals"] = 5
    assert sweep_variants(params) == ["sir_m5", "sir_m50", "sir_m500", "ld", "ld_t5"]
    # a sweep drawn with fewer images than the run's samples reuses none of them
    params["paper"]["table8"]["num_samples"] = params["sample"]["num_samples"] // 2
    assert sweep_variants(params) == ["sir_m5", "sir_m50", "sir_m500", "ld_t50", "ld_t5"]
    params["paper"]["table8"]["num_samples"] = params["sample"]["num_samples"]
    assert sweep_variants(params) == ["sir_m5", "sir_m50", "sir_m500", "ld", "ld_t5"]
    assert sweep_variants(resolve_params({})) == []


def test_parse_variant_round_trip_onto_the_sample_config():
    sample = ExperimentConfig.from_params({}).sample
    expected = {
        "base": ("base", {}),
        "sir": ("sir", {}),
        "ld": ("ld", {}),
        "sir_m500": ("sir", {"num_proposals": 500}),
        "ld_t7": ("ld", {"num_steps": 7}),
    }
    for name, answer in expected.items():
        assert parse_variant(name) == answer
    for sampler, value in (("sir", 500), ("ld", 7)):  # the planner's names read back as they were made
        assert parse_variant(variant_name(sampler, value))[0] == sampler
    sampler, applied = apply_variant(sample, "sir_m500")
    assert sampler == "sir" and applied.sir.num_proposals == 500  # the keys are SampleConfig fields
    assert applied.ld == sample.ld and applied.sir.chunk_size == sample.sir.chunk_size
    sampler, applied = apply_variant(sample, "ld_t7")
    assert sampler == "ld" and applied.ld.num_steps == 7
    for junk in ("sir_mx", "foo", "sir_m", "ld_t5x", "sir_t5", "SIR", ""):
        with pytest.raises(ValueError, match="unknown sampling method"):
            parse_variant(junk)


def test_written_tables_and_table_runs(tmp_path):
    params = _default_like(tmp_path)
    assert written_tables(params) == ["table6", "table7", "table8", "table9", "table2"]
    params["paper"]["experiments"]["table2"] = []  # an empty list writes no table
    assert written_tables(params) == ["table6", "table7", "table8", "table9"]
    experiments = study_experiments(_default_like(tmp_path))
    assert table_runs(experiments, "table2") == ["main", "main/table2/mlp_vae"]
    assert table_runs(experiments, "table7") == ["main", "main/table7/groups_2"]
    assert table_runs(experiments, "table9") == ["main"]


def test_table_metric_files_of_the_default_like_study(tmp_path):
    params = _default_like(tmp_path)
    experiments = study_experiments(params)
    # Table 2 is not one of main's own tables: only the sub-experiment's NLL
    assert table_metric_files(experiments, "table2", []) == ["results/main/table2/mlp_vae/metrics/nll.json"]
    assert table_metric_files(experiments, "table6", []) == ["results/main/metrics/nll.json"]
    # Table 7: FID and one classifier file per group, for main (2 scales x 2) and the sub (2 x 1)
    assert table_metric_files(experiments, "table7", []) == ["results/main/metrics/fid.json"] + [
        f"results/main/metrics/nce/group_{k}.json" for k in range(4)
    ] + [
        "results/main/table7/groups_2/metrics/fid.json",
        "results/main/table7/groups_2/metrics/nce/group_0.json",
        "results/main/table7/groups_2/metrics/nce/group_1.json",
    ]
    variants = sweep_variants(params)
    assert variants == ["sir_m5", "sir", "sir_m500", "ld_t5", "ld_t50"]
    assert table_metric_files(experiments, "table8", variants) == [
        f"results/main/metrics/fid/{v}.json" for v in variants
    ]
    assert table_metric_files(experiments, "table9", variants) == ["results/main/metrics/mmd.json"]


def test_table1_reads_main_and_the_run_labelled_sub_experiment(tmp_path):
    gmm = _write(
        tmp_path / "gmm.yaml", {"experiment": "celeba64_conv_table1_gmm", "vae": {"base_prior": "gmm"}}
    )
    params = resolve_params(
        {
            "experiment": "conv",
            "vae": {"arch": "conv"},
            "paper": {"tables": ["table1"], "experiments": {"table1": [gmm]}},
        }
    )
    experiments = study_experiments(params)
    assert experiments[1].params["vae"]["base_prior"] == "gmm"
    assert experiments[0].params["vae"]["base_prior"] == "gaussian"
    assert table_metric_files(experiments, "table1", []) == [
        "results/conv/metrics/fid.json",
        "results/conv/table1/celeba64_conv_table1_gmm/metrics/fid.json",
    ]
    # a single-group VAE has one classifier file
    assert table_metric_files(experiments, "table7", []) == [
        "results/conv/metrics/fid.json",
        "results/conv/metrics/nce/group_0.json",
    ]


def test_sharing_owner_follows_the_stage_params(tmp_path):
    experiments = study_experiments(_default_like(tmp_path))
    # the MLP sub-experiment has main's seed and data: it shares main's data splits ...
    assert sharing_owner(experiments, "main/table2/mlp_vae", "prepare-data") == "main"
    # ... and its FID features: the device it changed is a run setting, not a param of any stage
    assert sharing_owner(experiments, "main/table2/mlp_vae", "evaluate-features") == "main"
    # other data (train_limit 100): its own folder
    assert sharing_owner(experiments, "main/table7/groups_2", "prepare-data") == "main/table7/groups_2"
    assert sharing_owner(experiments, "main", "prepare-data") == "main"
    with pytest.raises(KeyError, match="nope"):
        sharing_owner(experiments, "nope", "prepare-data")


def test_table9_reads_the_sub_experiment_table9_from_names(tmp_path):
    # The paper's Table 9 goes with Fig. 5(a)'s 15-group NCP: the CelebA-64 study pairs it with its
    # 15-group Table 7 run. Table 9 must then read that run's MMD file (and be rebuilt when it changes).
    params = _default_like(tmp_path)
    params["paper"]["table9_from"] = "groups_2"
    experiments = study_experiments(params)
    assert table_runs(experiments, "table9") == ["main/table7/groups_2"]
    assert table_metric_files(experiments, "table9", []) == ["results/main/table7/groups_2/metrics/mmd.json"]
    params["paper"]["table9_from"] = "groups_99"
    with pytest.raises(ConfigError, match="table9_from: no sub-experiment named 'groups_99'.*groups_2"):
        table_runs(study_experiments(params), "table9")


def test_the_celeba64_study_pairs_table9_with_its_15_group_run():
    from ncp.params import load_params_files

    params = load_params_files(["params/default.yaml", "params/paper/celeba64_nvae_30groups.yaml"])
    experiments = study_experiments(params)
    (run,) = table_runs(experiments, "table9")
    assert run == "celeba64_nvae_30groups/table7/celeba64_groups_15"
    groups = next(e for e in experiments if e.name == run).params["vae"]["nvae"]
    assert groups["num_latent_scales"] * groups["num_groups_per_scale"] == 15
