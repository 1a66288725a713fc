"""Checkpoints verified (issue 11, item 4): damaged bytes, mistyped fields, non-finite
parameters and oversized model text are each a `DGMCheckpointError` naming the file; the
grammar cache is never unpickled."""
import json
import os
import pickle
import random
import resource
import subprocess
import sys

import pytest
import torch

import dgmlang
import dgmlang.frontend
from dgmlang import checkpoint
from dgmlang.errors import DGMCheckpointError, DGMError

TINY = """
model tiny {
    param  mu[2]
    data   x[2]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(z + mu, 0.5)
}
"""


@pytest.fixture(scope="module")
def fitted():
    m = dgmlang.compile(TINY)
    m.fit({"x": torch.randn(8, 2, generator=torch.Generator().manual_seed(0))}, steps=3,
          seed=0, progress=False)
    return m


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "tiny.pt"
    fitted.save(path)
    return path


def params(m):
    return {**m.model.state_dict(), **m.guide.state_dict()}


def rewrite(path, change, *, seal=True):
    """Change the saved payload; with `seal`, store a matching digest (as a tamperer could),
    so that what is tested is the field check, not the digest."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    if seal:
        try:
            payload["digest"] = checkpoint.payload_digest(payload)
        except Exception:  # noqa: BLE001 - a payload no digest covers: read refuses it
            payload["digest"] = "sha256:none"
    torch.save(payload, path)


def set_metadata(**fields):
    def change(payload):
        meta = json.loads(payload["metadata"])
        meta.update(fields)
        payload["metadata"] = json.dumps(meta)
    return change


def refused(path, match):
    with pytest.raises(DGMCheckpointError, match=match) as info:
        dgmlang.load_fitted(path)
    assert str(path) in str(info.value)
    return info.value


# ---------------------------------------------------------------- the digest


def test_every_single_byte_flip_is_refused_or_changes_nothing_loaded(fitted, saved, tmp_path):
    raw = saved.read_bytes()
    reference = params(fitted)
    rng = random.Random(11)
    damaged = tmp_path / "damaged.pt"
    outcomes = {"refused": 0, "identical": 0}
    for _ in range(400):
        flipped = bytearray(raw)
        where = rng.randrange(len(flipped))
        flipped[where] ^= rng.randrange(1, 256)
        damaged.write_bytes(bytes(flipped))
        try:
            loaded = dgmlang.load_fitted(damaged)
        except DGMCheckpointError as err:
            assert str(damaged) in str(err)
            outcomes["refused"] += 1
            continue
        got = params(loaded)  # loaded: the flip hit padding or a field nothing reads
        assert got.keys() == reference.keys(), where
        assert all(torch.equal(got[k], reference[k]) and got[k].dtype == reference[k].dtype
                   for k in reference), f"byte {where} changed the parameters silently"
        assert (loaded.source, loaded.history, loaded.fitted, loaded.name) == \
            (fitted.source, fitted.history, fitted.fitted, fitted.name), where
        outcomes["identical"] += 1
    assert outcomes["refused"] > 200 and sum(outcomes.values()) == 400


def test_a_damaged_tensor_metadata_or_source_fails_the_digest(saved):
    def bump(payload):
        payload["model_state"]["params.mu_unconstrained"] = payload["model_state"]["params.mu_unconstrained"] + 1e-6

    for change in (bump, set_metadata(fitted=False, filename="elsewhere.dgm"),
                   lambda p: p.__setitem__("source", p["source"].replace("0.5", "0.6")),
                   lambda p: p.__setitem__("later_field", {"added": [1, 2]})):
        saved_bytes = saved.read_bytes()
        rewrite(saved, change, seal=False)
        refused(saved, "do not match the digest")
        saved.write_bytes(saved_bytes)
    assert dgmlang.load_fitted(saved).fitted


def test_the_digest_covers_fields_a_later_version_adds(saved):
    rewrite(saved, set_metadata(data_statistics={"x": [0.0, 1.0]}))
    loaded = checkpoint.read(saved)
    assert loaded.verified and loaded.metadata["data_statistics"] == {"x": [0.0, 1.0]}
    rewrite(saved, lambda p: p.__setitem__("optimizer_state", {"step": torch.tensor(3)}))
    assert checkpoint.read(saved).extra["optimizer_state"]["step"] == 3
    rewrite(saved, set_metadata(data_statistics={"x": [0.0, 2.0]}), seal=False)
    refused(saved, "do not match the digest")


def test_a_format_2_file_without_its_digest_is_refused(saved):
    rewrite(saved, lambda p: p.pop("digest"), seal=False)
    refused(saved, "digest is missing")


def test_format_1_files_are_read_unverified(fitted, saved):
    def format_1(payload):
        payload.pop("digest")
        meta = json.loads(payload["metadata"])
        meta["format_version"] = 1
        payload["metadata"] = json.dumps(meta)

    rewrite(saved, format_1, seal=False)
    assert not checkpoint.read(saved).verified
    loaded = dgmlang.load_fitted(saved)
    assert all(torch.equal(a, b) for a, b in zip(params(loaded).values(), params(fitted).values()))
    # a format 1 file that has a digest (a flipped version byte) is still checked
    rewrite(saved, lambda p: p.__setitem__("digest", "sha256:0"), seal=False)
    refused(saved, "do not match the digest")


def test_format_2_files_load_without_a_training_state(fitted, saved):
    def format_2(payload):
        payload.pop("training_state")
        meta = json.loads(payload["metadata"])
        meta.pop("training")
        meta["format_version"] = 2
        payload["metadata"] = json.dumps(meta)

    assert checkpoint.read(saved).training is not None
    rewrite(saved, format_2)
    loaded = dgmlang.load_fitted(saved)
    assert checkpoint.read(saved).format_version == 2 and loaded.training_state is None
    assert all(torch.equal(a, b) for a, b in zip(params(loaded).values(), params(fitted).values()))
    with pytest.raises(DGMError, match="has none"):
        loaded.fit({"x": torch.zeros(4, 2)}, steps=1, resume=True, progress=False)


TREE = """
model tree {
    data x1
    data x2
    data x3
    latent a
    latent b
    latent c
    a ~ Normal(0, 1)
    b ~ Normal(a, 1)
    c ~ Normal(a, 1)
    x1 ~ Normal(b, 1)
    x2 ~ Normal(b, 1)
    x3 ~ Normal(c, 1)
}
"""


def test_the_guide_order_is_saved_and_files_without_one_load_in_nami_order(tmp_path):
    """A model compiled with guide_order="minfill" comes back with its plan; a file written
    before there was a choice (no "guide_order") is NaMI's, as it was derived then."""
    data = {name: torch.randn(8) for name in ("x1", "x2", "x3")}
    m = dgmlang.compile(TREE, guide_order="minfill")
    assert m.guide_plan != dgmlang.compile(TREE).guide_plan
    m.fit(data, steps=2, progress=False)
    path = tmp_path / "tree.pt"
    m.save(path)
    loaded = dgmlang.load_fitted(path)
    assert loaded.plan.order == "minfill" and loaded.guide_plan == m.guide_plan
    assert all(torch.equal(a, b) for a, b in zip(params(loaded).values(), params(m).values()))
    nami = dgmlang.compile(TREE)
    nami.fit(data, steps=2, progress=False)
    nami.save(path)

    def older(payload):
        meta = json.loads(payload["metadata"])
        meta.pop("guide_order")
        payload["metadata"] = json.dumps(meta)

    rewrite(path, older)
    assert dgmlang.load_fitted(path).guide_plan == nami.guide_plan


def test_the_digest_covers_the_training_state(saved):
    def bump(payload):
        state = payload["training_state"]["optimizer"]["model.params.mu_unconstrained"]
        state["exp_avg"] = state["exp_avg"] + 1e-3

    rewrite(saved, bump, seal=False)
    refused(saved, "do not match the digest")


# ---------------------------------------------------------------- every field type-checked


def set_training(**fields):
    def change(payload):
        meta = json.loads(payload["metadata"])
        meta["training"].update(fields)
        payload["metadata"] = json.dumps(meta)
    return change


def set_training_tensor(key, value):
    return lambda payload: payload["training_state"].__setitem__(key, value)


def set_moment(value):
    return lambda payload: payload["training_state"]["optimizer"]["model.params.mu_unconstrained"].__setitem__(
        "exp_avg", value)


@pytest.mark.parametrize("change, match", [
    (set_metadata(training=[1]), "'training' should be a JSON object"),
    (set_training(steps_done=-1), "'steps_done' should be a whole number >= 0"),
    (set_training(position=1.5), "'position' should be a whole number >= 0"),
    (set_training(planned_steps=1), "'planned_steps' is below 'steps_done'"),
    (set_training(settings={"lr": 0.1}), "'settings' should hold batch_size"),
    (set_training(settings={"batch_size": 0, "lr": 0.1, "num_particles": 1, "objective": "elbo", "seed": 0}),
     "'batch_size' and 'num_particles' should be whole numbers >= 1"),
    (set_training(settings={"batch_size": 4, "lr": -1, "num_particles": 1, "objective": "elbo", "seed": 0}),
     "'lr' should be a positive number"),
    (set_training(settings={"batch_size": 4, "lr": 0.1, "num_particles": 1, "objective": "map", "seed": 0}),
     "'objective' should be 'elbo' or 'iwae'"),
    (set_training(data={"rows": 8}), "'data' should hold rows and sample_sha256"),
    (set_training(optimizer="sgd"), "'optimizer' should be 'adam'"),
    (set_training_tensor("rng", torch.zeros(3, dtype=torch.uint8)), "'rng' should be 5056 bytes"),
    (set_training_tensor("order", torch.arange(7)), "'order' should be empty or a permutation of the 8 rows"),
    (set_training_tensor("order", torch.zeros(8, dtype=torch.int64)), "'order' is not a permutation"),
    (set_training_tensor("optimizer", [1]), "'optimizer' should be a dict"),
    (set_moment(torch.tensor([1.0, float("nan")])), "should be finite float tensors"),
    (set_moment(torch.zeros(3)), r"'exp_avg' for 'model.params.mu_unconstrained' is shaped \[3\]"),
    (lambda p: p["training_state"]["optimizer"].__setitem__("model.nothing", {}), "'model.nothing', which"),
    (lambda p: p.pop("training_state"), "training state is incomplete"),
])
def test_every_training_state_field_is_type_checked(saved, change, match):
    rewrite(saved, change)
    refused(saved, match)


def tensor_source(payload):
    payload["source"] = torch.zeros(3)


@pytest.mark.parametrize("change, match", [
    (set_metadata(history="a string"), "'history' should be a JSON object"),
    (set_metadata(history={"loss": "abc"}), "history 'loss' should be a list of numbers"),
    (set_metadata(history={"loss": [1.0, None]}), "history 'loss' should be a list of numbers"),
    (set_metadata(fitted="yes"), "'fitted' should be a true or false"),
    (set_metadata(model=3), "'model' should be a string"),
    (set_metadata(filename=["a"]), "'filename' should be a string"),
    (set_metadata(format_version="2"), "not a dgmlang checkpoint"),
    (set_metadata(format_version=True), "not a dgmlang checkpoint"),
    (set_metadata(format_version=0), "format 0 does not exist"),
    (set_metadata(guide_plan=[["z", 3]]), "'guide_plan' is not a guide plan"),
    (set_metadata(dgmlang_version=2.0), "'dgmlang_version' should be a string"),
    (set_metadata(guide_order=1), "'guide_order' should be a string"),
    (set_metadata(guide_order="fewest"), "unknown guide order 'fewest'"),
    (tensor_source, "model text is not text"),
    (lambda p: p.__setitem__("source", ""), "model text is not text"),
    (lambda p: p.__setitem__("metadata", torch.zeros(2)), "unreadable metadata"),
    (lambda p: p.__setitem__("metadata", "[1, 2]"), "unreadable metadata"),
    (lambda p: p.__setitem__("metadata", "{" * 100_000), "unreadable metadata"),
    (lambda p: p.__setitem__("metadata", '{"format_version": ' + "9" * 5000 + "}"),
     "unreadable metadata"),
    (lambda p: p.__setitem__("model_state", [torch.zeros(2)]), "'model_state' is not a dict of tensors"),
    (lambda p: p.__setitem__("guide_state", {"w": "text"}), "'guide_state' is not a dict of tensors"),
    (lambda p: p.__setitem__("guide_state", {1: torch.zeros(1)}), "a key that is not a string"),
    (lambda p: p["model_state"].__setitem__("params.mu_unconstrained", torch.zeros(2, dtype=torch.float64)),
     r"'params.mu_unconstrained' is \[2\] float64 in the file, the model expects \[2\] float32"),
    (lambda p: p["model_state"].__setitem__("params.mu_unconstrained",
                                            torch.zeros(2, dtype=torch.float8_e4m3fn)),
     "float8_e4m3fn tensor"),
    (lambda p: p["model_state"].__setitem__("params.mu_unconstrained", torch.zeros(3)),
     r"'params.mu_unconstrained' is \[3\] float32 in the file"),
    (lambda p: p["model_state"].__setitem__("params.extra", torch.zeros(3)), "does not have"),
    (lambda p: p["model_state"].pop("params.mu_unconstrained"), "'params.mu_unconstrained' is missing"),
])
def test_every_field_is_type_checked(saved, change, match):
    rewrite(saved, change)
    refused(saved, match)


def test_a_digest_that_is_not_text(saved):
    rewrite(saved, lambda p: p.__setitem__("digest", torch.zeros(2)), seal=False)
    refused(saved, "digest is not text")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_parameters_are_refused(saved, value):
    rewrite(saved, lambda p: p["model_state"]["params.mu_unconstrained"].__setitem__(0, value))
    error = refused(saved, "'params.mu_unconstrained' .* holds non-finite values")
    assert "fit it again" in str(error)


def test_a_compressed_container_is_refused(saved, tmp_path):
    import zipfile

    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry.filename))
    refused(packed, "compressed entry")


# ---------------------------------------------------------------- nothing allocated before checking


HUGE = TINY.replace("param  mu[2]", "param  mu[2]\n    param  p[2147483648]").replace(
    "z + mu", "z + mu + sum(p)")


def test_an_oversized_model_text_is_refused_before_anything_is_allocated(saved, monkeypatch):
    """8 GiB of parameters declared in the saved text, 8 bytes saved: refused before the
    model is built (only on the meta device, which allocates nothing), either by the
    checker's limits or by comparing the saved tensors' shapes."""
    rewrite(saved, lambda p: p.__setitem__("source", HUGE))
    devices = []
    build = dgmlang.frontend.compile_checked

    def recording(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return build(*args, **kwargs)

    monkeypatch.setattr(dgmlang.frontend, "compile_checked", recording)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DGMCheckpointError) as info:
        dgmlang.load_fitted(saved)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert str(saved) in str(info.value)
    assert all(device == "meta" for device in devices), devices
    assert grown_kib < 256 * 1024, f"{grown_kib} KiB more resident memory"


def test_saved_text_that_does_not_check_is_a_checkpoint_error(saved):
    rewrite(saved, lambda p: p.__setitem__("source", TINY.replace("Normal(0, 1)", "Normal(0, 1")))
    error = refused(saved, "does not pass this dgmlang's checks")
    assert isinstance(error, DGMError)


# ---------------------------------------------------------------- the grammar cache


def test_a_planted_grammar_cache_is_never_unpickled(tmp_path):
    """A pickle that would touch a marker file when unpickled, planted under every name a
    dgmlang cache has had: parsing still works and the marker never appears."""
    from dgmlang import grammar_cache, parse as parse_module

    marker = tmp_path / "unpickled"
    home = tmp_path / "cache"
    folder = home / "dgmlang"
    folder.mkdir(parents=True, mode=0o700)

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = pickle.dumps(Plant())
    grammar = parse_module.grammar_text()
    import hashlib

    import lark

    old_digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
    python = "%d%d" % sys.version_info[:2]
    names = [f"grammar-{old_digest}-lark{lark.__version__}-py{python}.cache",
             f"grammar-{grammar_cache.cache_key(grammar)[:16]}-lark{lark.__version__}.json.cache"]
    for name in names:
        (folder / name).write_bytes(b"planted\n" + planted + planted)
        (folder / name).chmod(0o600)
    code = ("from dgmlang.parse import parse\n"
            "print(parse('model m { data x; x ~ Normal(0, 1) }').models[0].name)\n")
    for _ in range(2):  # the planted file, then the cache written over it
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, XDG_CACHE_HOME=str(home)), check=True)
        assert done.stdout.split() == ["m"]
        assert not marker.exists()
    assert (folder / names[1]).read_bytes().startswith(b"dgmlang-grammar-cache-json-1 ")


def test_a_cache_others_could_write_is_not_read(tmp_path, monkeypatch):
    from dgmlang import grammar_cache, parse as parse_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    grammar = parse_module.grammar_text()
    path = grammar_cache.cache_file(grammar)
    key = grammar_cache.cache_key(grammar)
    grammar_cache.write_cache(path, key, parse_module._parser())
    assert grammar_cache.read_cache(path, key) is not None
    os.chmod(path, 0o620)  # group-writable
    assert grammar_cache.read_cache(path, key) is None
    os.chmod(path, 0o600)
    if hasattr(os, "getuid") and os.getuid() == 0:  # root can give the file to another user
        os.chown(path, 12345, -1)
        assert grammar_cache.read_cache(path, key) is None
        os.chown(path, 0, -1)
    with open(path, "ab") as file:  # damaged: the body's digest no longer matches
        file.write(b" ")
    assert grammar_cache.read_cache(path, key) is None
    os.chmod(tmp_path / "dgmlang", 0o777)  # a folder others may write: no cache at all
    assert grammar_cache.cache_file(grammar) is None
    os.chmod(tmp_path / "dgmlang", 0o700)
    link = tmp_path / "dgmlang" / "link.cache"
    link.symlink_to(path)
    assert grammar_cache.read_cache(str(link), key) is None
