"""The `dgm` command as a user meets it: fit writes a run folder, sample/invert/score read it,
every command has --help, and a user's mistake exits 1 with the message and no traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dgmlang.cli import CHECKPOINT, main
from corpus_models import CORPUS

TINY = """
# A 4x4-pixel conditional VAE, small enough to fit in a test.
model tiny {
    input  y : int
    data   x[16]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Binomial(4, logits = mlp(z, onehot(y, 3), hidden = [8]))
}
"""

PPCA = CORPUS["ppca"]

LINREG = CORPUS["linreg"]


def dgm(*args: str) -> int:
    return main([str(a) for a in args])


def run_dgm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`dgm` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dgmlang.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    (root / "tiny.dgm").write_text(TINY)
    (root / "ppca.dgm").write_text(PPCA)
    (root / "linreg.dgm").write_text(LINREG)
    y = rng.integers(0, 3, size=48)
    x = rng.binomial(4, 0.2 + 0.3 * (np.arange(16) % 3 == y[:, None]))
    np.savez(root / "tiny.npz", x=x, y=y)
    z = rng.normal(size=(40, 2))
    np.savez(root / "ppca.npz", x=z @ np.array([[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]).T + 0.1 * rng.normal(size=(40, 3)))
    u = rng.normal(size=(30, 3))
    header = "u[0],u[1],u[2],y\n"
    rows = "\n".join(",".join(f"{v:.4f}" for v in (*row, row @ [1.0, -2.0, 0.5] + 1)) for row in u)
    (root / "linreg.csv").write_text(header + rows + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_run(workdir) -> Path:
    out = workdir / "runs" / "tiny"
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", 4, "--batch-size", 16,
               "--out", out, "-q") == 0
    return out


# ---------------------------------------------------------------- fit


def test_fit_writes_a_complete_run_folder(tiny_run, capsys):
    import dgmlang

    names = {p.name for p in tiny_run.iterdir()}
    assert names == {CHECKPOINT, "loss.csv", "loss.png", "samples.png", "reference_scores.csv", "run.json"}
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["model"] == "tiny" and info["steps"] == 4 and info["rows"] == 48 and not info["interrupted"]
    assert info["score"]["reference"] == "training data"
    scores = np.loadtxt(tiny_run / "reference_scores.csv", delimiter=",", skiprows=1)
    assert scores.shape == (48, 2)
    assert info["score"]["threshold"] == pytest.approx(np.quantile(scores[:, 1], 0.01), rel=1e-5)
    losses = np.loadtxt(tiny_run / "loss.csv", delimiter=",", skiprows=1)
    fitted = dgmlang.load_fitted(tiny_run / CHECKPOINT)
    assert fitted.fitted and losses.shape == (4, 2)
    np.testing.assert_allclose(losses[:, 1], fitted.history["loss"], rtol=1e-5)


def test_fit_with_validation_data_records_it_per_epoch(workdir, tmp_path):
    out = tmp_path / "run"
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--validation", workdir / "tiny.npz",
               "--epochs", 2, "--batch-size", 16, "--out", out, "--no-score", "-q") == 0
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,validation_loss" and len(rows) == 1 + 6
    assert [bool(r.split(",")[2]) for r in rows[1:]] == [False, False, True] * 2  # 3 steps per epoch
    assert not (out / "reference_scores.csv").exists()
    assert "score" not in json.loads((out / "run.json").read_text())


def test_with_validation_data_the_default_threshold_comes_from_it(workdir, tmp_path):
    with np.load(workdir / "tiny.npz") as archive:
        np.savez(tmp_path / "held_out.npz", x=archive["x"][:10], y=archive["y"][:10])
    out = tmp_path / "run"
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--validation", tmp_path / "held_out.npz",
               "--steps", 2, "--out", out, "-q") == 0
    score = json.loads((out / "run.json").read_text())["score"]
    assert score["reference"] == f"validation data ({tmp_path / 'held_out.npz'})" and score["rows_scored"] == 10
    assert len((out / "reference_scores.csv").read_text().splitlines()) == 1 + 10


def test_fit_takes_a_csv_with_globals_and_a_default_run_folder(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert dgm("fit", "linreg.dgm", "--data", "linreg.csv", "--steps", 3, "-q") == 0
    assert (workdir / "runs" / "linreg" / CHECKPOINT).is_file()
    assert "wrote runs/linreg/" in capsys.readouterr().out


def test_fit_refuses_bad_data_before_training(workdir, capsys):
    np.savez(workdir / "bad.npz", x=np.full((4, 16), 5), y=np.zeros(4, dtype=int))
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "bad.npz", "--out", workdir / "runs" / "bad") == 1
    err = capsys.readouterr().err
    assert f"{workdir / 'bad.npz'}: data variable 'x' (Binomial): row 0, column 0 holds 5, outside its support" in err
    assert not (workdir / "runs" / "bad").exists()


# ---------------------------------------------------------------- sample


def test_sample_writes_png_npz_and_csv(tiny_run, tmp_path, capsys):
    outs = [tmp_path / "s.png", tmp_path / "s.npz", tmp_path / "s.csv"]
    assert dgm("sample", tiny_run, "-n", 6, "--input", "y=2", *sum((["-o", o] for o in outs), [])) == 0
    with np.load(outs[1]) as archive:
        assert archive["x"].shape == (6, 16) and archive["z"].shape == (6, 2) and archive["y"].tolist() == [2] * 6
    header = outs[2].read_text().splitlines()[0].split(",")
    assert header[:2] == ["x[0]", "x[1]"] and "z[1]" in header and header[-1] == "y"
    assert outs[0].stat().st_size > 1000


def test_sample_inputs_from_a_file_set_the_number_of_rows(tiny_run, workdir, tmp_path):
    assert dgm("sample", tiny_run, "--inputs", workdir / "tiny.npz", "-o", tmp_path / "s.npz") == 0
    with np.load(tmp_path / "s.npz") as archive:
        assert archive["x"].shape == (48, 16)


def test_sample_with_globals_notes_them_in_csv(workdir, tmp_path, capsys):
    run = workdir / "runs" / "linreg"
    if not run.exists():
        assert dgm("fit", workdir / "linreg.dgm", "--data", workdir / "linreg.csv", "--steps", 2, "--out", run, "-q") == 0
    assert dgm("sample", run, "-n", 5, "--input", "u=1,0,-1", "-o", tmp_path / "d.csv", "-o", tmp_path / "d.npz") == 0
    assert "globals w, b are one value per draw" in capsys.readouterr().err
    with np.load(tmp_path / "d.npz") as archive:
        assert archive["w"].shape == (3,) and archive["y"].shape == (5,) and archive["u"].shape == (5, 3)


def status(*args: str) -> int:
    """`dgm`'s exit status, in-process: a usage error (argparse) exits 2 by SystemExit."""
    try:
        return dgm(*args)
    except SystemExit as done:
        return done.code


@pytest.mark.parametrize("args, code, message", [
    (["--input", "yy=2", "-n", 3], 1, "the model has no input 'yy'; its inputs are y\n    hint: did you mean 'y'?"),
    (["--input", "y", "-n", 3], 2, "expected NAME=VALUE"),
    (["--input", "y=two", "-n", 3], 2, "'two' is not a number"),
    (["--input", "y=1.5", "-n", 3], 1, "input 'y' (int) holds whole numbers but has floating dtype"),
    (["--input", "y=2"], 2, "how many samples? give -n N"),
    (["-n", 3], 1, "the model has the input(s) y: give their values\n    hint: --input y=VALUE for all samples"),
])
def test_sample_mistakes(tiny_run, tmp_path, capsys, args, code, message):
    assert status("sample", tiny_run, *args, "-o", tmp_path / "s.npz") == code
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- invert


def _partial_tiny(workdir, tmp_path, rows: int, hidden_from: int):
    """The first `rows` of tiny.npz with pixels `hidden_from`.. NaN, saved as partial.npz."""
    with np.load(workdir / "tiny.npz") as archive:
        x, y = archive["x"][:rows], archive["y"][:rows]
    partial = x.astype(float)
    partial[:, hidden_from:] = np.nan
    np.savez(tmp_path / "partial.npz", x=partial, y=y)
    return x, y


def test_invert_completes_missing_pixels_and_reports_the_error(tiny_run, workdir, tmp_path, capsys):
    x, y = _partial_tiny(workdir, tmp_path, 5, 8)
    mask = np.ones_like(x, dtype=bool)
    mask[:, 0] = False
    np.savez(tmp_path / "mask.npz", x=mask)
    np.savez(tmp_path / "truth.npz", x=x, y=y)
    outs = [tmp_path / "post.npz", tmp_path / "post.csv", tmp_path / "post.png"]
    assert dgm("invert", tiny_run, "--data", tmp_path / "partial.npz", "--mask", tmp_path / "mask.npz",
               "--truth", tmp_path / "truth.npz", "--num-samples", 8, "-q", *sum((["-o", o] for o in outs), [])) == 0
    printed = capsys.readouterr().out
    assert "x: 45 of 80 entries missing; posterior-mean completion RMSE on them" in printed
    with np.load(outs[0]) as post:
        assert post["z:mean"].shape == (5, 2) and post["z:std"].shape == (5, 2)
        observed, completed = post["x:observed"], post["x:mean"]
        assert observed.sum() == 35 and not observed[:, 0].any() and not observed[:, 8:].any()
        np.testing.assert_array_equal(completed[observed], x[observed])  # observed entries are kept
        assert ((completed >= 0) & (completed <= 4)).all()
    assert outs[1].read_text().splitlines()[0].startswith("z:mean[0],z:mean[1],z:std[0]")


def test_invert_draws_non_image_data_as_vectors_with_globals(workdir, tmp_path, capsys):
    run = workdir / "runs" / "ppca"
    assert dgm("fit", workdir / "ppca.dgm", "--data", workdir / "ppca.npz", "--steps", 3, "--out", run, "-q") == 0
    with np.load(workdir / "ppca.npz") as archive:
        x = archive["x"][:4].copy()
    x[:, 1] = np.nan
    np.savez(tmp_path / "p.npz", x=x)
    assert dgm("invert", run, "--data", tmp_path / "p.npz", "--num-samples", 5, "-o", tmp_path / "p.png",
               "-o", tmp_path / "p.npz", "--keep-samples", "-q") == 0
    with np.load(tmp_path / "p.npz") as post:
        assert post["z:samples"].shape == (5, 4, 2) and np.isfinite(post["x:mean"]).all()
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_invert_mistakes(tiny_run, workdir, tmp_path, capsys):
    np.save(tmp_path / "mask.npy", np.ones((3, 16)))
    assert dgm("invert", tiny_run, "--data", workdir / "tiny.npz", "--mask", tmp_path / "mask.npy",
               "-o", tmp_path / "o.npz") == 1
    assert "the mask for 'x' has shape (3, 16) but the data has (48, 16)" in capsys.readouterr().err
    assert status("invert", tiny_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "o.txt") == 2
    assert "unknown output format '.txt'" in capsys.readouterr().err
    assert status("invert", tiny_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "o.npz",
                  "--method", "mcmc") == 2
    assert "invalid choice: 'mcmc'" in capsys.readouterr().err


def test_invert_method_gibbs_runs_chains_and_keeps_observed_entries(tiny_run, workdir, tmp_path, capsys):
    x, _ = _partial_tiny(workdir, tmp_path, 3, 10)
    assert dgm("invert", tiny_run, "--data", tmp_path / "partial.npz", "--method", "gibbs", "--num-samples", 6,
               "-q", "-o", tmp_path / "post.npz") == 0
    with np.load(tmp_path / "post.npz") as post:
        observed, completed = post["x:observed"], post["x:mean"]
        np.testing.assert_array_equal(completed[observed], x[observed])
        assert np.isfinite(completed).all() and not observed[:, 10:].any()


def test_invert_refine_refines_complete_rows_and_refuses_a_negative_count(tiny_run, workdir, tmp_path, capsys):
    with np.load(workdir / "tiny.npz") as archive:
        np.savez(tmp_path / "rows.npz", x=archive["x"][:4], y=archive["y"][:4])
    outs = {steps: tmp_path / f"post{steps}.npz" for steps in (0, 20)}
    for steps, out in outs.items():
        assert dgm("invert", tiny_run, "--data", tmp_path / "rows.npz", "--refine", steps, "--num-samples", 5,
                   "-q", "-o", out) == 0
    with np.load(outs[0]) as plain, np.load(outs[20]) as refined:
        assert refined["z:mean"].shape == (4, 2) and np.isfinite(refined["z:mean"]).all()
        assert not np.array_equal(plain["z:mean"], refined["z:mean"])
    assert status("invert", tiny_run, "--data", tmp_path / "rows.npz", "--refine", -1, "-o", outs[0]) == 2
    assert "--refine" in capsys.readouterr().err


# ---------------------------------------------------------------- score


def test_score_flags_rows_below_the_default_threshold(tiny_run, workdir, tmp_path, capsys):
    corrupted = np.full((2, 16), 4)
    with np.load(workdir / "tiny.npz") as archive:
        x, y = archive["x"][:6], archive["y"][:6]
    np.savez(tmp_path / "mixed.npz", x=np.concatenate([x, corrupted]), y=np.concatenate([y, [0, 1]]))
    assert dgm("score", tiny_run, "--data", tmp_path / "mixed.npz", "-o", tmp_path / "scores.csv", "-q") == 0
    table = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    threshold = json.loads((tiny_run / "run.json").read_text())["score"]["threshold"]
    assert table.shape == (8, 4)  # row, log_prob, outlier, complete
    np.testing.assert_array_equal(table[:, 2], table[:, 1] < threshold)
    assert table[:, 3].all()
    assert table[6:, 1].max() < table[:6, 1].min()  # all-bright images are less likely than data
    assert "the 1% quantile of the log-likelihoods of the training data, stored by dgm fit" in capsys.readouterr().out


def test_score_threshold_as_a_number_or_a_quantile(tiny_run, workdir, tmp_path, capsys):
    assert dgm("score", tiny_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "a.csv", "--threshold", "50%",
               "-q") == 0
    flagged = np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1)[:, 2].sum()
    assert 10 <= flagged <= 38  # about half of the training rows (scores are re-estimated)
    assert dgm("score", tiny_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "b.csv", "--threshold", "0",
               "-q") == 0
    assert np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)[:, 2].all()
    assert status("score", tiny_run, "--data", workdir / "tiny.npz", "-o", tmp_path / "c.csv", "--threshold", "low") == 2
    assert "expected a number (a log-likelihood) or a percentage" in capsys.readouterr().err


# ---------------------------------------------------------------- help and errors


@pytest.mark.parametrize("command", [[], ["check"], ["graph"], ["fit"], ["sample"], ["invert"], ["score"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: dgm" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["fit", "absent.dgm", "--data", "digits"], "no such model file: absent.dgm"),
    (["fit", "tiny.dgm", "--out", "runs/never", "--data", "bad.csv"], "bad.csv: line 2 has 1 cells but the header has 2"),
])
def test_user_errors_exit_1_without_a_traceback(workdir, args, message):
    (workdir / "bad.csv").write_text("x[0],y\n1\n")
    done = run_dgm(*args, cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["fit", "tiny.dgm", "--out", "runs/never", "--data", "absent.npz"], "no such data file: absent.npz"),
    (["fit", "tiny.dgm", "--out", "runs/never", "--data", "digits"], "digits: 'x' has shape (1437, 64); expected (n, 16) for data x[16]"),
    (["sample", "nowhere", "-n", "2", "-o", "s.png"], "no run folder or checkpoint at nowhere"),
    (["score", ".", "--data", "tiny.npz", "-o", "s.csv"], ". holds no fitted model (model.dgmfit)"),
    (["score", "tiny.dgm", "--data", "tiny.npz", "-o", "s.csv"], "tiny.dgm is not a dgmlang checkpoint"),
])
def test_more_user_errors(workdir, monkeypatch, capsys, args, message):
    monkeypatch.chdir(workdir)
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_ctrl_c_keeps_the_model_after_the_last_completed_step(workdir):
    import dgmlang

    out = workdir / "runs" / "interrupted"
    command = [sys.executable, "-m", "dgmlang.cli", "fit", "tiny.dgm", "--data", "tiny.npz", "--steps", "100000",
               "--batch-size", "8", "--out", str(out)]
    errors: list[str] = []
    started = threading.Event()
    with subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:

        def watch():  # the progress bar shows a rate once steps are being taken
            for chunk in iter(lambda: process.stderr.read(64), ""):
                errors.append(chunk)
                if "step/s" in "".join(errors[-3:]) or "s/step" in "".join(errors[-3:]):
                    started.set()

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        assert started.wait(90), "".join(errors)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130
        reader.join(10)
    assert "saved the model as it was then" in "".join(errors)
    info = json.loads((out / "run.json").read_text())
    fitted = dgmlang.load_fitted(out / CHECKPOINT)
    assert info["interrupted"] and info["steps"] >= 1
    assert fitted.fitted and len(fitted.history["loss"]) == info["steps"]


# ---------------------------------------------------------------- runs that survive (issue 12, item 4)

RESUMABLE_STEPS = 150


def resumable_fit(out: Path) -> list[str]:
    """A `dgm fit` writing a checkpoint every 7 steps (6 steps an epoch: mid-epoch ones too)."""
    return ["fit", "tiny.dgm", "--data", "tiny.npz", "--steps", str(RESUMABLE_STEPS), "--batch-size", "8",
            "--threads", "1", "--checkpoint-every", "7", "--no-score", "-q", "--out", str(out)]


def dgm_here(*args, cwd: Path) -> int:
    """`dgm` in this process (no interpreter to start), run from `cwd`; `--threads` holds only
    while the command runs."""
    import torch

    threads, before = torch.get_num_threads(), Path.cwd()
    os.chdir(cwd)
    try:
        return dgm(*args)
    finally:
        os.chdir(before)
        assert torch.get_num_threads() == threads


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> Path:
    out = workdir / "runs" / "uninterrupted"
    assert dgm_here(*resumable_fit(out), cwd=workdir) == 0
    return out


def stop_after_the_first_checkpoint(workdir: Path, out: Path, how: signal.Signals) -> int:
    """Start a resumable fit, send `how` once its first checkpoint exists; its exit status."""
    with subprocess.Popen([sys.executable, "-m", "dgmlang.cli", *resumable_fit(out)], cwd=workdir, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).is_file():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        process.send_signal(how)
        return process.wait(60)


def steps_saved(run: Path) -> int:
    import dgmlang

    return dgmlang.load_fitted(run / CHECKPOINT).training_state.steps_done


def assert_same_parameters(run: Path, reference: Path) -> None:
    import torch

    got, expected = (torch.load(path / CHECKPOINT, weights_only=True) for path in (run, reference))
    for state in ("model_state", "guide_state"):
        assert got[state].keys() == expected[state].keys()
        different = [k for k in expected[state] if not torch.equal(got[state][k], expected[state][k])]
        assert not different, f"not bit-identical to the uninterrupted run: {state} {different}"


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_parameters(workdir, uninterrupted):
    out = workdir / "runs" / "killed"
    assert stop_after_the_first_checkpoint(workdir, out, signal.SIGKILL) == -signal.SIGKILL
    assert 0 < steps_saved(out) < RESUMABLE_STEPS  # killed mid-run, after a checkpoint
    assert dgm_here("fit", "--resume", out, "-q", cwd=workdir) == 0
    assert_same_parameters(out, uninterrupted)
    assert steps_saved(out) == RESUMABLE_STEPS and json.loads((out / "run.json").read_text())["status"] == "finished"


def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes(workdir, uninterrupted, capsys):
    out = workdir / "runs" / "terminated"
    assert stop_after_the_first_checkpoint(workdir, out, signal.SIGTERM) == 143
    info = json.loads((out / "run.json").read_text())
    assert info["interrupted"] and info["status"] == "stopped" and info["steps"] == steps_saved(out)
    # refused: other model text, other data, settings of its own
    (workdir / "tiny_changed.dgm").write_text(TINY.replace("hidden = [8]", "hidden = [9]"))
    assert dgm("fit", workdir / "tiny_changed.dgm", "--resume", out) == 1
    assert "differs from the text the run was fitted with" in capsys.readouterr().err
    with np.load(workdir / "tiny.npz") as archive:
        np.savez(workdir / "tiny_other.npz", x=np.flip(archive["x"], 0), y=archive["y"])
    assert dgm("fit", "--resume", out, "--data", workdir / "tiny_other.npz", "-q") == 1
    assert "the data differ from the run's (the same number of rows, different values)" in capsys.readouterr().err
    assert dgm("fit", "--resume", out, "--batch-size", "4") == 1
    assert "with --batch-size 4: the run's is 8" in capsys.readouterr().err
    assert dgm("fit", "--resume", out, "--guide-order", "minfill") == 1
    assert "with --guide-order minfill: the run's is nami" in capsys.readouterr().err
    # the command that started the run, given again with --resume, continues it
    assert dgm_here(*resumable_fit(out), "--resume", out, cwd=workdir) == 0
    assert_same_parameters(out, uninterrupted)


def test_resume_refuses_a_folder_without_checkpoint_and_a_finished_run(workdir, uninterrupted, tmp_path, capsys):
    assert dgm("fit", "--resume", tmp_path) == 1
    assert "holds no checkpoint (model.dgmfit)" in capsys.readouterr().err
    assert dgm("fit", "--resume", uninterrupted) == 1
    assert f"is finished ({RESUMABLE_STEPS} of {RESUMABLE_STEPS} steps)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dgm("fit", "tiny.dgm")
    assert "give the model FILE and --data DATA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dgm("fit", "--resume", uninterrupted, "--overwrite")
    assert "--overwrite would delete it" in capsys.readouterr().err


# ---------------------------------------------------------------- integer data against every use


def test_a_label_outside_its_onehot_is_refused_by_every_command(tiny_run, workdir, tmp_path, capsys):
    with np.load(workdir / "tiny.npz") as archive:
        x, y = archive["x"][:4], archive["y"][:4].copy()
    y[2] = 3  # tiny reads onehot(y, 3)
    bad = tmp_path / "bad_labels.npz"
    np.savez(bad, x=x, y=y)
    message = "input 'y' (int): row 2 holds 3, but onehot(y, 3) takes 0..2"
    runs = {
        "fit": ["fit", workdir / "tiny.dgm", "--data", bad, "--steps", 1, "--out", tmp_path / "run", "-q"],
        "fit --validation": ["fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--validation", bad,
                             "--steps", 1, "--out", tmp_path / "run", "-q"],
        "score": ["score", tiny_run, "--data", bad, "-o", tmp_path / "s.csv", "-q"],
        "invert": ["invert", tiny_run, "--data", bad, "-o", tmp_path / "i.npz", "-q"],
    }
    for command, args in runs.items():
        assert dgm(*args) == 1, command
        err = capsys.readouterr().err
        assert f"{bad}: {message}" in err, (command, err)
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert dgm("sample", tiny_run, "-n", 2, "--input", "y=3", "-o", tmp_path / "s.npz") == 1
    assert "input 'y' (int): row 0 holds 3, but onehot(y, 3) takes 0..2" in capsys.readouterr().err
    np.savez(tmp_path / "inputs.npz", y=y)
    assert dgm("sample", tiny_run, "--inputs", tmp_path / "inputs.npz", "-o", tmp_path / "s.npz") == 1
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- output paths, run folders, limits (issue 11)


ROOT = os.geteuid() == 0  # permissions do not stop root


def _clean(err: str) -> None:
    assert "Traceback" not in err, err


@pytest.mark.parametrize("command", ["graph", "sample", "score", "invert"])
def test_an_output_in_a_missing_folder_or_naming_a_folder_is_refused_before_any_work(
        command, tiny_run, workdir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("dgmlang.frontend.load_fitted",
                        lambda *a, **k: calls.append(a))  # loading the run is work: it must not happen
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.csv").mkdir()
    suffix = ".csv" if command == "score" else ".png"
    args = {"graph": ["graph", workdir / "tiny.dgm"],
            "sample": ["sample", tiny_run, "-n", 2, "--input", "y=1"],
            "score": ["score", tiny_run, "--data", workdir / "tiny.npz"],
            "invert": ["invert", tiny_run, "--data", workdir / "tiny.npz"]}[command]
    for out, message in [(tmp_path / "nodir" / f"o{suffix}", "the folder '{}' does not exist".format(tmp_path / "nodir")),
                         (tmp_path / f"folder{suffix}", "it is a folder")]:
        assert dgm(*args, "-o", out) == 1
        err = capsys.readouterr().err
        assert f"cannot write '{out}'" in err and message in err, err
        _clean(err)
    assert calls == []


@pytest.mark.skipif(ROOT, reason="permissions do not stop root")
def test_an_output_in_a_folder_without_write_permission_is_refused(workdir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert dgm("graph", workdir / "tiny.dgm", "-o", locked / "g.png") == 1
        assert "no permission to write in the folder" in capsys.readouterr().err
        assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--out", locked / "run") == 1
        assert "no permission to write in the folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_an_unwritable_run_folder_is_refused_before_reading_data(workdir, tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("read data before checking the run folder")

    monkeypatch.setattr("dgmlang.datafiles.read_data", never)
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path / "file", "it is a file"), (tmp_path / "file" / "run", "is not a folder")]:
        assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--out", out) == 1
        err = capsys.readouterr().err
        assert message in err, err
        _clean(err)


def test_fit_into_an_existing_run_refuses_without_overwrite_and_clears_the_old_run_with_it(workdir, tmp_path, capsys):
    out = tmp_path / "run"
    fit = ["fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", 1, "--out", out, "-q"]
    assert dgm(*fit) == 0
    capsys.readouterr()
    assert dgm(*fit) == 1
    err = capsys.readouterr().err
    assert f"the run folder '{out}' already holds a run" in err and "--overwrite" in err
    (out / "samples-x.png").write_bytes(b"old")  # what a model with several data variables wrote
    (out / "notes.txt").write_text("mine")  # not dgmlang's: kept
    old_scores = (out / "reference_scores.csv").read_text()
    assert dgm(*fit, "--no-score", "--overwrite") == 0
    names = {p.name for p in out.iterdir()}
    assert names == {CHECKPOINT, "loss.csv", "loss.png", "samples.png", "run.json", "notes.txt"}, names
    assert old_scores and not (out / "reference_scores.csv").exists()
    # --threshold P% now has no stale reference scores to read
    assert dgm("score", out, "--data", workdir / "tiny.npz", "-o", tmp_path / "s.csv", "--threshold", "5%") == 1
    assert "needs the reference scores" in capsys.readouterr().err


def test_an_empty_or_foreign_folder_is_not_a_run(workdir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert dgm("fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", 1, "--no-score",
               "--out", tmp_path / "empty", "-q") == 0


def test_writes_replace_a_planted_symlink_and_never_follow_it(tiny_run, workdir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss.csv").symlink_to(victim)
    fit = ["fit", workdir / "tiny.dgm", "--data", workdir / "tiny.npz", "--steps", 1, "--out", out, "-q"]
    assert dgm(*fit) == 1  # a run file is there
    assert dgm(*fit, "--overwrite") == 0
    assert victim.read_text() == "precious"
    assert not (out / "loss.csv").is_symlink() and (out / "loss.csv").read_text().startswith("step,loss")
    for suffix, command in [(".csv", ["score", tiny_run, "--data", workdir / "tiny.npz", "-q"]),
                            (".npz", ["sample", tiny_run, "-n", 2, "--input", "y=1"]),
                            (".png", ["graph", workdir / "tiny.dgm"])]:
        link = tmp_path / f"link{suffix}"
        link.symlink_to(victim)
        assert dgm(*command, "-o", link) == 0
        assert victim.read_text() == "precious" and not link.is_symlink()
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # no temporary file left behind


def test_written_files_get_ordinary_permissions(workdir, tmp_path):
    assert dgm("graph", workdir / "tiny.dgm", "-o", tmp_path / "g.dot") == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "g.dot").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("args, message", [
    (["sample", "RUN", "-n", "1000000000000", "-o", "s.npz"], "-n: expected a whole number in 1..10,000,000"),
    (["sample", "RUN", "-n", "0", "-o", "s.npz"], "-n: expected a whole number in 1..10,000,000, not 0"),
    (["sample", "RUN", "-n", "-3", "-o", "s.npz"], "expected a whole number in 1..10,000,000"),
    (["sample", "RUN", "-n", "9" * 5000, "-o", "s.npz"], "not a 5000-digit one"),
    (["sample", "RUN", "-o", "s.npz"], "how many samples? give -n N"),
    (["sample", "RUN", "-n", "2", "--input", "y=" + "[" * 20000 + "]" * 20000, "-o", "s.npz"],
     "lists nested deeper than 32"),
    (["sample", "RUN", "-n", "2", "--input", "y=" + "1," * 60000 + "1", "-o", "s.npz"], "longer than 100,000"),
    (["sample", "RUN", "-n", "2", "--input", "y=NaN", "-o", "s.npz"], "is not a number or a list of finite numbers"),
    (["sample", "RUN", "-n", "2", "--input", 'y="a"', "-o", "s.npz"], "is not a number"),
    (["sample", "RUN", "-n", "2", "--input", "y=1e999", "-o", "s.npz"], "is not a number"),
    (["sample", "RUN", "-n", "2", "--input", "y=" + "9" * 30, "-o", "s.npz"], "is not a number"),
    (["invert", "RUN", "--data", "d.npz", "--num-samples", "100001", "-o", "o.npz"], "1..100,000"),
    (["score", "RUN", "--data", "d.npz", "--num-samples", "0", "-o", "o.csv"], "1..100,000"),
    (["score", "RUN", "--data", "d.npz", "--threshold", "nan", "-o", "o.csv"], "expected a number"),
    (["score", "RUN", "--data", "d.npz", "--threshold", "101%", "-o", "o.csv"], "between 0% and 100%"),
    (["score", "RUN", "--data", "d.npz", "-o", "o.txt"], "unknown output format '.txt'"),
    (["fit", "m.dgm", "--data", "d.npz", "--epochs", "2", "--steps", "3"], "not allowed with argument"),
    (["fit", "m.dgm", "--data", "d.npz", "--steps", "0"], "1..1,000,000,000"),
    (["fit", "m.dgm", "--data", "d.npz", "--batch-size", "100000000"], "1..10,000,000"),
    (["fit", "m.dgm", "--data", "d.npz", "--num-particles", "100000"], "1..10,000"),
    (["fit", "m.dgm", "--data", "d.npz", "--seed", "-1"], "0..9,223,372,036,854,775,807"),
    (["graph", "m.dgm", "-o", "g.pdf"], "unknown output format '.pdf'"),
    (["check", "m\0.dgm"], "NUL"),
])
def test_usage_errors_exit_2_with_a_usage_line_before_reading_anything(args, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dgm ") and message in err, err


def test_input_values_are_checked_against_the_model(tiny_run, tmp_path, capsys):
    assert dgm("sample", tiny_run, "-n", 2, "--input", "y=[1,2]", "-o", tmp_path / "s.npz") == 1
    assert "y holds 1 number(s), but 2 were given" in capsys.readouterr().err
    assert dgm("sample", tiny_run, "-n", 2, "--input", "y=[[1],[2,3]]", "-o", tmp_path / "s.npz") == 1
    assert "different lengths" in capsys.readouterr().err
    assert dgm("sample", tiny_run, "-n", 2, "--input", "y=[[1]]", "-o", tmp_path / "s.npz") == 0


def test_a_tampered_run_folder_is_a_clear_error(tiny_run, workdir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "reference_scores.csv").write_text("row,log_prob\n0,abc\n")
    assert dgm("score", run, "--data", workdir / "tiny.npz", "-o", tmp_path / "s.csv", "--threshold", "5%") == 1
    assert "is not a table of reference scores" in capsys.readouterr().err
    (run / "run.json").write_text('{"score": {"threshold": "low"}}')
    assert dgm("score", run, "--data", workdir / "tiny.npz", "-o", tmp_path / "s.csv") == 1
    assert "the stored threshold is not a number" in capsys.readouterr().err
    (run / "run.json").write_text("[1, 2]")
    assert dgm("score", run, "--data", workdir / "tiny.npz", "-o", tmp_path / "s.csv") == 1
    assert "is not readable JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 11: data files at the edges


def tiny_csv(path: Path, *, y=("1", "2"), x00="0", bom=False) -> Path:
    header = "y," + ",".join(f"x[{i}]" for i in range(16))
    rows = [f"{y[0]}," + ",".join(["1"] * 16), f"{y[1]},{x00}," + ",".join(["2"] * 15)]
    path.write_bytes((("\ufeff" if bom else "") + "\n".join([header, *rows]) + "\n").encode("utf-8"))
    return path


def test_score_reads_a_csv_whose_header_starts_with_a_bom(tiny_run, tmp_path, capsys):
    data = tiny_csv(tmp_path / "bom.csv", bom=True)
    assert dgm("score", tiny_run, "--data", data, "-o", tmp_path / "s.csv", "-q") == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 3
    assert "\ufeff" not in capsys.readouterr().err


@pytest.mark.parametrize("y, x00, says", [
    (("1", "inf"), "0", "row 1 (line 3), column 'y' holds inf, not a finite number"),
    (("1", "1e19"), "0", "row 1 (line 3), column 'y' holds 1e+19, beyond the whole numbers an int64 holds"),
    (("1", "2"), "1e300", "data variable 'x' (Binomial): row 1 (line 3), column 'x[0]' holds 1e+300, "
                          "beyond the range of float32"),
])
def test_score_and_invert_refuse_values_a_csv_cannot_mean_with_file_row_and_column(tiny_run, tmp_path, capsys,
                                                                                    y, x00, says):
    data = tiny_csv(tmp_path / "bad.csv", y=y, x00=x00)
    for command in ("score", "invert"):
        out = tmp_path / f"{command}.csv"
        assert dgm(command, tiny_run, "--data", data, "-o", out, "-q") == 1
        err = capsys.readouterr().err
        assert f"{data}: {says}" in err and "Traceback" not in err, err
        assert not out.exists()


def test_score_never_writes_minus_inf_rows(workdir, tmp_path, capsys):
    (tmp_path / "m.dgm").write_text("model m {\n    data x\n    latent z\n    z ~ Normal(0, 1)\n"
                                    "    x ~ Normal(z, 1)\n}\n")
    (tmp_path / "train.csv").write_text("x\n0.5\n-0.25\n1.0\n")
    run = tmp_path / "run"
    assert dgm("fit", tmp_path / "m.dgm", "--data", tmp_path / "train.csv", "--steps", 2, "--out", run, "-q") == 0
    (tmp_path / "far.csv").write_text("x\n0.5\n1e20\n")
    capsys.readouterr()
    assert dgm("score", run, "--data", tmp_path / "far.csv", "-o", tmp_path / "s.csv", "-q") == 1
    err = capsys.readouterr().err
    assert "the log-likelihood of row 1 is" in err and "Traceback" not in err, err
    assert not (tmp_path / "s.csv").exists()


def test_invert_with_none_of_the_models_data_variables_is_a_clear_error(workdir, tmp_path, capsys):
    run = workdir / "runs" / "ppca_none"
    assert dgm("fit", workdir / "ppca.dgm", "--data", workdir / "ppca.npz", "--steps", 1, "--no-score",
               "--out", run, "-q") == 0
    np.savez(tmp_path / "other.npz", z=np.zeros(3))
    assert dgm("invert", run, "--data", tmp_path / "other.npz", "-o", tmp_path / "o.csv") == 1
    assert "other.npz holds none of the model's data variables (x)" in capsys.readouterr().err


def test_chunked_commands_give_one_warning_saying_how_many_chunks_had_it():
    import warnings

    from dgmlang.cli.shared import one_warning
    from dgmlang.errors import DGMWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with one_warning(5):
            for count in (3, 5, 2):
                warnings.warn(DGMWarning(f"log_prob: {count} points with uneven weights"))
            warnings.warn(DGMWarning("another kind"))
            warnings.warn(UserWarning("other"))
    messages = [str(w.message) for w in caught]
    assert messages.count("log_prob: 3 points with uneven weights (in 3 of the 5 chunks of 64 rows)") == 1
    assert "another kind (in 1 of the 5 chunks of 64 rows)" in messages
    assert "other" in messages and len(messages) == 3


def test_guide_order_minfill_is_drawn_fitted_saved_and_recorded(workdir, capsys):
    """--guide-order minfill: dgm graph draws that plan, dgm fit trains it, the checkpoint
    and run.json keep it."""
    tree = workdir / "tree.dgm"
    tree.write_text("model tree {\n latent a\n latent b\n latent c\n data x1\n data x2\n data x3\n"
                    " a ~ Normal(0, 1)\n b ~ Normal(a, 1)\n c ~ Normal(a, 1)\n x1 ~ Normal(b, 1)\n"
                    " x2 ~ Normal(b, 1)\n x3 ~ Normal(c, 1)\n}\n")
    rng = np.random.default_rng(0)
    np.savez(workdir / "tree.npz", **{n: rng.normal(size=20) for n in ("x1", "x2", "x3")})
    for order in ("nami", "minfill"):
        assert dgm("graph", tree, "--guide-order", order, "-o", workdir / f"tree-{order}.dot") == 0
    assert (workdir / "tree-nami.dot").read_text() != (workdir / "tree-minfill.dot").read_text()
    out = workdir / "runs" / "tree-minfill"
    assert dgm("fit", tree, "--data", workdir / "tree.npz", "--steps", "3", "--guide-order", "minfill",
               "--out", out, "-q", "--no-score") == 0
    import dgmlang
    from dgmlang.frontend import check_source

    fitted = dgmlang.load_fitted(out / CHECKPOINT)
    (minfill,) = check_source(tree.read_text(), guide_order="minfill")
    assert fitted.plan == minfill.plan and json.loads((out / "run.json").read_text())["guide_order"] == "minfill"
    with pytest.raises(SystemExit):
        dgm("graph", tree, "--guide-order", "fewest")
    assert "invalid choice: 'fewest'" in capsys.readouterr().err
