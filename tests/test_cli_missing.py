"""`dgm fit --mask` and `dgm score --mask` (issue 13): data with missing entries on the command
line, under the Python API's rules (docs/inference.md, "Missing data"), every bad mask a
clear error (status 1), and `--resume` holding a run to its mask."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dgmlang.cli import CHECKPOINT, main

TINY = """
model tiny {
    input  y : int
    data   x[16]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Binomial(4, logits = mlp(z, onehot(y, 3), hidden = [8]))
}
"""

#: b depends on a: a's missing entries are latents of their row, drawn by the guide's
#: imputation step
CHAIN = """
model chain {
    data   a[3]
    data   b[3]
    latent z
    z ~ Normal(0, 1)
    a ~ Normal(z, 1)
    b ~ Normal(a, 1)
}
"""

#: y depends on the count k: k's missing entries would be discrete latents (not a label)
COUNTS = """
model counts {
    data   k
    data   y
    latent z
    z ~ Normal(0, 1)
    k ~ Poisson(exp(z))
    y ~ Normal(k, 1)
}
"""

#: a joint distribution over each row: gaps scored by the observed entries' marginal
JOINT = """
model joint {
    data   p[3]
    latent z[3]
    z ~ Normal(0, 1)
    p ~ Dirichlet(softplus(z) + 0.5)
}
"""

STEPS = 60


def dgm(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_missing")
    rng = np.random.default_rng(0)
    (root / "tiny.dgm").write_text(TINY)
    (root / "chain.dgm").write_text(CHAIN)
    (root / "joint.dgm").write_text(JOINT)
    (root / "counts.dgm").write_text(COUNTS)
    y = rng.integers(0, 3, size=48)
    x = rng.binomial(4, 0.2 + 0.3 * (np.arange(16) % 3 == y[:, None]))
    np.savez(root / "tiny.npz", x=x, y=y)
    mask = rng.random((48, 16)) > 0.3
    mask[:8] = True  # 8 complete rows
    np.savez(root / "mask.npz", x=mask)
    np.savez(root / "mask_int.npz", x=mask.astype(int))
    other = mask.copy()
    other[20, :] = ~other[20, :]
    np.savez(root / "other_mask.npz", x=other)
    partial = x.astype(float)
    partial[~mask] = np.nan
    np.savez(root / "partial.npz", x=partial, y=y)
    a = rng.normal(size=(20, 3))
    np.savez(root / "chain.npz", a=a, b=a + rng.normal(size=(20, 3)))
    np.savez(root / "chain_mask.npz", a=rng.random((20, 3)) > 0.5)
    np.savez(root / "joint.npz", p=rng.dirichlet(np.ones(3), size=20))
    k = rng.poisson(2.0, size=20)
    np.savez(root / "counts.npz", k=k, y=k + rng.normal(size=20))
    np.savez(root / "counts_mask.npz", k=np.arange(20) % 3 != 0)
    np.savez(root / "joint_mask.npz", p=np.tile([True, True, False], (20, 1)))
    np.savez(root / "joint_rows.npz", p=np.repeat(np.arange(20) % 2 == 0, 3).reshape(20, 3))
    return root


def fit(workdir: Path, out: Path, *extra) -> int:
    return dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", STEPS, "--batch-size", 16,
               "--threads", 1, "--out", out, "-q", *extra)


@pytest.fixture(scope="module")
def masked_run(workdir) -> Path:
    out = workdir / "runs" / "masked"
    assert fit(workdir, out, "--mask", workdir / "mask.npz") == 0
    return out


def parameters(run: Path) -> dict:
    import torch

    saved = torch.load(run / CHECKPOINT, weights_only=True)
    return {f"{state}.{k}": v for state in ("model_state", "guide_state") for k, v in saved[state].items()}


def assert_same(run: Path, reference: Path) -> None:
    import torch

    got, expected = parameters(run), parameters(reference)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# ---------------------------------------------------------------- fit


def test_fit_with_a_mask_records_it_and_scores_only_complete_reference_rows(masked_run, workdir, capsys):
    info = json.loads((masked_run / "run.json").read_text())
    assert info["status"] == "finished" and info["mask"] == str(workdir / "mask.npz")
    assert len(info["mask_sha256"]) == 64
    assert info["score"]["incomplete_rows"] == 40 and info["score"]["rows_scored"] == 8
    lines = (masked_run / "reference_scores.csv").read_text().splitlines()
    assert lines[0] == "row,log_prob" and [int(line.split(",")[0]) for line in lines[1:]] == list(range(8))


def test_nan_and_a_mask_of_0_1_mean_the_same_as_a_boolean_mask(masked_run, workdir, tmp_path):
    """The same missing entries given three ways train to the same parameters."""
    assert fit(workdir, tmp_path / "ints", "--mask", workdir / "mask_int.npz", "--no-score") == 0
    assert_same(tmp_path / "ints", masked_run)
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "partial.npz", "--steps", STEPS, "--batch-size", 16,
               "--threads", 1, "--out", tmp_path / "nan", "-q", "--no-score") == 0
    assert_same(tmp_path / "nan", masked_run)
    assert json.loads((tmp_path / "nan" / "run.json").read_text())["mask"] is None


def test_the_masked_fit_is_the_api_fit_with_the_mask(masked_run, workdir):
    import torch

    import dgmlang

    model = dgmlang.load(workdir / "tiny.dgm")
    with np.load(workdir / "tiny.npz") as data, np.load(workdir / "mask.npz") as mask:
        torch.set_num_threads(1)
        model.fit({"x": data["x"], "y": data["y"]}, mask={"x": mask["x"]}, steps=STEPS, batch_size=16, seed=0,
                  progress=False)
    fitted = dgmlang.load_fitted(masked_run / CHECKPOINT)
    np.testing.assert_allclose(fitted.history["loss"], model.history["loss"], rtol=1e-6)


def test_validation_data_with_missing_entries(workdir, tmp_path):
    out = tmp_path / "validated"
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--validation", workdir / "partial.npz",
               "--epochs", 2, "--batch-size", 16, "--out", out, "-q") == 0
    info = json.loads((out / "run.json").read_text())
    assert info["score"]["rows_scored"] == 8 and info["score"]["incomplete_rows"] == 40
    header = (out / "loss.csv").read_text().splitlines()[0]
    assert header == "step,loss,validation_loss"


def test_missing_everywhere_leaves_no_threshold(workdir, tmp_path, capsys):
    np.savez(tmp_path / "half.npz", x=np.tile(np.arange(16) % 2 == 0, (48, 1)))
    assert fit(workdir, tmp_path / "run", "--mask", tmp_path / "half.npz") == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["score"]["threshold"] is None and "every row" in info["score"]["why_none"]
    assert "48 rows with missing entries were left out of the reference scores" in capsys.readouterr().err
    assert not (tmp_path / "run" / "reference_scores.csv").exists()


# ---------------------------------------------------------------- resume


def stop_after_the_first_checkpoint(workdir: Path, out: Path, *extra) -> int:
    command = [sys.executable, "-m", "dgmlang.cli", "fit", "tiny.dgm", "--data", "tiny.npz", "--steps", "400",
               "--batch-size", "8", "--threads", "1", "--checkpoint-every", "5", "--no-score", "-q",
               "--out", str(out), *extra]
    with subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).is_file():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        return process.wait(60)


def test_resume_uses_the_runs_mask_and_refuses_another(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    out = tmp_path / "stopped"
    assert stop_after_the_first_checkpoint(workdir, out, "--mask", "mask.npz") == 143
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "stopped" and info["mask"] == "mask.npz"
    # another mask, given or in the mask's place: refused, naming both
    assert dgm("fit", "--resume", out, "--mask", "other_mask.npz", "-q") == 1
    err = capsys.readouterr().err
    assert "the mask other_mask.npz differs from the one the run was fitted with (mask.npz" in err
    assert "Traceback" not in err
    # a run fitted without a mask takes none
    unmasked = tmp_path / "unmasked"
    shutil.copytree(out, unmasked)
    (unmasked / "run.json").write_text(json.dumps({**info, "mask": None, "mask_sha256": None}))
    assert dgm("fit", "--resume", unmasked, "--mask", "mask.npz", "-q") == 1
    assert "the run was fitted without a mask" in capsys.readouterr().err
    # the run's mask moved: said so; given with --mask at its new place, the run continues
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    (moved / "run.json").write_text(json.dumps({**info, "mask": str(tmp_path / "gone.npz")}))
    assert dgm("fit", "--resume", moved, "-q") == 1
    assert "which is not there any more" in capsys.readouterr().err
    shutil.copy(workdir / "mask.npz", tmp_path / "renamed.npz")
    assert dgm("fit", "--resume", moved, "--mask", tmp_path / "renamed.npz", "-q") == 0
    # the run's own mask (from run.json): continues to the uninterrupted run's parameters
    assert dgm("fit", "--resume", out, "-q") == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    whole = tmp_path / "whole"
    assert dgm("fit", "tiny.dgm", "--data", "tiny.npz", "--steps", 400, "--batch-size", 8, "--threads", 1,
               "--no-score", "-q", "--out", whole, "--mask", "mask.npz") == 0
    assert_same(out, whole)
    assert_same(moved, whole)


# ---------------------------------------------------------------- score


def test_score_with_a_mask_adds_complete_and_warns_once(masked_run, workdir, tmp_path, capsys):
    assert dgm("score", masked_run, "--data", workdir / "tiny.npz", "--mask", workdir / "mask.npz",
               "-o", tmp_path / "s.csv", "-o", tmp_path / "s.npz", "-q") == 0
    out, err = capsys.readouterr()
    assert err.count("dgm: warning:") == 1
    assert "40 of 48 rows have missing entries (complete = 0)" in err
    assert "(40 rows incomplete)" in out
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "row,log_prob,outlier,complete"
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 3], np.arange(48) < 8)
    with np.load(tmp_path / "s.npz") as saved:
        np.testing.assert_array_equal(saved["complete"], np.arange(48) < 8)
    # NaN in the data: the same scores as the mask (same seed)
    assert dgm("score", masked_run, "--data", workdir / "partial.npz", "-o", tmp_path / "n.csv", "-q") == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "n.csv", delimiter=",", skiprows=1), table)
    assert capsys.readouterr().err.count("dgm: warning:") == 1


def test_score_of_complete_rows_is_unchanged_by_an_all_true_mask(masked_run, workdir, tmp_path, capsys):
    np.savez(tmp_path / "all.npz", x=np.ones((48, 16), dtype=bool))
    assert dgm("score", masked_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "a.csv", "-q") == 0
    assert dgm("score", masked_run, "--data", workdir / "tiny.npz", "--mask", tmp_path / "all.npz",
               "-o", tmp_path / "b.csv", "-q") == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "row,log_prob,outlier,complete"


def test_a_row_with_nothing_observed_scores_about_zero(masked_run, workdir, tmp_path):
    """log p(nothing) = 0, estimated by importance sampling (the guide reads a filled row, so
    its proposal is not the prior and the estimate is only near 0)."""
    mask = np.ones((48, 16), dtype=bool)
    mask[5] = False
    np.savez(tmp_path / "m.npz", x=mask)
    assert dgm("score", masked_run, "--data", workdir / "tiny.npz", "--mask", tmp_path / "m.npz",
               "-o", tmp_path / "s.csv", "-q") == 0
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert abs(table[5, 1]) < 1 and table[5, 3] == 0 and table[:5, 3].all()


# ---------------------------------------------------------------- bad masks: status 1, file, variable, place


def bad_mask_cases(root: Path) -> list[tuple[str, object, str]]:
    rng = np.random.default_rng(1)
    good = rng.random((48, 16)) > 0.5
    return [
        ("short.npz", {"x": good[:10]}, r"short\.npz: the mask for 'x' has shape \(10, 16\) but the data has \(48, 16\)"),
        ("wide.npz", {"x": np.ones((48, 5), dtype=bool)}, r"wide\.npz: 'x' has shape \(48, 5\); expected \(n, 16\)"),
        ("twos.npz", {"x": good * 2}, r"twos\.npz: the mask for 'x' holds values other than 0/1 \(row 0, column 'x\[\d+\]' holds 2\)"),
        ("half.npz", {"x": np.full((48, 16), 0.5)}, r"half\.npz: the mask for 'x' holds values other than 0/1"),
        ("nan.npz", {"x": np.where(good, 1.0, np.nan)}, r"nan\.npz: row 0, column 'x\[\d+\]' is empty \(a missing value\)\n    hint: a mask has a value for every entry"),
        ("typo.npz", {"xx": good}, r"typo\.npz: the mask holds 'xx', but the model has no data variable 'xx' \(its data variables: x\)\n    hint: did you mean 'x'\?"),
        ("input.npz", {"x": good, "y": np.ones(48, dtype=bool)}, r"input\.npz: the mask holds 'y', but 'y' is an input, and inputs are never missing"),
        ("text.npz", {"x": np.array(["a"] * 48)}, r"text\.npz: 'x' holds values of dtype <U1, not numbers"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_bad_mask_files_for_fit_and_score(masked_run, workdir, tmp_path, capsys, index):
    name, arrays, message = bad_mask_cases(workdir)[index]
    np.savez(tmp_path / name, **arrays)
    for command in (["fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", 1, "--out", tmp_path / "r"],
                    ["score", masked_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "s.csv"]):
        assert dgm(*command, "--mask", tmp_path / name, "-q") == 1
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.csv").exists()


def test_a_csv_mask_names_its_line_and_column(masked_run, workdir, tmp_path, capsys):
    header = ",".join(f"x[{i}]" for i in range(16))
    rows = ["1," * 15 + "1"] * 48
    rows[3] = "1," * 7 + "3," + "1," * 7 + "1"
    (tmp_path / "m.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    assert dgm("score", masked_run, "--data", workdir / "tiny.npz", "--mask", tmp_path / "m.csv",
               "-o", tmp_path / "s.csv", "-q") == 1
    assert "m.csv: the mask for 'x' holds values other than 0/1 (row 3 (line 5), column 'x[7]' holds 3)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("model, data, mask, message", [
    ("counts.dgm", "counts.npz", "counts_mask.npz",
     "counts.npz (with the mask {mask}): fit: data 'k' has missing entries, but 'y' depends on it, "
     "so its missing entries are latents, discrete ones (Poisson)"),
])
def test_a_mask_for_a_variable_that_cannot_be_marginalized(workdir, tmp_path, capsys, model, data, mask, message):
    assert dgm("fit", workdir / model, "--data", workdir / data, "--mask", workdir / mask, "--steps", 1,
               "--out", tmp_path / "r", "-q") == 1
    err = capsys.readouterr().err
    assert message.format(mask=workdir / mask) in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mask", ["joint_mask.npz", "joint_rows.npz"])
def test_gaps_in_a_dirichlet_row_are_fitted_and_scored_by_their_marginal(workdir, tmp_path, capsys, mask):
    assert dgm("fit", workdir / "joint.dgm", "--data", workdir / "joint.npz", "--mask", workdir / mask,
               "--steps", 2, "--out", tmp_path / "r", "-q", "--no-score") == 0
    assert dgm("score", tmp_path / "r", "--data", workdir / "joint.npz", "--mask", workdir / mask,
               "-o", tmp_path / "s.csv", "-q") == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 21 and "Traceback" not in capsys.readouterr().err


def test_gaps_in_a_variable_others_depend_on_are_fitted_and_scored(workdir, tmp_path, capsys):
    with np.load(workdir / "chain.npz") as archive:
        a, b = archive["a"].copy(), archive["b"]
    a[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", a=a, b=b)
    assert dgm("fit", workdir / "chain.dgm", "--data", tmp_path / "nan.npz", "--steps", 2, "--out",
               tmp_path / "r", "-q", "--no-score") == 0
    assert dgm("fit", workdir / "chain.dgm", "--data", workdir / "chain.npz", "--mask", workdir / "chain_mask.npz",
               "--steps", 2, "--out", tmp_path / "m", "-q", "--no-score") == 0
    assert dgm("score", tmp_path / "r", "--data", workdir / "chain.npz", "--mask", workdir / "chain_mask.npz",
               "-o", tmp_path / "s.csv", "-q") == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 21
    assert "Traceback" not in capsys.readouterr().err


def test_nan_in_a_discrete_variable_others_depend_on_is_refused_by_fit_and_score(workdir, tmp_path, capsys):
    with np.load(workdir / "counts.npz") as archive:
        k, y = archive["k"].astype(float), archive["y"]
    k[2] = np.nan
    np.savez(tmp_path / "nan.npz", k=k, y=y)
    assert dgm("fit", workdir / "counts.dgm", "--data", tmp_path / "nan.npz", "--steps", 2, "--out",
               tmp_path / "r", "-q") == 1
    err = capsys.readouterr().err
    assert "nan.npz: fit: data 'k' has missing entries, but 'y' depends on it" in err
    assert "hint: dgm invert fills in every missing pattern" in err
    assert dgm("fit", workdir / "counts.dgm", "--data", workdir / "counts.npz", "--steps", 2, "--out",
               tmp_path / "r", "-q", "--no-score") == 0
    assert dgm("score", tmp_path / "r", "--data", tmp_path / "nan.npz", "-o", tmp_path / "s.csv", "-q") == 1
    assert "nan.npz: log_prob: data 'k' has missing entries, but 'y' depends on it" in capsys.readouterr().err


def test_nan_in_an_input_is_never_missing(masked_run, workdir, tmp_path, capsys):
    with np.load(workdir / "tiny.npz") as archive:
        np.savez(tmp_path / "d.npz", x=archive["x"], y=np.where(np.arange(48) == 4, np.nan, archive["y"]))
    assert dgm("score", masked_run, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.csv", "-q") == 1
    err = capsys.readouterr().err
    assert "d.npz: row 4, column 'y' is empty (a missing value)" in err and "an input is never missing" in err



LABELLED = """
model labelled {
    data   y
    data   x[4]
    latent z
    y ~ Categorical(logits = zeros(3))
    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, onehot(y, 3), hidden = [8]), 1)
}
"""


def test_fit_and_score_take_labels_missing_on_some_rows(tmp_path, capsys):
    # semi-supervised on the command line: a label's NaN rows are summed out under q(y | x)
    (tmp_path / "labelled.dgm").write_text(LABELLED)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40).astype(float)
    x = y[:, None] + rng.normal(size=(40, 4))
    y[10:] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=y)
    run = tmp_path / "run"
    assert dgm("fit", tmp_path / "labelled.dgm", "--data", tmp_path / "d.npz", "--steps", 5, "--out", run, "-q") == 0
    assert dgm("score", run, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.csv", "-q") == 0
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert table[:10, 3].all() and not table[10:, 3].any() and np.isfinite(table[:, 1]).all()
    assert "30 of 40 rows have missing entries" in capsys.readouterr().err
