"""The code each DAG stage runs, computed from its imports: the Snakemake rules' and DVC stages' code inputs.

A stage's code is its module, every `ncp` module that module imports (at the top or inside a function,
followed transitively, with the packages' `__init__.py` files on the way), the data files those modules
read by name (`params.schema.yaml`, `paper_results.yaml`), and `ncp/cli.py`, which starts every stage.
Lists kept by hand drifted (`ncp/distributed.py` and `ncp/data/readers.py` were missing, so editing
them reran nothing); this follows the code as it is. `cli.py` is an input but is not followed: it
imports every stage lazily, and following it would make every stage depend on all the code.
Pure Python (`ast`, no torch): the Snakefile and `ncp export-dvc` import it.
"""

from __future__ import annotations

import ast
import os
import re
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ncp/
REPO_DIR = PACKAGE_DIR.parent

# The module that does each stage's work (`ncp <stage>` dispatches to it).
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "prepare-data": ("ncp.prepare_data",),
    "train-vae": ("ncp.train_vae",),
    "cache-latents": ("ncp.cache_latents",),
    "train-nce": ("ncp.train_nce",),
    "sample": ("ncp.sample",),
    "evaluate-features": ("ncp.evaluate_features",),
    "evaluate": ("ncp.evaluate",),
    "tables": ("ncp.tables", "ncp.paper_tables"),
}
_NOT_FOLLOWED = {"ncp.cli"}
_DATA_FILE = re.compile(r"""["']([\w./-]+\.(?:ya?ml|json))["']""")


def _module_file(name: str) -> Path | None:
    relative = Path(*name.split("."))
    for candidate in (REPO_DIR / relative.with_suffix(".py"), REPO_DIR / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (absolute; `from a import b` gives `a` and `a.b`)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def module_closure(roots: tuple[str, ...]) -> tuple[Path, ...]:
    """The files of ``roots`` and of every `ncp` module they import, transitively (sorted)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [parent for root in roots for parent in _with_parents(root)]
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("ncp"):
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:  # `from ncp.x import some_function`: not a module
            continue
        files.add(path)
        if name in _NOT_FOLLOWED:
            continue
        for imported in _imported_names(path, name):
            todo.extend(_with_parents(imported))
        for data_name in _DATA_FILE.findall(path.read_text()):
            for folder in (path.parent, PACKAGE_DIR):
                if (folder / data_name).is_file():
                    files.add(folder / data_name)
    return tuple(sorted(files))


def stage_code(stage: str, relative_to: Path | None = None) -> list[str]:
    """The code files of ``stage`` (a key of STAGE_MODULES), cli.py first: as `ncp/...` paths when
    ``relative_to`` (default: the repository) holds this package (a link to it or a copy of it), else absolute
    (`snakemake -d /scratch/run` works in a folder outside the repository)."""
    files = module_closure(("ncp.cli", "ncp.config", "ncp.runtime") + STAGE_MODULES[stage])
    cli = PACKAGE_DIR / "cli.py"
    names = [str(f.relative_to(REPO_DIR)) for f in [cli] + [f for f in files if f != cli]]
    base = Path(relative_to or REPO_DIR)
    local = base / "ncp"
    # This package, or a copy of it that the work directory's repository tracks (a clone or a DVC repo
    # made from one): the work directory's own files are the code its jobs depend on.
    if local.is_dir() and (os.path.samefile(local, PACKAGE_DIR) or all((base / n).is_file() for n in names)):
        return names
    return [str(REPO_DIR / name) for name in names]
