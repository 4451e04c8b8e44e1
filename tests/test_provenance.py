"""Provenance blocks: what they record, that they survive a tree that is not a git checkout, that git runs
once per process, and that dropping them leaves a record comparable between runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ncp import provenance as prov
from ncp.config import ExperimentConfig

KEYS = {
    "job",
    "git_commit",
    "git_dirty",
    "params_sha256",
    "seed",
    "versions",
    "device",
    "wall_time_s",
    "peak_rss_bytes",
}


def test_block_names_the_commit_params_seed_versions_device_time_and_memory():
    cfg = ExperimentConfig.from_params({"experiment": "p", "seed": 3})
    block = prov.provenance("evaluate nll", cfg, cfg.seed, "cpu")
    assert set(block) == KEYS
    assert block["job"] == "evaluate nll" and block["seed"] == 3 and block["device"].startswith("cpu")
    head = subprocess.run(
        ["git", "-C", str(Path(prov.__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # this test runs in a checkout: the commit is HEAD's
        assert block["git_commit"] == head.stdout.strip() and isinstance(block["git_dirty"], bool)
    assert set(block["versions"]) == {"torch", "torchvision", "snakemake", "dvc", "ncp-vae"}
    assert block["versions"]["torch"] and block["wall_time_s"] >= 0 and block["peak_rss_bytes"] > 0


def test_params_hash_follows_the_params_only():
    one = ExperimentConfig.from_params({"experiment": "p", "seed": 3})
    same = ExperimentConfig.from_params({"experiment": "p", "seed": 3})
    other = ExperimentConfig.from_params(
        {"experiment": "p", "seed": 3, "evaluate": {"nll": {"log_z_seeds": 7}}}
    )
    assert prov.params_hash(one) == prov.params_hash(same) != prov.params_hash(other)
    assert len(prov.params_hash({"a": 1})) == 16 and prov.params_hash({"a": 1, "b": 2}) == prov.params_hash(
        {"b": 2, "a": 1}
    )


def test_not_a_git_checkout_gives_none_not_an_error(tmp_path, monkeypatch):
    prov.git_state.cache_clear()
    try:
        assert prov.git_state(str(tmp_path)) == (None, None)
        prov.git_state.cache_clear()
        monkeypatch.setattr(prov.shutil, "which", lambda name: None)  # git not installed
        assert prov.git_state() == (None, None)
        assert prov.describe(prov.provenance("tables", {"a": 1}, 0)).startswith(
            "`tables`: commit not a git checkout"
        )
    finally:
        prov.git_state.cache_clear()


def test_git_runs_once_per_process_however_many_numbers_are_written(monkeypatch):
    calls = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    prov.git_state.cache_clear()
    monkeypatch.setattr(prov.subprocess, "run", counting_run)
    try:
        for seed in range(20):
            prov.provenance("evaluate fid", {"x": seed}, seed)
    finally:
        prov.git_state.cache_clear()
    assert len(calls) <= 2  # rev-parse and status, once


def test_strip_provenance_removes_every_block_and_nothing_else():
    record = {
        "provenance": {"job": "tables"},
        "nll": {"ncp": 80.0, "provenance": {"job": "evaluate nll"}},
        "groups": [{"loss": 1.2, "provenance": {}}],
    }
    assert prov.strip_provenance(record) == {"nll": {"ncp": 80.0}, "groups": [{"loss": 1.2}]}
    assert prov.describe(None) == "no provenance recorded"
    block = prov.with_provenance({"fid": 3.0}, "evaluate fid", {"a": 1}, 5)
    assert block["fid"] == 3.0 and block["provenance"]["seed"] == 5


@pytest.mark.parametrize("dirty", [True, False])
def test_describe_marks_a_dirty_tree(dirty):
    block = {
        "job": "evaluate nll",
        "git_commit": "0123456789abcdef",
        "git_dirty": dirty,
        "params_sha256": "ab",
        "seed": 1,
        "device": "cpu (x86_64)",
        "wall_time_s": 12.0,
    }
    text = prov.describe(block)
    assert text.startswith("`evaluate nll`: commit 0123456789ab") and ("(dirty)" in text) == dirty
