"""`ncp paper-table`: each paper table from tiny fake metric folders whose numbers we chose, so every
cell of ours, and every "ours - paper", is a known answer; the paper's values come from its YAML."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ncp import paper_tables
from ncp.config import ExperimentConfig

PAPER = yaml.safe_load((Path(paper_tables.__file__).with_name("paper_results.yaml")).read_text())["tables"]


def _paper_value(table, model):
    return next(row["value"] for row in PAPER[table]["rows"] if row["model"] == model)


def _metrics(root, name, files):
    """results/<name>/metrics with the given {relative path: JSON content} files."""
    folder = root / "results" / name / "metrics"
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(json.dumps(content))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fid(**fids):
    return {
        "features": "domain (fake)",
        "feature_net": "lenet",
        "num_samples": 321,
        "num_reference": 9,
        "bootstrap": 2,
        "methods": {m: {"fid": v, "kid": 0.1, "fid_bootstrap_std": v / 10} for m, v in fids.items()},
        "sampling": {},
    }


def _nll(base, ncp):
    return {
        "base": {"nats": base, "std_error": 0.5},
        "ncp": {"nats": ncp, "std_error": 0.4},
        "log_z": 0.25,
        "log_z_se": 0.01,
        "log_z_ess": 900.0,
        "log_z_samples": 1000,
        "iw_samples": 10,
        "num_images": 50,
    }


def _groups(count):
    return {f"nce/group_{k}.json": {"group": k} for k in range(count)}


def _read_md(path):
    """The Markdown table as {first column: {header: cell}}, and the notes under it."""
    lines = path.read_text().splitlines()
    pipes = [line for line in lines if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in pipes]
    header, body = cells[0], cells[2:]  # cells[1] is the alignment row
    notes = [line for line in lines if line.startswith("- ")]
    return {row[0]: dict(zip(header, row)) for row in body}, notes


def _cfg(tables, experiment="main"):
    return ExperimentConfig.from_params({"experiment": experiment, "paper": {"tables": tables}})


def test_table2_takes_ours_from_the_sub_experiment(tmp_path):
    main = _metrics(tmp_path, "main", {"nll.json": _nll(70.0, 69.0)})  # not Table 2's: must not be used
    sub = _metrics(tmp_path, "main/table2/mlp_vae", {"nll.json": _nll(90.5, 88.25)})
    paper_tables.run("table2", _cfg(["table6"]), [main, sub], [], tmp_path / "out" / "table2")
    rows, notes = _read_md(tmp_path / "out" / "table2.md")
    gaussian, ncp = rows["VAE w/ Gaussian prior"], rows["NCP-VAE"]
    assert float(gaussian["ours"]) == 90.5 and float(ncp["ours"]) == 88.25
    assert float(gaussian["paper"]) == _paper_value("table2", "VAE w/ Gaussian prior") == 84.82
    assert float(gaussian["ours - paper"]) == pytest.approx(90.5 - 84.82, abs=1e-3)
    assert float(ncp["ours - paper"]) == pytest.approx(88.25 - _paper_value("table2", "NCP-VAE"), abs=1e-3)
    assert gaussian["ours from"] == ncp["ours from"] == "mlp_vae"
    assert set(rows) == {row["model"] for row in PAPER["table2"]["rows"]}
    missing = next(n for n in notes if "without a figure of ours" in n)
    assert missing.endswith(": VAE w/ LARS prior, VAE w/ SNIS prior")
    assert "experiment `main` and sub-experiments mlp_vae" in notes[0]
    latex = (tmp_path / "out" / "table2.tex").read_text()
    assert "\\caption{" + PAPER["table2"]["title"] + "}" in latex and "90.5 & 0.5 & 5.68 & mlp_vae" in latex


def test_table1_gmm_row_takes_the_sub_experiment_its_run_names(tmp_path):
    main = _metrics(tmp_path, "conv", {"fid.json": _fid(base=50.0, sir=45.0, recon=30.0)})
    gmm = _metrics(
        tmp_path, "conv/table1/celeba64_conv_table1_gmm", {"fid.json": _fid(base=60.0, sir=42.5, recon=31.0)}
    )
    frame, missing = paper_tables.comparison_table(
        PAPER["table1"], [paper_tables.Run(main), paper_tables.Run(gmm)], own_rows=True
    )
    ours = dict(zip(frame["model"], frame["ours"]))
    source = dict(zip(frame["model"], frame["ours from"]))
    assert ours["VAE w/ Gaussian prior"] == 50.0 and ours["NCP w/ Gaussian prior as base"] == 45.0
    assert ours["Base VAE-Recon"] == 30.0 and ours["NCP w/ GMM prior as base"] == 42.5
    assert (
        source["NCP w/ GMM prior as base"] == "celeba64_conv_table1_gmm"
        and source["Base VAE-Recon"] == "conv"
    )
    diff = dict(zip(frame["model"], frame["ours - paper"]))
    assert diff["NCP w/ GMM prior as base"] == pytest.approx(42.5 - 39.00)
    assert missing == ["2s-VAE", "WAE", "RAE"]
    # without the GMM sub-experiment's folder that row is missing, the others unchanged
    frame, missing = paper_tables.comparison_table(PAPER["table1"], [paper_tables.Run(main)], own_rows=True)
    assert missing == ["2s-VAE", "WAE", "RAE", "NCP w/ GMM prior as base"]
    assert dict(zip(frame["model"], frame["ours"]))["NCP w/ Gaussian prior as base"] == 45.0


def test_table7_rows_are_the_union_of_paper_and_our_group_counts(tmp_path):
    main = _metrics(tmp_path, "main", {"fid.json": _fid(base=40.0, sir=20.0), **_groups(4)})
    six = _metrics(tmp_path, "main/table7/groups_6", {"fid.json": _fid(base=35.0, sir=18.0), **_groups(6)})
    paper_tables.run("table7", _cfg(["table7"]), [main, six], [], tmp_path / "table7")
    rows, notes = _read_md(tmp_path / "table7.md")
    assert list(rows) == ["4", "6", "15", "30"]
    assert (float(rows["4"]["ours NVAE"]), float(rows["4"]["ours NCP-VAE"]), rows["4"]["ours from"]) == (
        40,
        20,
        "main",
    )
    assert (float(rows["4"]["ours NVAE ±"]), float(rows["4"]["ours NCP-VAE ±"])) == (
        4,
        2,
    )  # the bootstrap spreads
    assert (float(rows["6"]["ours NVAE"]), float(rows["6"]["ours NCP-VAE"]), rows["6"]["ours from"]) == (
        35,
        18,
        "groups_6",
    )
    assert (float(rows["6"]["paper NVAE"]), float(rows["6"]["paper NCP-VAE"])) == (33.18, 18.68)
    assert float(rows["30"]["paper NCP-VAE"]) == 5.25
    assert any(n.endswith(": 15 groups, 30 groups") for n in notes)
    assert (tmp_path / "table7.tex").is_file()


def test_table7_ncp_column_falls_back_to_ld(tmp_path):
    run = _metrics(tmp_path, "ld_run", {"fid.json": _fid(base=40.0, ld=22.0), **_groups(2)})
    frame, _ = paper_tables.groups_table(PAPER["table7"], [paper_tables.Run(run)])
    assert frame.set_index("groups").loc[2, "ours NCP-VAE"] == 22.0


def test_table7_columns_do_not_depend_on_the_group_counts(tmp_path):
    run = _metrics(tmp_path, "main", {"fid.json": _fid(base=40.0, sir=20.0), **_groups(2)})
    frame, _ = paper_tables.groups_table(PAPER["table7"], [paper_tables.Run(run)])
    assert list(frame.columns) == [
        "groups",
        "paper NVAE",
        "paper NCP-VAE",
        "ours NVAE",
        "ours NVAE ±",
        "ours NCP-VAE",
        "ours NCP-VAE ±",
        "ours from",
        "ours decoder",
    ]


def _sweep_record(sampler, steps, fid, time_1, time_10, memory_bytes):
    setting = {"num_proposals": steps} if sampler == "sir" else {"num_steps": steps, "step_size": 0.01}
    sampling = {
        "sampler": sampler,
        "setting": setting,
        "time_1_s": time_1,
        "time_10_s": time_10,
        "peak_memory_10_bytes": memory_bytes,
        "memory_kind": "process peak RSS",
        "seconds_per_image": 0.1,
    }
    return {**_fid(x=fid), "sampling": {"x": sampling}}


def test_table8_our_sweep_beside_the_papers(tmp_path):
    main = _metrics(
        tmp_path,
        "main",
        {
            "fid.json": _fid(base=40.0, sir=20.0),
            "fid/sir_m5.json": _sweep_record("sir", 5, 25.0, 0.5, 1.5, 2.5e9),
            "fid/sir.json": _sweep_record("sir", 50, 21.0, 0.75, 2.25, 3.0e9),
            "fid/ld_t5.json": _sweep_record("ld", 5, 30.0, 1.25, 4.0, 0.5e9),
            "fid/sir_m7.json": _sweep_record("sir", 7, 23.0, 0.5, 1.75, 2.75e9),
        },
    )  # not a paper setting
    variants = ["sir_m5", "sir", "ld_t5", "sir_m7", "sir_m500"]  # sir_m500's file is absent
    frame, missing, protocol = paper_tables.sampler_sweep_table(
        PAPER["table8"], paper_tables.Run(main), variants
    )
    table = frame.set_index(["method", "steps"])
    assert list(table.index) == [
        ("sir", 5),
        ("sir", 7),
        ("sir", 50),
        ("sir", 500),
        ("sir", 5000),
        ("ld", 5),
        ("ld", 50),
        ("ld", 500),
        ("ld", 1000),
    ]  # SIR first, as the paper
    assert list(frame.columns) == [
        "method",
        "steps",
        "paper FID",
        "paper 1 img (s)",
        "paper 10 img (s)",
        "paper memory (GB)",
        "ours FID",
        "ours FID ±",
        "ours 1 img (s)",
        "ours 10 img (s)",
        "ours memory (GB)",
    ]
    ours = ["ours FID", "ours 1 img (s)", "ours 10 img (s)", "ours memory (GB)"]
    assert list(table.loc[("sir", 5), ours]) == [25.0, 0.5, 1.5, 2.5]
    assert table.loc[("sir", 5), "ours FID ±"] == 2.5  # the record's bootstrap spread
    assert list(table.loc[("sir", 50), ours]) == [21.0, 0.75, 2.25, 3.0]
    assert list(table.loc[("ld", 5), ours]) == [30.0, 1.25, 4.0, 0.5]
    assert list(
        table.loc[("sir", 5), ["paper FID", "paper 1 img (s)", "paper 10 img (s)", "paper memory (GB)"]]
    ) == [11.75, 0.34, 0.42, 1.96]
    assert table.loc[("sir", 7), "ours FID"] == 23.0 and pd.isna(table.loc[("sir", 7), "paper FID"])
    assert missing == ["sir 500", "sir 5000", "ld 50", "ld 500", "ld 1000"]
    assert protocol == {"memory_kind": "process peak RSS", "num_samples": 321, "features": "domain (fake)"}
    paper_tables.run("table8", _cfg(["table8"]), [main], variants, tmp_path / "table8")
    notes = _read_md(tmp_path / "table8.md")[1]
    assert any("321 samples (domain (fake))" in n and "process peak RSS" in n for n in notes)
    assert any(n.endswith(": sir 500, sir 5000, ld 50, ld 500, ld 1000") for n in notes)
    assert (tmp_path / "table8.tex").is_file()


def test_table8_note_needs_only_its_declared_inputs(tmp_path):
    main = _metrics(tmp_path, "main", {"fid/sir_m5.json": _sweep_record("sir", 5, 25.0, 0.5, 1.5, 2.5e9)})
    paper_tables.run("table8", _cfg(["table8"]), [main], ["sir_m5"], tmp_path / "table8")
    assert any("321 samples (domain (fake))" in n for n in _read_md(tmp_path / "table8.md")[1])


def test_table9_mmd_per_group(tmp_path):
    per_group = [
        {"group": 0, "q_p": 0.5, "q_pncp": 0.25, "bandwidth": 2.0, "dim": 16},
        {"group": 1, "q_p": 0.125, "q_pncp": 0.0625, "bandwidth": 3.0, "dim": 64},
    ]
    main = _metrics(
        tmp_path,
        "main",
        {
            "mmd.json": {
                "num_samples": 77,
                "ncp_method": "sir",
                "estimator": "unbiased MMD^2",
                "per_group": per_group,
            }
        },
    )
    paper_tables.run("table9", _cfg(["table9"]), [main], [], tmp_path / "table9")
    rows, notes = _read_md(tmp_path / "table9.md")
    assert list(rows) == ["0", "1"]
    assert [float(rows["1"][c]) for c in ("dim", "scale", "bandwidth", "q_p", "q_pncp")] == [
        64,
        1,
        3,
        0.125,
        0.0625,
    ]
    assert rows["1"]["q_p ±"] == rows["1"]["z"] == ""  # a file from before the errors: blank, not invented
    assert "77 samples of p and of p_NCP (by sir), 77 of q" in notes[0] and "unbiased MMD^2" in notes[0]
    paper_note = next(note for note in notes if note.startswith("- paper (CelebA-64"))
    assert paper_note.endswith("group 5: 0.002 / 0.002, group 10: 0.08 / 0.06, group 12: 0.08 / 0.07")
    assert (tmp_path / "table9.tex").is_file()


def test_table9_rows_per_bandwidth_scale_with_errors_and_tally(tmp_path):
    def entry(scale, q_p, q_ncp, se):
        return {
            "scale": scale,
            "bandwidth": 4 * scale,
            "mmd2_q_p": q_p,
            "mmd2_q_p_se": se,
            "mmd2_q_ncp": q_ncp,
            "mmd2_q_ncp_se": se,
            "difference": q_p - q_ncp,
            "difference_se": se,
            "z_score": (q_p - q_ncp) / se,
        }

    per_group = [
        {"group": 0, "dim": 8, "scales": [entry(1.0, 0.5, 0.25, 0.0625), entry(0.5, 0.25, 0.375, 0.25)]}
    ]
    tally = {
        "1": {"groups": 1, "lower": 1, "closer": 1, "farther": 0},
        "0.5": {"groups": 1, "lower": 0, "closer": 0, "farther": 0},
    }
    main = _metrics(
        tmp_path,
        "main",
        {
            "mmd.json": {
                "num_samples": 50,
                "num_q": 900,
                "ncp_method": "ld",
                "estimator": "unbiased MMD^2",
                "ncp_closer": tally,
                "per_group": per_group,
            }
        },
    )
    paper_tables.run("table9", _cfg(["table9"]), [main], [], tmp_path / "table9")
    lines = [line for line in (tmp_path / "table9.md").read_text().splitlines() if line.startswith("|")][2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [[float(c) for c in row] for row in cells] == [
        [0, 8, 1, 4, 0.5, 0.0625, 0.25, 0.0625, 4],
        [0, 8, 0.5, 2, 0.25, 0.25, 0.375, 0.25, -0.5],
    ]
    notes = _read_md(tmp_path / "table9.md")[1]
    assert "50 samples of p and of p_NCP (by ld), 900 of q" in notes[0]
    assert (
        "- scale 1: q_pncp below q_p in 1 of 1 groups, by more than 2 standard errors in 1, above by more than 2 in 0"
        in notes
    )
    assert (
        "- scale 0.5: q_pncp below q_p in 0 of 1 groups, by more than 2 standard errors in 0, above by more than 2 in 0"
        in notes
    )


def test_bad_table_name_or_no_runs_is_an_error(tmp_path):
    main = _metrics(tmp_path, "main", {})
    with pytest.raises(ValueError, match="unknown paper table 'table10'"):
        paper_tables.run("table10", _cfg([]), [main], [], tmp_path / "t")
    with pytest.raises(ValueError, match="needs --runs"):
        paper_tables.run("table3", _cfg([]), [], [], tmp_path / "t")
    assert not list(tmp_path.glob("t.*"))


def test_missing_ours_are_blank_in_the_markdown(tmp_path):
    sub = _metrics(tmp_path, "main/table2/mlp_vae", {"nll.json": _nll(90.5, 88.25)})
    paper_tables.run("table2", _cfg([]), [_metrics(tmp_path, "main", {}), sub], [], tmp_path / "table2")
    assert _read_md(tmp_path / "table2.md")[0]["VAE w/ LARS prior"]["ours"] == ""


def test_a_table_not_of_this_run_reads_only_its_declared_inputs(tmp_path):
    from ncp.params import resolve_params
    from ncp.workflow.study import study_experiments, table_metric_files

    experiments = study_experiments(resolve_params({"experiment": "main", "paper": {"tables": ["table6"]}}))
    assert table_metric_files(experiments, "table3", []) == []  # so no row may come from a metric file
    main = _metrics(tmp_path, "main", {"fid.json": _fid(base=40.0, sir=20.0, recon=5.0)})
    frame, _ = paper_tables.comparison_table(PAPER["table3"], [paper_tables.Run(main)], own_rows=False)
    assert frame["ours"].isna().all()


def test_table9_names_the_run_it_reads(tmp_path):
    # With paper.table9_from the Table 9 run is a sub-experiment: the note must say which, and its groups.
    sub = _metrics(
        tmp_path,
        "main/table7/groups_15",
        {
            "mmd.json": {
                "num_samples": 5,
                "ncp_method": "sir",
                "estimator": "unbiased MMD^2",
                "per_group": [{"group": 0, "q_p": 0.5, "q_pncp": 0.25, "bandwidth": 2.0, "dim": 16}],
            },
            **_groups(15),
        },
    )
    paper_tables.run("table9", _cfg(["table9"]), [sub], [], tmp_path / "table9")
    _, notes = _read_md(tmp_path / "table9.md")
    assert notes[0].startswith("- ours: run `groups_15` (15 groups)")


def _origin(decoder, synthetic=False):
    return {"model_origin": {"decoder": decoder, "dataset": "celeba64", "synthetic": synthetic}}


def test_every_row_names_its_models_decoder(tmp_path):
    # The paper's NVAEs have a Gaussian decoder, NVAE's released ones a logistic mixture: a row must say
    # which one its figure comes from, including rows from sub-experiments with another decoder.
    main = _metrics(
        tmp_path, "main", {"fid.json": {**_fid(base=40.0, sir=20.0), **_origin("Gaussian")}, **_groups(4)}
    )
    six = _metrics(
        tmp_path,
        "main/table7/g6",
        {"fid.json": {**_fid(base=35.0, sir=18.0), **_origin("DMoL (10)")}, **_groups(6)},
    )
    paper_tables.run("table7", _cfg(["table7"]), [main, six], [], tmp_path / "table7")
    rows, notes = _read_md(tmp_path / "table7.md")
    assert rows["4"]["ours decoder"] == "Gaussian" and rows["6"]["ours decoder"] == "DMoL (10)"
    assert rows["15"]["ours decoder"] == ""  # a paper-only row has no model of ours
    assert "- image decoder of ours: Gaussian" in notes
    paper_tables.run("table3", _cfg(["table3"]), [main], [], tmp_path / "table3")
    rows, _ = _read_md(tmp_path / "table3.md")
    assert {row["ours decoder"] for row in rows.values() if row["ours"]} == {"Gaussian"}


def test_a_stand_in_run_is_marked_in_the_title_and_first_note_of_every_table(tmp_path):
    main = _metrics(
        tmp_path,
        "main",
        {"fid.json": {**_fid(base=40.0, sir=20.0), **_origin("Gaussian", synthetic=True)}, **_groups(4)},
    )
    for table in ("table3", "table7"):
        paper_tables.run(table, _cfg([table]), [main], [], tmp_path / table)
        text = (tmp_path / f"{table}.md").read_text()
        assert text.startswith("### SYNTHETIC STAND-IN DATA: ")
        _, notes = _read_md(tmp_path / f"{table}.md")
        assert notes[0].startswith("- **SYNTHETIC STAND-IN DATA**") and "celeba64" in notes[0]
        assert (tmp_path / f"{table}.tex").read_text().startswith("% SYNTHETIC STAND-IN DATA")
    # a real run's table says nothing of stand-ins
    real = _metrics(tmp_path, "real", {"fid.json": {**_fid(base=40.0, sir=20.0), **_origin("Gaussian")}})
    paper_tables.run("table3", _cfg(["table3"]), [real], [], tmp_path / "real3")
    assert "STAND-IN" not in (tmp_path / "real3.md").read_text()
