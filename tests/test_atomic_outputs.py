"""Every file a stage writes appears whole or not at all, whatever stops the writer half-way."""

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from ncp import tables
from ncp.runtime import atomic_output

REPO = Path(__file__).resolve().parents[1]


def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old, complete\n")
    with pytest.raises(OSError), atomic_output(target) as tmp:
        tmp.write_text("new, half")
        raise OSError("No space left on device")
    assert target.read_text() == "old, complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_figure_whose_saving_fails_half_way_is_not_left_behind(tmp_path, monkeypatch):
    # Fig. 5 through matplotlib: a savefig that dies after writing some bytes (a full disk, a kill)
    # must not leave a truncated PNG that Snakemake or a reader would take for the figure.
    real_savefig = Figure.savefig

    def savefig_then_die(self, fname, *args, **kwargs):
        real_savefig(self, fname, *args, **kwargs)
        with open(fname, "r+b") as handle:
            handle.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", savefig_then_die)
    groups = [{"group": 0, "final_loss": 1.2, "sir_ess": 3.0}]
    with pytest.raises(OSError):
        tables.plot_figure5(groups, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_table_whose_writing_fails_leaves_no_markdown_or_latex(tmp_path, monkeypatch):
    import pandas as pd

    def to_latex_dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_latex", to_latex_dies)
    with pytest.raises(OSError):
        tables.write_table(pd.DataFrame({"a": [1.0]}), "t", ["note"], tmp_path / "results")
    assert not (tmp_path / "results.tex").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_process_killed_while_saving_leaves_no_file(tmp_path):
    # kill -9 in the middle of torch.save of a large tensor (the write takes ~100 ms or more).
    target = tmp_path / "checkpoint.pt"
    code = (
        "import torch, sys\n"
        "from ncp.runtime import atomic_save\n"
        "print('ready', flush=True)\n"
        f"atomic_save({{'w': torch.randn(16_000_000)}}, {str(target)!r})\n"
    )
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert job.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".checkpoint.pt.*")) and time.time() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not target.exists()


# The functions that write files; a stage module calling one directly (not through ncp.runtime's atomic
# helpers) could leave a half-written output.
DIRECT_WRITERS = {"savefig", "save_image", "savez", "savez_compressed", "save", "write_text", "write_bytes",
                  "to_csv", "imwrite"}  # fmt: skip
ALLOWED = {
    "ncp/runtime.py",  # the helpers themselves
    "ncp/workflow/export_dvc.py",  # writes dvc.yaml for the user, not a pipeline output
}


def test_stage_code_writes_files_only_through_the_atomic_helpers():
    direct = []
    for path in sorted((REPO / "ncp").rglob("*.py")):
        name = str(path.relative_to(REPO))
        if name in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in DIRECT_WRITERS
            ):
                direct.append(f"{name}:{node.lineno}: {ast.unparse(node.func)}")
    assert direct == []
