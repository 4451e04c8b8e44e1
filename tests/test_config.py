"""Params: schema defaults, one-line errors for bad values, overlays, and what each stage reads."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from ncp.config import ExperimentConfig
from ncp.models.conv_vae import ConvVAEConfig
from ncp.models.mlp_vae import MLPVAEConfig
from ncp.models.nvae.config import ARCH_CELLS, ARCHITECTURE_KEYS, LIKELIHOODS, NVAEConfig, groups_per_scale
from ncp.models.registry import ARCHES
from ncp.params import (
    SCHEMA_PATH,
    STAGE_SECTIONS,
    ConfigError,
    load_params_files,
    num_latent_groups,
    resolve_params,
    stage_params,
)


def test_defaults_come_from_the_schema():
    params = resolve_params({})
    assert params["data"]["name"] == "mnist5k"
    assert params["sample"]["sir"]["num_proposals"] == 50
    cfg = ExperimentConfig.from_params({"nce": {"epochs": 3}})
    assert cfg.nce.epochs == 3 and cfg.nce.batch_size == 256  # overridden and default side by side


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"nce": {"epochs": -1}}, "nce.epochs"),
        ({"nce": {"epochs": "ten"}}, "nce.epochs"),
        ({"sample": {"methods": ["mcmc"]}}, "sample.methods.0"),
        ({"data": {"name": "imagenet"}}, "data.name"),
        ({"experiment": "has space"}, "experiment"),
    ],
)
def test_bad_params_give_one_line_error_naming_the_key(params, needle):
    with pytest.raises(ConfigError) as error:
        resolve_params(params)
    message = str(error.value)
    assert needle in message and "\n" not in message


def test_overlays_merge_nested_sections(tmp_path):
    base, overlay = tmp_path / "base.yaml", tmp_path / "overlay.yaml"
    base.write_text(yaml.safe_dump({"experiment": "a", "nce": {"epochs": 5, "hidden": 8}}))
    overlay.write_text(yaml.safe_dump({"experiment": "b", "nce": {"epochs": 7}}))
    params = load_params_files([base, overlay])
    assert params["experiment"] == "b"
    assert params["nce"]["epochs"] == 7 and params["nce"]["hidden"] == 8


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params_files([tmp_path / "nope.yaml"])


def test_each_stage_reads_only_its_sections():
    params = resolve_params({})
    nce = stage_params(params, "train-nce")
    assert set(nce) == {"seed", "nce"}
    assert "nce" not in stage_params(params, "sample") and "cache" not in stage_params(params, "train-nce")
    assert set(STAGE_SECTIONS) >= {
        "prepare-data",
        "train-vae",
        "cache-latents",
        "train-nce",
        "sample",
        "evaluate",
        "tables",
    }


def test_group_count_follows_nvae_rules():
    # NVAE's README MNIST model: 2 scales, 10 groups, adaptive -> [10, 5]; CelebA-64: [20, 10, 5].
    assert groups_per_scale(2, 10, True, 1) == (10, 5)
    assert groups_per_scale(3, 20, True, 1) == (20, 10, 5)
    assert groups_per_scale(5, 16, True, 4) == (16, 8, 4, 4, 4)
    assert groups_per_scale(1, 30, False, 1) == (30,)
    # the workflow's count (no torch) and the model's config agree: both use the rule above
    nvae = {"num_latent_scales": 5, "num_groups_per_scale": 16, "ada_groups": True, "min_groups_per_scale": 4}
    assert num_latent_groups({"arch": "nvae", "nvae": nvae}) == 36
    assert num_latent_groups({"arch": "mlp", "nvae": nvae}) == 1


@pytest.mark.parametrize(
    "vae, needle",
    [
        (
            {"nvae": {"num_groups_per_scal": 3}},
            "vae.nvae: unknown key 'num_groups_per_scal'",
        ),
        ({"mlp": {"latent_dims": 3}}, "vae.mlp: unknown key 'latent_dims'"),
        ({"conv": {"chanels": [8]}}, "vae.conv: unknown key 'chanels'"),
        ({"nvae": {"arch_instance": "res_mbconv7"}}, "vae.nvae.arch_instance"),
        ({"nvae": {"use_se": "yes"}}, "vae.nvae.use_se"),
        (
            {"mlp": {"base_prior": "gmm"}},
            "vae.mlp: unknown key 'base_prior'",
        ),  # the base prior is vae.base_prior
    ],
)
def test_backbone_typos_are_one_line_errors_naming_the_key(vae, needle):
    # Before the backbone sections were strict, `num_groups_per_scal: 3` was dropped and NVAE's default of
    # 10 groups per scale used instead, silently.
    with pytest.raises(ConfigError) as error:
        resolve_params({"vae": vae})
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_schema_lists_exactly_what_each_backbone_config_accepts():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["vae"]["properties"]
    assert schema["arch"]["enum"] == list(ARCHES)
    assert set(schema["nvae"]["properties"]) == ARCHITECTURE_KEYS
    assert schema["nvae"]["properties"]["arch_instance"]["enum"] == list(ARCH_CELLS)
    assert schema["nvae"]["properties"]["likelihood"]["enum"] == list(LIKELIHOODS)
    base_prior_fields = {"base_prior", "gmm_components", "gmm_covariance"}  # set by vae.base_prior
    for arch, config_class in (("mlp", MLPVAEConfig), ("conv", ConvVAEConfig)):
        accepted = {field.name for field in dataclasses.fields(config_class)} - base_prior_fields
        assert set(schema[arch]["properties"]) == accepted, arch
    for section in ("nvae", "mlp", "conv"):
        assert schema[section]["additionalProperties"] is False


def test_every_schema_leaf_is_described():
    def undescribed(node: dict, path: str) -> list[str]:
        if "properties" in node:
            return [p for key, sub in node["properties"].items() for p in undescribed(sub, f"{path}.{key}")]
        return [] if isinstance(node.get("description"), str) and node["description"] else [path]

    assert undescribed(yaml.safe_load(SCHEMA_PATH.read_text()), "params") == []


def test_backbone_configs_are_typed_and_only_the_one_in_use_is_built():
    cfg = ExperimentConfig.from_params({"vae": {"nvae": {"num_latent_scales": 2, "num_groups_per_scale": 3}}})
    assert isinstance(cfg.vae.nvae, NVAEConfig) and cfg.vae.backbone is cfg.vae.nvae
    assert cfg.vae.nvae.num_groups == 6 and cfg.vae.nvae.dataset == "mnist"  # from data.name mnist5k
    assert cfg.vae.mlp is None and cfg.vae.conv is None
    cfg = ExperimentConfig.from_params(
        {"data": {"name": "cifar10"}, "vae": {"arch": "conv", "conv": {"channels": [8, 16]}}}
    )
    assert (
        isinstance(cfg.vae.conv, ConvVAEConfig) and cfg.vae.conv.channels == (8, 16) and cfg.vae.nvae is None
    )
    # an mlp run on data NVAE has no name for builds no NVAE config, so it does not fail on one
    assert (
        ExperimentConfig.from_params({"data": {"name": "idx"}, "vae": {"arch": "mlp"}}).vae.mlp.latent_dim
        == 50
    )
    with pytest.raises(ConfigError, match="vae.base_prior: gmm needs a single-group backbone"):
        ExperimentConfig.from_params({"vae": {"base_prior": "gmm"}})
    with pytest.raises(ConfigError, match="vae.nvae: .*num_postprocess_blocks"):
        ExperimentConfig.from_params({"vae": {"nvae": {"num_preprocess_blocks": 1}}})
    # nested as the params are
    assert cfg.sample.sir.num_proposals == 50 and cfg.evaluate.mmd.bandwidth_scales == (1.0, 0.5, 0.25)
    assert cfg.paper.table8.sir_num_proposals == () and cfg.evaluate.neighbours.crop == 40


def test_typed_vae_section_round_trips_through_params():
    for vae in ({"nvae": {"num_latent_scales": 2}}, {"arch": "conv", "conv": {"channels": [8, 16]}}):
        cfg = ExperimentConfig.from_params({"vae": vae})
        again = ExperimentConfig.from_params({"vae": cfg.vae.to_section()})
        assert again.vae == cfg.vae


def test_cli_rejects_bad_params_json_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ncp.cli",
            "train-nce",
            "--params-json",
            '{"nce": {"lr": -1}}',
            "--latents",
            str(tmp_path / "x.pt"),
            "--out",
            str(tmp_path / "y.pt"),
            "--metrics-out",
            str(tmp_path / "z.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nce.lr" in result.stderr
    assert not (tmp_path / "y.pt").exists()
