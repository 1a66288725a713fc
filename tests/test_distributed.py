"""Data-parallel training (dgmlang.distributed): 2 processes on gloo against 1 process.

The model has no sampling noise (params and `delta` guides only), so the two-process run,
whose gradients are averaged over the processes, must give the one-process parameters: the
same global batches (2 x 64 rows against 128, the ragged last batch of each epoch included),
to float rounding. The processes are started by `torch.distributed.run` in a subprocess with
a timeout, so a hang fails the test instead of stalling the suite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dgmlang
from dgmlang import cli, distributed, fastpath
from dgmlang.errors import DGMUsageError

ROOT = Path(__file__).resolve().parents[1]
MODEL = """
model pointwise {
    data   x[8]
    param  s : positive
    latent z[2] guide(family = delta)
    global w[3] guide(family = delta)
    z ~ Normal(0, 1)
    w ~ Normal(0, 1)
    x ~ Normal(mlp(z, w, hidden = [16]), s)
}
"""
#: the same model with sampling noise (a Normal guide for z): each process draws its own z
NOISY = MODEL.replace("latent z[2] guide(family = delta)", "latent z[2]")
#: (name, rows, dtype, path, batch size per process, steps): what each process group trains
CASES = [("float32", 1437, "float32", "fast", 64, 50),
         ("float64", 1437, "float64", "fast", 64, 50),
         ("float64_pyro", 1437, "float64", "pyro", 64, 20),  # past the first ragged batch (step 12)
         ("one_row_short", 129, "float64", "fast", 64, 6)]  # every second step: 1 row, 1 process empty
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def data(rows: int) -> dict:
    return {"x": np.random.default_rng(rows).normal(size=(rows, 8)).astype("float32")}


def train(rows: int, dtype: str, path: str, batch_size: int, steps: int) -> dict[str, list]:
    """Fit the model (compiled under seed 0) and return its parameters; `path` "pyro" turns
    the fast loss off, so Pyro's ELBO computes the loss."""
    torch.manual_seed(0)
    m = dgmlang.compile(MODEL)
    if dtype == "float64":
        m.model.double()
        m.guide.double()
    build = fastpath.build
    if path == "pyro":
        fastpath.build = lambda *args, **kwargs: None
    try:
        m.fit(data(rows), steps=steps, batch_size=batch_size, lr=1e-2, seed=1, progress=False)
    finally:
        fastpath.build = build
    return {name: p.detach().double().reshape(-1).tolist()
            for name, p in sorted(m.model.named_parameters()) + sorted(m.guide.named_parameters())}


WORKER = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    import test_distributed as t
    from dgmlang.errors import DGMTrainingError

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {}
    for name, rows, dtype, path, batch, steps in t.CASES:
        out[name] = t.train(rows, dtype, path, batch, steps)
    # a failure on process 1 at its third step reaches process 0 with its message
    import dgmlang
    m = dgmlang.compile(t.MODEL)
    if rank == 1:
        objective, calls = m.objective, []
        def failing(*args):
            loss = objective(*args)
            def fails_third(batch, size):
                calls.append(1)
                if len(calls) == 3:
                    raise DGMTrainingError("injected failure", hint="the test's hint")
                return loss(batch, size)
            return fails_third
        m.objective = failing
    try:
        m.fit(t.data(300), steps=10, batch_size=32, progress=False)
        out["failure"] = None
    except DGMTrainingError as err:
        out["failure"] = [type(err).__name__, err.message, err.hint, len(m.history["loss"])]
    # a run with sampling noise, stopped after its 5th step by process 1 alone (both stop there),
    # checkpointed by rank 0 alone, resumed from that file: the 12 straight steps, bit for bit
    import torch
    torch.manual_seed(0)
    whole = dgmlang.compile(t.NOISY)
    whole.fit(t.data(145), steps=12, batch_size=16, seed=3, progress=False)
    torch.manual_seed(0)
    part = dgmlang.compile(t.NOISY)
    calls = []
    asks = (lambda: calls.append(1) or len(calls) >= 5) if rank == 1 else None
    part.fit(t.data(145), steps=12, batch_size=16, seed=3, progress=False, should_stop=asks,
             checkpoint=sys.argv[2] + f"/part{rank}.dgmfit", checkpoint_seconds=None)
    out["stopped_after"] = len(part.history["loss"])
    dist.barrier()
    resumed = dgmlang.load_fitted(sys.argv[2] + "/part0.dgmfit")
    resumed.fit(t.data(145), resume=True, progress=False)
    expected = {**whole.model.state_dict(), **whole.guide.state_dict()}
    got = {**resumed.model.state_dict(), **resumed.guide.state_dict()}
    out["resumed_differ"] = sorted(k for k in expected if not torch.equal(got[k], expected[k]))
    out["resumed_steps"] = resumed.training_state.steps_done
    with open(sys.argv[2] + f"/rank{rank}.json", "w") as f:
        json.dump(out, f)
    from dgmlang import distributed
    distributed.leave()  # destroys the group and drops every reference to it before exit
""")


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for `process`; a hang fails the test (the process is killed) instead of stalling."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the processes did not finish in {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return finish(start(args, cwd))


def test_two_processes_give_the_one_process_parameters_and_share_a_failure(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    processes = start(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker),
                       str(Path(__file__).parent), str(tmp_path)], tmp_path)
    # meanwhile, one process with the same global batch
    expected_by_case = {case[0]: train(*case[1:4], case[4] * 2, case[5]) for case in CASES}
    done = finish(processes)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, rows, dtype, path, batch, steps in CASES:
        expected = expected_by_case[name]
        for rank in ranks:
            got = rank[name]
            assert got.keys() == expected.keys()
            worst = max(np.abs(np.subtract(got[k], expected[k])).max() for k in expected)
            assert worst < TOLERANCE[dtype], f"{name}: parameters differ by {worst}"
    assert ranks[1]["failure"][:3] == ["DGMTrainingError", "injected failure", "the test's hint"]
    kind, message, hint, steps_done = ranks[0]["failure"]
    assert (kind, message, hint) == ("DGMTrainingError", "process 1 of 2 failed: injected failure",
                                     "the test's hint")
    assert steps_done == 2  # the third step failed; the parameters are those after the second
    # resuming: both stopped after step 5, rank 0 alone wrote, the resumed run is the whole one
    assert [rank["stopped_after"] for rank in ranks] == [5, 5]
    assert (tmp_path / "part0.dgmfit").is_file() and not (tmp_path / "part1.dgmfit").exists()
    for rank in ranks:
        assert rank["resumed_differ"] == [] and rank["resumed_steps"] == 12


def test_the_processes_sharing_a_batch_split_it_without_padding():
    assert distributed.split_sizes(128, 2) == (64, 64)
    assert distributed.split_sizes(29, 2) == (15, 14)
    assert distributed.split_sizes(5, 4) == (2, 2, 1, 0)
    assert distributed.split_sizes(1, 2) == (1, 0)
    for rows in range(1, 40):
        for processes in range(1, 6):
            assert sum(distributed.split_sizes(rows, processes)) == rows


def test_outside_a_process_group_one_process_writes_and_a_bad_count_is_refused(monkeypatch, capsys):
    assert distributed.current() is None and distributed.writes_files()
    with pytest.raises(DGMUsageError, match="at least 1"):
        distributed.launch("dgmlang.cli", ["fit"], 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli.main(["fit", "m.dgm", "--data", "d.npz", "--nproc", "3"]) == 1
    assert "--nproc 3 under a launcher that started 2 processes here" in capsys.readouterr().err


def test_dgm_fit_nproc_2_writes_the_run_folder_once(tmp_path):
    (tmp_path / "m.dgm").write_text(MODEL)
    np.savez(tmp_path / "d.npz", **data(300))
    done = launch(["-m", "dgmlang.cli", "fit", "m.dgm", "--data", "d.npz", "--steps", "8", "--batch-size", "32",
                   "--nproc", "2", "--out", "run", "--no-score", "-q"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("fitting pointwise to 300 rows") == 1  # rank 0 alone reports
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["processes"] == 2 and info["steps"] == 8
    loss = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert len(loss) == 1 + 8  # one header, one row per step: written once
    fitted = dgmlang.load_fitted(tmp_path / "run" / "model.dgmfit")
    assert len(fitted.history["loss"]) == 8


def test_dgm_fit_nproc_2_stopped_by_sigterm_resumes_in_2_processes_bit_identically(tmp_path, capsys):
    (tmp_path / "m.dgm").write_text(NOISY)
    np.savez(tmp_path / "d.npz", **data(145))
    fit = ["-m", "dgmlang.cli", "fit", "m.dgm", "--data", "d.npz", "--steps", "200", "--batch-size", "16",
           "--nproc", "2", "--threads", "1", "--checkpoint-every", "5", "--no-score", "-q"]
    whole = start([*fit, "--out", "whole"], tmp_path)
    stopped = start([*fit, "--out", "stopped"], tmp_path)  # meanwhile, the same run, stopped
    checkpoint = tmp_path / "stopped" / "model.dgmfit"
    deadline = time.monotonic() + 120
    while not checkpoint.is_file():
        assert stopped.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)  # to the launcher: it passes it on to both processes
    done = finish(stopped)
    assert done.returncode == 143, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stderr.count("interrupted after step") == 1
    ended = finish(whole)
    assert ended.returncode == 0, ended.stderr[-6000:]
    info = json.loads((tmp_path / "stopped" / "run.json").read_text())
    state = dgmlang.load_fitted(checkpoint).training_state
    assert info["status"] == "stopped" and info["processes"] == 2 and 5 <= state.steps_done == info["steps"] < 200
    # another number of processes is refused; without --nproc, the run's 2 continue it
    assert cli.main(["fit", "--resume", str(tmp_path / "stopped"), "--nproc", "1"]) == 1
    assert "with --nproc 1: the run's is 2" in capsys.readouterr().err
    done = launch(["-m", "dgmlang.cli", "fit", "--resume", "stopped", "-q"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got, expected = (torch.load(tmp_path / run / "model.dgmfit", weights_only=True) for run in ("stopped", "whole"))
    for part in ("model_state", "guide_state"):
        assert [k for k in expected[part] if not torch.equal(got[part][k], expected[part][k])] == []
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DGM_SLOW") != "1", reason="slow; set DGM_SLOW=1")
def test_dgm_fit_nproc_2_reports_a_failure_of_one_process_once(tmp_path):
    (tmp_path / "m.dgm").write_text(MODEL)
    # a row no float32 Normal can score: the loss of the process holding it is infinite
    bad = data(300)
    bad["x"][7] = 1e30
    np.savez(tmp_path / "bad.npz", **bad)
    done = launch(["-m", "dgmlang.cli", "fit", "m.dgm", "--data", "bad.npz", "--epochs", "1", "--batch-size", "32",
                   "--nproc", "2", "--out", "bad", "-q"], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "the loss is inf" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("the loss is inf") == 1
