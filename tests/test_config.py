"""Params: schema defaults, one-line errors for bad values, overlays, and what each stage reads."""

import subprocess
import sys

import pytest
import yaml

from ncp.config import (
    STAGE_SECTIONS,
    ConfigError,
    ExperimentConfig,
    load_params_files,
    nvae_groups_per_scale,
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
    assert nvae_groups_per_scale(
        {"num_latent_scales": 2, "num_groups_per_scale": 10, "ada_groups": True}
    ) == [10, 5]
    assert nvae_groups_per_scale(
        {"num_latent_scales": 3, "num_groups_per_scale": 20, "ada_groups": True}
    ) == [20, 10, 5]
    assert nvae_groups_per_scale(
        {"num_latent_scales": 5, "num_groups_per_scale": 16, "ada_groups": True, "min_groups_per_scale": 4}
    ) == [16, 8, 4, 4, 4]
    assert nvae_groups_per_scale({"num_latent_scales": 1, "num_groups_per_scale": 30}) == [30]


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
