"""The `ncp` command: one sub-command per DAG stage, each a thin call into its stage module.

Parameters come from params YAML files (``--params a.yaml b.yaml``, later files overlay earlier ones) or,
from Snakemake, as the JSON of just the sections the stage reads (``--params-json``). Either way they
are checked against the schema before anything runs. File paths are explicit arguments, so the same
command works by hand, from Snakemake and from DVC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from ncp.config import ExperimentConfig
from ncp.params import ConfigError, load_params_files, resolve_params


def _add_params(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--params", nargs="+", type=Path, default=None, help="params YAML files, later overlaying earlier"
    )
    group.add_argument("--params-json", default=None, help="params as JSON (what Snakemake passes)")
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        help="write all output to this file (what the Snakemake rules do); an error's one-line message "
        "goes to the terminal as well",
    )
    parser.add_argument(
        "--run-json",
        type=Path,
        default=None,
        help="a JSON file of the `run` section (device, threads, ...): Snakemake writes one per experiment",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: run.threads)")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    if args.params_json is not None:
        try:
            params = json.loads(args.params_json)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"--params-json is not valid JSON: {error.msg} at character {error.pos}"
            ) from None
    elif args.params:
        params = load_params_files(args.params)
    else:
        params = resolve_params({})
    if (
        args.run_json is not None
    ):  # the run settings travel apart from the params (no rerun trigger sees them)
        if not args.run_json.is_file():
            raise ConfigError(f"--run-json file not found: {args.run_json}")
        params = {**params, "run": json.loads(args.run_json.read_text())}
    return ExperimentConfig.from_params(params)


def _start_job(command: str, cfg: ExperimentConfig, threads: int | None) -> None:
    """CPU threads, glibc's reuse of freed memory and the end-with-Snakemake watchdog for every stage
    (see ncp.runtime); a multi-GPU training claims its GPUs here, before torchrun starts its processes
    (other stages claim theirs when they pick their device)."""
    from ncp import runtime

    runtime.exit_with_workflow()
    runtime.set_threads(threads or cfg.run.threads)
    runtime.keep_freed_memory()
    if command == "train-vae" and cfg.vae.train.num_processes > 1:
        runtime.pick_device(cfg.device, num_gpus=cfg.vae.train.num_processes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncp", description="NCP-VAE stages (see the README and the Snakefile)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    commands.add_parser("export-dvc", help="generate dvc.yaml from the Snakemake job graph (see --help)")
    commands.add_parser(
        "sync", help="after dvc checkout, make Snakemake agree nothing must rerun (see --help)"
    )
    commands.add_parser("benchmark", help="measure SIR, LD, stage 1, NCE and caching speed (see --help)")

    p = commands.add_parser("prepare-data", help="load a dataset by name and write its train/test splits")
    _add_params(p)
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--test-out", type=Path, required=True)

    p = commands.add_parser("train-vae", help="stage 1: train the backbone VAE")
    _add_params(p)
    p.add_argument("--train-data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True, help="resume state (not a declared output)")

    p = commands.add_parser("cache-latents", help="stage 2a: (z_q, z_p, context) per group")
    _add_params(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--train-data", type=Path, required=True)
    p.add_argument(
        "--out", type=Path, nargs="+", required=True, help="one shard folder per latent group, in order"
    )

    p = commands.add_parser("train-nce", help="stage 2b: the classifier D_k of one group")
    _add_params(p)
    p.add_argument("--latents", type=Path, required=True, help="the group's shard folder from cache-latents")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics-out", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, default=None, help="resume state (not a declared output)")
    p.add_argument("--checkpoint", type=Path, default=None, help="the VAE (needed by cache.mode stream)")
    p.add_argument(
        "--train-data", type=Path, default=None, help="training images (needed by cache.mode stream)"
    )

    p = commands.add_parser("sample", help="stage 3: images from the base prior or the NCP prior")
    _add_params(p)
    p.add_argument("--method", required=True, help="base, sir, ld, or a Table 8 setting: sir_m<M>, ld_t<T>")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--classifiers", type=Path, nargs="*", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid", type=Path, required=True)
    p.add_argument(
        "--num-samples", type=int, default=None, help="images to draw (default: sample.num_samples)"
    )

    p = commands.add_parser("evaluate", help="stage 4: FID features, FID/KID, MMD, NLL")
    p.add_argument("metric", choices=["features", "fid", "mmd", "nll", "neighbours"])
    _add_params(p)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--train-data", type=Path)
    p.add_argument("--test-data", type=Path)
    p.add_argument(
        "--features", type=Path, help="reference features from `evaluate features` (network.pt beside it)"
    )
    p.add_argument("--samples", type=Path, nargs="*", default=[])
    p.add_argument("--classifiers", type=Path, nargs="*", default=[])
    p.add_argument("--out", type=Path, required=True)

    p = commands.add_parser("tables", help="stage 5: summary.json and the result tables")
    _add_params(p)
    p.add_argument("--metrics-dir", type=Path, required=True)
    p.add_argument("--summary-out", type=Path, required=True)
    p.add_argument("--tables-dir", type=Path, required=True)
    p.add_argument("--figures-dir", type=Path, required=True)
    p.add_argument(
        "--figure5-from", type=Path, help="metrics folder of paper.table9_from's run: its Fig. 5 is drawn too"
    )

    p = commands.add_parser("paper-table", help="stage 5: one of the paper's tables, ours beside the paper's")
    _add_params(p)
    p.add_argument("table", help="table1 ... table9")
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        required=True,
        help="metrics folders of the runs that supply rows: this run's first, then its sub-experiments'",
    )
    p.add_argument(
        "--variants", nargs="*", default=[], help="Table 8: the sampling settings swept (e.g. sir_m500)"
    )
    p.add_argument("--out", type=Path, required=True, help="the .md file; the .tex is written beside it")

    p = commands.add_parser(
        "import-nvae", help="convert an official NVAE checkpoint to this project's format"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ncp` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"]:  # not a DAG stage: measures the hot paths (ncp/benchmark/)
        from ncp import benchmark

        return benchmark.main(argv[1:])
    if argv[:1] in (["export-dvc"], ["sync"]):  # workflow tools with parsers of their own
        from ncp.workflow import export_dvc, sync

        return (export_dvc.main_export if argv[0] == "export-dvc" else sync.main_sync)(argv[1:])
    if argv[:1] == ["plan"]:  # the cost plan of a params file (ncp/workflow/plan.py)
        from ncp.workflow import plan

        return plan.main_plan(argv[1:])
    args = _parser().parse_args(argv)
    terminal = _redirect_output(args.log) if getattr(args, "log", None) else sys.stderr
    try:
        return _dispatch(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        message = f"ncp {args.command}: error: {_one_line(error)}"
    except Exception as error:  # noqa: BLE001 - a bug: the traceback goes to the log, one line to the user
        traceback.print_exc()
        message = (
            f"ncp {args.command}: error: {type(error).__name__}: {_one_line(error)} (a bug? traceback above)"
        )
    print(message, file=sys.stderr, flush=True)
    if terminal is not sys.stderr:
        print(message, file=terminal, flush=True)
    return 2


def _redirect_output(log: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so child processes such as
    torchrun's too) to ``log``; return a stream to the original stderr, where errors are echoed.

    Why: Snakemake's terminal shows a failed job's shell command, not its log; echoing the error
    line keeps the problem where the user looks, with the full output still in the log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return terminal


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (multi-line messages are joined; the log keeps the rest)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) if len(lines) <= 3 else "; ".join(lines[:3]) + " ..."


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "import-nvae":
        from ncp import import_nvae

        import_nvae.run(args.checkpoint, args.out)
        return 0
    cfg = _config(args)
    _start_job(command, cfg, args.threads)
    if command == "prepare-data":
        from ncp import prepare_data

        prepare_data.run(cfg.data, cfg.seed, args.train_out, args.test_out)
    elif command == "train-vae":
        from ncp import train_vae

        train_vae.run(cfg.data, cfg.vae, cfg.seed, cfg.device, args.train_data, args.out, args.work_dir)
    elif command == "cache-latents":
        from ncp import cache_latents

        cache_latents.run(cfg.cache, cfg.seed, cfg.device, args.checkpoint, args.train_data, args.out)
    elif command == "train-nce":
        from ncp import train_nce

        train_nce.run(
            cfg.nce,
            cfg.seed,
            cfg.device,
            args.latents,
            args.out,
            args.metrics_out,
            args.work_dir,
            args.checkpoint,
            args.train_data,
        )
    elif command == "sample":
        from ncp import sample

        sample.run(
            cfg.sample,
            args.method,
            cfg.seed,
            cfg.device,
            args.checkpoint,
            args.classifiers,
            args.out,
            args.grid,
            args.num_samples,
        )
    elif command == "evaluate" and args.metric == "features":  # stage 4a: its own module and code inputs
        from ncp import evaluate_features

        if args.train_data is None or args.test_data is None:
            raise ValueError("`ncp evaluate features` needs --train-data and --test-data")
        evaluate_features.run(cfg, args.train_data, args.test_data, args.out)
    elif command == "evaluate":
        from ncp import evaluate

        evaluate.run(
            args.metric,
            cfg,
            out=args.out,
            checkpoint=args.checkpoint,
            train_data=args.train_data,
            test_data=args.test_data,
            features=args.features,
            samples=args.samples,
            classifiers=args.classifiers,
        )
    elif command == "tables":
        from ncp import tables

        tables.run(
            cfg, args.metrics_dir, args.summary_out, args.tables_dir, args.figures_dir, args.figure5_from
        )
    elif command == "paper-table":
        from ncp import paper_tables

        paper_tables.run(args.table, cfg, args.runs, args.variants, args.out.with_suffix(""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
