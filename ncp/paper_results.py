"""The one reader of ncp/paper_results.yaml, where the paper's published numbers live (and nowhere else)."""

from __future__ import annotations

from importlib import resources

import yaml


def paper_results() -> dict:
    """The paper's published tables: ``{"tables": {table: {"rows": [...], ...}}}``."""
    return yaml.safe_load(resources.files("ncp").joinpath("paper_results.yaml").read_text())
