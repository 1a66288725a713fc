"""Devices and dtypes (dgmlang.devices, CompiledModel.to, load/load_fitted/compile's device=
and dtype=, the CLI's --device/--dtype).

The guard: a model built on the CPU runs fit, sample, log_prob and invert with torch's
default device set to "meta". A tensor made without an explicit device then lands on meta
and the first operation mixing it with the model's CPU tensors raises, so a tensor that
would be made on the wrong device on a GPU fails here, on the CPU. Data checking
(`prepare_data`, `prepare_inputs`) and reading a `Dataset`'s rows are a CPU stage by design
(data is moved a batch at a time), so they run with the CPU as the default.

Tests marked `cuda` compare a GPU with the CPU and are skipped without one (`make gpu-check`
runs them).
"""
import functools
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings

import dgmlang
from dgmlang import devices, posterior, training, weights
from dgmlang.data import Dataset
from dgmlang.errors import DGMError, DGMUsageError
from dgmlang.testing import simulate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CORPUS = sorted(path.stem for path in EXAMPLES.glob("*.dgm"))
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = """
model tiny {
    data   x[2]
    latent z[2]
    param  s : positive
    z ~ Normal(0, 1)
    x ~ Normal(z, s)
}
"""

NOISELESS = """
model noiseless {
    data   x[3]
    param  mu[3]
    param  s : positive
    x ~ Normal(mu, s)
}
"""


def _on_cpu(function):
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with torch.device("cpu"):
            return function(*args, **kwargs)
    return wrapped


def _data_on_cpu(patches) -> None:
    """Data is checked and its rows read on the CPU (then moved a batch at a time)."""
    patches.setattr(training, "prepare_data", _on_cpu(training.prepare_data))
    patches.setattr(posterior, "prepare_data", _on_cpu(posterior.prepare_data))
    patches.setattr(posterior, "prepare_inputs", _on_cpu(posterior.prepare_inputs))
    for name in ("values", "observed"):  # a Dataset reads its rows when first asked
        read = functools.cached_property(_on_cpu(Dataset.__dict__[name].func))
        read.__set_name__(Dataset, name)
        patches.setattr(Dataset, name, read)


@pytest.fixture
def meta_default(monkeypatch):
    """A context in which tensors made without a device land on meta (data aside)."""
    _data_on_cpu(monkeypatch)
    _fewer_draws(monkeypatch)
    return lambda: torch.device("meta")


def _fewer_draws(patches) -> None:
    """Where tensors are made does not depend on how many sweeps or proposals: few of them."""
    from dgmlang import gibbs

    patches.setattr(gibbs, "WARMUP_SWEEPS", 1)
    patches.setattr(gibbs, "GIBBS_SWEEPS", 2)
    patches.setattr(posterior, "SIR_PROPOSALS", 8)
    patches.setattr(posterior, "SIR_PROPOSALS_PER_GLOBAL", 4)


def _on_model_device(value, model) -> None:
    tensors = value.values() if isinstance(value, dict) else [value]
    for tensor in tensors:
        assert tensor.device == model.device, (tensor.device, model.device)


def _with_missing(model, data):
    """`data` with the first row's float data entries missing (NaN)."""
    out = dict(data)
    for name in model.ir.names("data"):
        if out[name].is_floating_point():
            out[name] = out[name].clone()
            out[name][0] = float("nan")
    return out


def _run_everything(model, data, guard, *, iwae: bool = True) -> None:
    """fit (ELBO with validation, IWAE, 2 particles), sample, log_prob and invert (with and
    without missing entries) of a CPU model under the guard; results on the model's device."""
    inputs = {k: v for k, v in data.items() if k in model.ir.names("input")}
    n = len(next(iter(data.values())))
    scorable = not any(v.guide is not None and v.guide.family == "delta" for v in model.ir.variables)
    with guard():
        model.fit(data, steps=2, batch_size=4, seed=0, progress=False, validation=data)
        if iwae and scorable and not model.roles.guide_enumerated:
            model.fit(data, steps=1, batch_size=4, seed=0, progress=False, objective="iwae",
                      num_particles=2)
        model.fit(data, steps=1, batch_size=4, seed=0, progress=False, num_particles=2)
        _on_model_device(model.sample(n, inputs or None, seed=0), model)
        if scorable:
            _on_model_device(model.log_prob(data, num_samples=4, seed=0), model)
            _on_model_device(model.invert(data, num_samples=2, seed=0), model)
            if not any(draw.steps for draw in model.ir.draws):  # sequences: no missing steps yet
                _on_model_device(model.invert(_with_missing(model, data), num_samples=2, seed=0), model)


@pytest.mark.parametrize("name", CORPUS)
def test_every_example_makes_its_tensors_on_the_models_device(name, meta_default):
    model = dgmlang.load(EXAMPLES / f"{name}.dgm")
    data = simulate(model, 6, seed=1).data
    _run_everything(model, data, meta_default)


def test_the_guard_finds_a_tensor_made_without_the_models_device(meta_default, monkeypatch):
    # a model whose guide draws nothing: its log q is a zero made where site_sums is told;
    # made on the default device (as before the fix) it fails here
    model = dgmlang.compile(NOISELESS)
    data = {"x": torch.randn(4, 3)}
    original = weights.site_sums
    monkeypatch.setattr(weights, "site_sums",
                        lambda trace, shape, globals_, device=None: original(trace, shape, globals_))
    with meta_default(), pytest.raises(RuntimeError, match="meta"):
        model.log_prob(data, num_samples=3, seed=0)
    monkeypatch.setattr(weights, "site_sums", original)
    with meta_default():
        assert model.log_prob(data, num_samples=3, seed=0).device == CPU


def _generated():
    from hypothesis import strategies as st

    from dgmlang.testing import models

    return st.one_of(models(max_latents=3, with_nets=False), models(max_latents=3, with_nets=True))


@settings(max_examples=40, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(_generated())
def test_generated_models_make_their_tensors_on_the_models_device(program):
    model = program.compile()
    try:  # a heavy-tailed prior can overflow: that draw is no case here
        data = simulate(model, 6, seed=3).data
    except ValueError:
        data = None
    assume(data is not None and all(bool(v.isfinite().all()) for v in data.values()))
    patches = pytest.MonkeyPatch()
    try:
        _data_on_cpu(patches)
        _fewer_draws(patches)
        try:
            _run_everything(model, data, lambda: torch.device("meta"), iwae=False)
        except DGMError:  # a model's own failure (training diverged on 6 rows): not a device error
            pass
    finally:
        patches.undo()


# ------------------------------------------------------------------ .to and dtypes


def test_to_converts_every_parameter_and_the_results():
    model = dgmlang.compile(TINY)
    assert model.to(dtype="float64") is model
    assert model.dtype == torch.float64 and model.device == CPU
    for module in (model.model, model.guide):
        assert all(p.dtype == torch.float64 for p in module.parameters())
    data = simulate(model, 8, seed=0).data
    model.fit(data, steps=2, seed=0, progress=False)
    assert model.sample(3, seed=0)["x"].dtype == torch.float64
    assert model.log_prob(data, num_samples=5, seed=0).dtype == torch.float64
    model.to(dtype=torch.float32)
    assert model.sample(3, seed=0)["x"].dtype == torch.float32  # constants remade in float32


def test_compile_load_and_the_dsl_take_device_and_dtype():
    assert dgmlang.compile(TINY, dtype="float64").dtype == torch.float64
    assert dgmlang.load(EXAMPLES / "ppca.dgm", device="cpu", dtype="float64").dtype == torch.float64
    dsl = dgmlang.Model("m")
    x, z = dsl.data("x"), dsl.latent("z")
    dsl.draw(z, dgmlang.Normal(0, 1))
    dsl.draw(x, dgmlang.Normal(z, 1))
    assert dsl.compile(device="cpu", dtype="float64").dtype == torch.float64


def test_a_float64_checkpoint_loads_in_float64_or_as_asked(tmp_path):
    model = dgmlang.compile(TINY, dtype="float64")
    model.fit(simulate(model, 8, seed=0).data, steps=2, seed=0, progress=False)
    model.save(tmp_path / "m.pt")
    loaded = dgmlang.load_fitted(tmp_path / "m.pt")
    assert loaded.dtype == torch.float64
    assert torch.equal(loaded.model.param("s"), model.model.param("s"))
    single = dgmlang.load_fitted(tmp_path / "m.pt", device="cpu", dtype="float32")
    assert single.dtype == torch.float32 and single.device == CPU


@pytest.mark.parametrize("spec, message", [
    ("gpu", "unknown device 'gpu'"),
    ("cuda:x", "unknown device"),
    ("cpu:1", "unknown device"),
    (3, "must be a string"),
])
def test_an_unknown_device_is_a_usage_error(spec, message):
    with pytest.raises(DGMUsageError, match=message):
        dgmlang.compile(TINY, device=spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_to_install():
    with pytest.raises(DGMUsageError) as err:
        dgmlang.compile(TINY).to("cuda")
    assert "download.pytorch.org" in err.value.hint


def test_dtypes_other_than_float32_and_float64_are_refused_and_mps_has_no_float64():
    with pytest.raises(DGMUsageError, match="float32 or float64"):
        dgmlang.compile(TINY, dtype="float16")
    with pytest.raises(DGMUsageError, match="no float64"):
        devices.check_pair(torch.device("mps"), torch.float64)


def test_cli_device_and_dtype(tmp_path):
    from dgmlang.cli import main

    model_file = EXAMPLES / "ppca.dgm"
    data = tmp_path / "x.npy"
    import numpy as np

    np.save(data, simulate(dgmlang.load(model_file), 20, seed=0).data["x"].numpy())
    run = tmp_path / "run"
    assert main(["fit", str(model_file), "--data", str(data), "--steps", "2", "--out", str(run),
                 "--dtype", "float64", "--device", "cpu", "-q", "--no-score"]) == 0
    assert dgmlang.load_fitted(run / "model.dgmfit").dtype == torch.float64
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "-n", "3", "-o", str(out), "--dtype", "float32"]) == 0
    assert np.load(out)["x"].dtype == np.float32
    if not torch.cuda.is_available():
        assert main(["score", str(run), "--data", str(data), "-o", str(tmp_path / "s.csv"),
                     "--device", "cuda"]) != 0


# ------------------------------------------------------------------ on a GPU


def _close(a, b, tol):
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max()) < tol




@pytest.mark.cuda
@needs_cuda
def test_cuda_fit_log_prob_and_sample_match_the_cpu():
    data = {"x": torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1}
    fitted = []
    for device in ("cpu", "cuda"):
        model = dgmlang.compile(NOISELESS, device=device, dtype="float64")
        model.fit(data, steps=50, batch_size=200, lr=0.05, seed=0, progress=False)
        assert model.model.param("mu").device.type == device
        fitted.append(model)
    cpu, gpu = fitted
    # no sampling noise in this model: the same steps give the same parameters
    assert _close(cpu.model.param("mu"), gpu.model.param("mu"), 1e-8)
    scores = [m.log_prob(data, num_samples=3, seed=0) for m in fitted]
    assert scores[1].device.type == "cuda" and _close(scores[0], scores[1], 1e-8)
    draws = gpu.sample(20000, seed=0)["x"]
    assert draws.device.type == "cuda"
    assert _close(draws.mean(0), gpu.model.param("mu"), 0.1)


@pytest.mark.cuda
@needs_cuda
def test_cuda_latent_model_fits_scores_and_inverts_like_the_cpu(tmp_path):
    source = (EXAMPLES / "ppca.dgm").read_text()
    data = simulate(dgmlang.compile(source), 400, seed=0).data
    results = {}
    for device in ("cpu", "cuda"):
        model = dgmlang.compile(source, device=device)
        losses = model.fit(data, steps=300, batch_size=100, lr=0.02, seed=0, progress=False)
        score = model.log_prob({k: v[:50] for k, v in data.items()}, num_samples=500, seed=0)
        draws = model.invert({k: v[:20] for k, v in data.items()}, num_samples=200, seed=0)
        results[device] = (sum(losses[-50:]) / 50, score.mean(), draws)
        assert score.device.type == device
    (cpu_loss, cpu_score, cpu_post), (gpu_loss, gpu_score, gpu_post) = results["cpu"], results["cuda"]
    # different random streams, the same estimators: figures agree to Monte Carlo error (on
    # the CPU, seeds 0, 1, 2 differ by at most 0.06 nats of loss, 0.03 of log-likelihood and
    # 0.01 (mean) / 0.03 (max) in the posterior means of z, whose posterior sd is about 0.09)
    assert abs(cpu_loss - gpu_loss) < 0.25, (cpu_loss, gpu_loss)
    assert abs(float(cpu_score) - float(gpu_score)) < 0.15, (float(cpu_score), float(gpu_score))
    for name, value in gpu_post.items():
        assert value.device.type == "cuda"
        assert value.shape == cpu_post[name].shape
    gap = (cpu_post["z"].mean(0) - gpu_post["z"].mean(0).cpu()).abs()
    assert float(gap.mean()) < 0.03 and float(gap.max()) < 0.1, gap


@pytest.mark.cuda
@needs_cuda
def test_cuda_load_fitted_puts_the_parameters_on_the_gpu(tmp_path):
    model = dgmlang.compile(TINY)
    data = simulate(model, 16, seed=0).data
    model.fit(data, steps=3, seed=0, progress=False)
    model.to("cuda")
    model.save(tmp_path / "m.pt")  # saved from the GPU, read anywhere
    cpu = dgmlang.load_fitted(tmp_path / "m.pt")
    gpu = dgmlang.load_fitted(tmp_path / "m.pt", device="cuda")
    assert cpu.device == CPU and gpu.device.type == "cuda"
    for (_, a), (_, b) in zip(cpu.model.state_dict().items(), gpu.model.state_dict().items()):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    assert gpu.log_prob(data, num_samples=10, seed=0).device.type == "cuda"
    gpu.fit(data, steps=2, seed=0, progress=False)
