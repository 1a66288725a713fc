"""Data validation: every mistake in user data is a DGMDataError naming the variable, the row
and what was expected, before any training."""
import numpy as np
import pytest
import torch

import dgmlang
from dgmlang import data as data_module
from dgmlang.data import Dataset, prepare_data, prepare_inputs
from dgmlang.errors import DGMDataError
from dgmlang.frontend import check_source

SOURCE = """
model counts {
    data x[3]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, hidden = [8]))
}
model labels {
    input u[2]
    input k : int
    data c
    data b
    c ~ Categorical(logits = mlp(u, onehot(k, 4), hidden = [8]) + zeros(3))
    b ~ Bernoulli(logits = sum(u))
}
model support {
    data pos
    data unit[2]
    data simplex[3]
    data poisson
    pos ~ LogNormal(0, 1)
    unit ~ Beta(2, 2)
    simplex ~ Dirichlet(ones(3))
    poisson ~ Poisson(3.0)
}
model inputs {
    input s : positive
    input p : unit
    input w[3]
    data y
    y ~ Normal(dot(w, w) * s + p, 1)
}
model totals {
    input t : int
    data k[2]
    k ~ Binomial(t, logits = zeros(2))
}
"""
IRS = {m.ir.name: m.ir for m in check_source(SOURCE, "data.dgm")}


def error(ir_name, data, **options) -> str:
    with pytest.raises(DGMDataError) as info:
        prepare_data(IRS[ir_name], data, **options)
    return str(info.value)


def good_labels(n=4):
    return {"u": torch.zeros(n, 2), "k": torch.arange(n) % 4, "c": torch.arange(n) % 3,
            "b": torch.ones(n)}


def test_dict_and_bare_array_are_converted_to_default_float():
    x = np.array([[0, 1, 16], [2, 3, 4]], dtype=np.int64)
    for data in (x, {"x": x}, x.tolist(), torch.from_numpy(x).double()):
        out = prepare_data(IRS["counts"], data)
        assert out.n == 2 and not out.has_missing
        assert out.values["x"].dtype == torch.get_default_dtype()
        assert out.values["x"].tolist() == [[0, 1, 16], [2, 3, 4]]


def test_labels_and_int_inputs_become_int64():
    out = prepare_data(IRS["labels"], {**good_labels(), "k": np.array([0, 1, 2, 3], dtype=np.int32)})
    assert out.values["c"].dtype == torch.int64 and out.values["k"].dtype == torch.int64
    assert out.values["u"].dtype == torch.get_default_dtype()


def test_bare_array_needs_a_single_data_variable_and_no_inputs():
    text = error("labels", torch.zeros(4))
    assert "needs a dict" in text and "'c'" in text and "'u'" in text


def test_unknown_name_suggests_the_closest():
    text = error("counts", {"xx": torch.zeros(2, 3)})
    assert "no variable 'xx'" in text and "did you mean 'x'?" in text


def test_missing_names_are_listed():
    data = good_labels()
    del data["k"], data["b"]
    text = error("labels", data)
    assert "no values for 'k', 'b'" in text


def test_wrong_shape_names_the_expected_shape():
    text = error("counts", {"x": torch.zeros(5, 4)})
    assert "data variable 'x' (Binomial) has shape (5, 4); expected (n, 3)" in text


def test_trailing_singleton_dimension_gets_a_squeeze_hint():
    data = {**good_labels(), "b": torch.ones(4, 1)}
    text = error("labels", data)
    assert "expected (n)" in text and "squeeze" in text


def test_rows_must_agree():
    data = {**good_labels(), "c": torch.zeros(3, dtype=torch.long)}
    text = error("labels", data)
    assert "'c' has 3 rows but 'u' has 4" in text


def test_no_rows_is_an_error():
    assert "has no rows" in error("counts", torch.zeros(0, 3))


def test_float_class_labels_are_refused():
    text = error("labels", {**good_labels(), "c": torch.tensor([0.0, 1.0, 2.0, 1.0])})
    assert "holds class labels but has floating dtype torch.float32" in text
    assert ".long()" in text


def test_float_int_input_is_refused():
    text = error("labels", {**good_labels(), "k": np.zeros(4)})
    assert "input 'k' (int) holds whole numbers but has floating dtype" in text


def test_non_numeric_arrays_are_refused():
    assert "not numbers" in error("counts", np.array([["a", "b", "c"]]))
    assert "complex" in error("counts", torch.zeros(2, 3, dtype=torch.complex64))
    assert "cannot be read as an array" in error("counts", [[1, 2, 3], [1, 2]])


@pytest.mark.parametrize(
    "row, expected",
    [
        ([0, 17, 1], "row 1, column 1 holds 17, outside its support"),
        ([0, -1, 1], "row 1, column 1 holds -1, outside its support"),
        ([0, 1, 2.5], "row 1, column 2 holds 2.5, outside its support"),
    ],
)
def test_counts_outside_zero_to_total_count(row, expected):
    text = error("counts", [[1, 2, 3], row])
    assert expected in text and "expected a whole number in 0..16" in text


def test_class_at_or_above_k():
    text = error("labels", {**good_labels(), "c": torch.tensor([0, 1, 3, 0])})
    assert "data variable 'c' (Categorical): row 2 holds 3" in text
    assert "a whole number in 0..2" in text


def test_bernoulli_values_are_zero_or_one():
    text = error("labels", {**good_labels(), "b": torch.tensor([1.0, 0.0, 0.5, 1.0])})
    assert "row 2 holds 0.5" in text and "expected 0 or 1" in text
    assert "row 3 holds 2" in error("labels", {**good_labels(), "b": torch.tensor([1, 0, 0, 2])})


def good_support(n=2):
    return {"pos": torch.ones(n), "unit": torch.full((n, 2), 0.5),
            "simplex": torch.full((n, 3), 1 / 3), "poisson": torch.zeros(n)}


def test_supports_of_continuous_and_count_distributions():
    prepare_data(IRS["support"], good_support())
    cases = {
        "pos": (torch.tensor([1.0, 0.0]), "row 1 holds 0", "a number > 0"),
        "unit": (torch.tensor([[0.5, 0.5], [0.5, 1.5]]), "row 1, column 1 holds 1.5",
                 "a number in (0, 1), its ends excluded"),
        "simplex": (torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.5, 0.5]]), "row 1 holds [0.5, 0.5, 0.5]",
                    "summing to 1"),
        "poisson": (torch.tensor([0.0, 1.5]), "row 1 holds 1.5", "a whole number >= 0"),
    }
    for name, (value, where, expected) in cases.items():
        text = error("support", {**good_support(), name: value})
        assert f"'{name}'" in text and where in text and expected in text, text


def test_declared_input_types_are_checked():
    good = {"s": torch.ones(2), "p": torch.full((2,), 0.5), "w": torch.zeros(2, 3), "y": torch.zeros(2)}
    prepare_data(IRS["inputs"], good)
    assert "input 's' (positive): row 0 holds -1" in error("inputs", {**good, "s": torch.tensor([-1.0, 1.0])})
    assert "input 'p' (unit): row 1 holds 2" in error("inputs", {**good, "p": torch.tensor([0.0, 2.0])})


def test_nan_and_inf_are_refused_outside_invert():
    text = error("counts", [[1.0, float("nan"), 3.0]])
    assert "row 0, column 1 is NaN" in text and "fit, log_prob and invert" in text
    text = error("counts", [[1.0, 2.0, float("inf")]], allow_missing=True)
    assert "row 0, column 2 is infinite" in text


def test_inputs_are_never_missing():
    data = {**good_labels(), "u": torch.tensor([[0.0, float("nan")]] * 4)}
    text = error("labels", data, allow_missing=True)
    assert "input 'u': row 0, column 1 is NaN" in text and "never missing" in text


def test_nan_and_mask_mark_missing_entries_with_valid_placeholders():
    x = torch.tensor([[1.0, float("nan"), 3.0], [4.0, 5.0, 6.0]])
    mask = {"x": torch.tensor([[True, True, True], [True, False, True]])}
    out = prepare_data(IRS["counts"], x, allow_missing=True, mask=mask)
    assert out.observed["x"].tolist() == [[True, False, True], [True, False, True]]
    assert torch.isfinite(out.values["x"]).all()
    # an entry out of support is fine when it is masked as missing
    prepare_data(IRS["counts"], [[1, 99, 3]], allow_missing=True, mask={"x": [[True, False, True]]})


def test_a_data_variable_left_out_of_invert_is_missing_everywhere():
    data = good_labels()
    del data["c"]
    out = prepare_data(IRS["labels"], data, allow_missing=True)
    assert out.observed["c"].tolist() == [False] * 4 and "b" not in out.observed


def test_mask_mistakes():
    x = torch.ones(2, 3)
    with pytest.raises(DGMDataError, match="takes no mask"):
        prepare_data(IRS["counts"], x, mask={"x": torch.ones(2, 3, dtype=torch.bool)})
    assert "expected booleans" in error("counts", x, allow_missing=True, mask={"x": torch.ones(2, 3)})
    assert "mask for 'x' has shape (2,)" in error("counts", x, allow_missing=True,
                                                     mask={"x": torch.ones(2, dtype=torch.bool)})
    assert "did you mean 'x'" in error("counts", x, allow_missing=True,
                                        mask={"xx": torch.ones(2, 3, dtype=torch.bool)})


def test_a_partly_missing_simplex_row_is_filled_onto_the_simplex_or_refused_when_full():
    nan = float("nan")
    data = {**good_support(), "simplex": torch.tensor([[0.2, nan, nan], [0.2, 0.3, 0.5]])}
    out = prepare_data(IRS["support"], data, allow_missing=True)
    assert torch.allclose(out.values["simplex"][0], torch.tensor([0.2, 0.4, 0.4]))
    assert out.observed["simplex"][0].tolist() == [True, False, False]
    data["simplex"] = torch.tensor([[0.7, nan, 0.5], [0.2, 0.3, 0.5]])
    text = error("support", data, allow_missing=True)
    assert "row 0 is partly missing, but its observed entries sum to 1.2" in text
    assert "leaving nothing for the missing ones" in text


def test_rows_selects_values_and_masks():
    out = prepare_data(IRS["counts"], [[1, float("nan"), 3], [4, 5, 6], [7, 8, 9]], allow_missing=True)
    part = out.rows(torch.tensor([2, 0]))
    assert part.n == 2 and part.values["x"][0].tolist() == [7, 8, 9]
    assert part.observed["x"].tolist() == [[True, True, True], [True, False, True]]


def test_prepare_inputs_broadcasts_one_value_to_all_samples():
    ir = IRS["inputs"]
    out = prepare_inputs(ir, {"s": 2.0, "p": np.full(3, 0.5), "w": [1.0, 2.0, 3.0]}, 3)
    assert out["s"].tolist() == [2.0] * 3 and out["w"].shape == (3, 3)
    with pytest.raises(DGMDataError, match="no values for the input"):
        prepare_inputs(ir, {"s": 1.0}, 3)
    with pytest.raises(DGMDataError, match="has 2 rows but 3 samples"):
        prepare_inputs(ir, {"s": torch.ones(2), "p": 0.5, "w": torch.zeros(3)}, 3)
    with pytest.raises(DGMDataError, match="did you mean 'w'"):
        prepare_inputs(ir, {"s": 1.0, "p": 0.5, "ww": torch.zeros(3)}, 3)
    with pytest.raises(DGMDataError, match="input 's' \\(positive\\): row 0 holds 0"):
        prepare_inputs(ir, {"s": 0.0, "p": 0.5, "w": torch.zeros(3)}, 3)


# ---------------------------------------------------------------- every use of an integer value

USES = {m.ir.name: m for m in check_source("""
model uses {
    input n : int
    input y : int
    input j : int
    data k[2]
    data c
    let yy = y
    const mu = [1.0, 2.0, 3.0]
    c ~ Categorical(logits = zeros(3))
    k ~ Binomial(n, logits = mu[c] + mu[j] + onehot(yy, 4)[0])
}
model counts_from_data {
    data n
    data k[2]
    n ~ Poisson(3.0)
    k ~ Binomial(n, 0.5)
}
""", "uses.dgm")}


def good_uses(n=3):
    return {"n": torch.full((n,), 5), "y": torch.arange(n) % 4, "j": torch.arange(n) % 3,
            "k": torch.ones(n, 2, dtype=torch.long), "c": torch.arange(n) % 3}


def use_error(data, model="uses", **options) -> str:
    checked = USES[model]
    with pytest.raises(DGMDataError) as info:
        prepare_data(checked.ir, data, facts=checked.facts, **options)
    return str(info.value)


def test_good_data_passes_every_use():
    out = prepare_data(USES["uses"].ir, good_uses(), facts=USES["uses"].facts)
    assert out.values["y"].tolist() == [0, 1, 2]
    prepare_data(USES["uses"].ir, good_uses())  # the facts are built when not given


@pytest.mark.parametrize("value", [4, -1])
def test_onehot_takes_zero_to_k_minus_one_through_a_let(value):
    text = use_error({**good_uses(), "y": torch.tensor([0, value, 1])})
    assert f"input 'y' (int): row 1 holds {value}, but onehot(yy, 4) takes 0..3" in text
    assert "expected a whole number in 0..3 (the use at uses.dgm:11:46)" in text


def test_an_index_stays_inside_the_indexed_dimension():
    text = use_error({**good_uses(), "j": torch.tensor([0, 2, 3])})
    assert "input 'j' (int): row 2 holds 3, but it indexes a dimension of size 3 (0..2)" in text
    assert "the use at uses.dgm:11:41" in text


def test_a_categorical_label_is_checked_against_its_classes():
    assert "data variable 'c' (Categorical): row 0 holds 3, outside its support" in use_error(
        {**good_uses(), "c": torch.tensor([3, 0, 1])})


def test_binomial_counts_stay_at_most_the_total_count_of_their_row():
    k = torch.tensor([[1, 2], [0, 6], [5, 5]])
    text = use_error({**good_uses(), "k": k})
    assert ("data variable 'k' (Binomial): row 1, column 1 holds 6, more than its total_count "
            "(input 'n' holds 5 in row 1)") in text
    assert "the total_count at uses.dgm:11:18" in text
    # a count of another row's size is fine where that row allows it
    prepare_data(USES["uses"].ir, {**good_uses(), "n": torch.tensor([2, 6, 5]), "k": k})


def test_a_total_count_from_an_input_is_a_whole_number_at_least_zero():
    text = use_error({**good_uses(), "n": torch.tensor([5, -2, 5])})
    assert "input 'n' (int): row 1 holds -2, but it is the total_count of Binomial 'k'" in text


def test_a_total_count_from_other_data_is_compared_row_by_row_and_missing_entries_skipped():
    good = {"n": torch.tensor([3.0, 1.0]), "k": torch.tensor([[3.0, 0.0], [1.0, 1.0]])}
    prepare_data(USES["counts_from_data"].ir, good)
    text = use_error({**good, "k": torch.tensor([[3.0, 0.0], [2.0, 1.0]])}, model="counts_from_data")
    assert "row 1, column 0 holds 2, more than its total_count ('n' holds 1 in row 1)" in text
    prepare_data(USES["counts_from_data"].ir, {"n": torch.tensor([3.0, float("nan")]),
                                              "k": torch.tensor([[3.0, 0.0], [2.0, 1.0]])},
                 allow_missing=True)
    prepare_data(USES["counts_from_data"].ir, {"n": torch.tensor([3.0, 1.0]),
                                              "k": torch.tensor([[3.0, 0.0], [float("nan"), 1.0]])},
                 allow_missing=True)


def test_missing_entries_are_not_held_to_the_uses():
    data = {**good_uses(), "c": torch.tensor([0, 0, 1])}
    out = prepare_data(USES["uses"].ir, data, allow_missing=True,
                       mask={"c": torch.tensor([True, False, True])})
    assert out.observed["c"].tolist() == [True, False, True]


def test_prepare_inputs_checks_every_use_too():
    checked = USES["uses"]
    ok = {"n": 5, "y": 3, "j": 2}
    assert prepare_inputs(checked.ir, ok, 2, facts=checked.facts)["y"].tolist() == [3, 3]
    with pytest.raises(DGMDataError, match=r"input 'y' \(int\): row 0 holds 4, but onehot\(yy, 4\)"):
        prepare_inputs(checked.ir, {**ok, "y": 4}, 2)
    with pytest.raises(DGMDataError, match=r"input 'j' \(int\): row 1 holds 3, but it indexes"):
        prepare_inputs(checked.ir, {**ok, "j": torch.tensor([0, 3])}, 2)
    with pytest.raises(DGMDataError, match=r"input 'n' \(int\): row 0 holds -1, but it is the total_count"):
        prepare_inputs(checked.ir, {**ok, "n": -1}, 2)


# ---------------------------------------------------------------- issue 11: ranges and edges

EDGES = check_source("""
model edges {
    data g
    data b
    data d[3]
    data e
    data h
    data cb
    data x
    g ~ Gamma(2, 1)
    b ~ Beta(2, 2)
    d ~ Dirichlet(ones(3) * 2)
    e ~ Exponential(1)
    h ~ HalfNormal(1)
    cb ~ ContinuousBernoulli(logits = 0.5)
    x ~ Normal(0, 1)
}
""", "edges.dgm")[0].ir


def good_edges(n=2):
    return {"g": torch.ones(n), "b": torch.full((n,), 0.5), "d": torch.full((n, 3), 1 / 3),
            "e": torch.ones(n), "h": torch.ones(n), "cb": torch.full((n,), 0.5),
            "x": torch.zeros(n)}


def edge_error(**changed) -> str:
    with pytest.raises(DGMDataError) as info:
        prepare_data(EDGES, {**good_edges(), **changed})
    return str(info.value)


def test_values_beyond_the_model_dtype_are_refused_with_variable_row_and_column():
    text = error("inputs", {"s": np.ones(2), "p": np.full(2, 0.5), "w": np.array([[0, 0, 0], [0, 1e300, 0]]),
                            "y": np.zeros(2)})
    assert text.startswith("input 'w': row 1, column 1 holds 1e+300, beyond the range of float32"), text
    text = edge_error(x=np.array([0.0, -1e39]))
    assert "data variable 'x' (Normal): row 1 holds -1e+39, beyond the range of float32" in text
    assert "rescale" in text
    # the largest float32 passes; the model's own dtype counts when it is narrower
    prepare_data(EDGES, {**good_edges(), "x": np.array([0.0, float(torch.finfo(torch.float32).max)])})
    assert "row 1 holds 1e+300" in edge_error(x=np.array([0.0, 1e300]))
    with pytest.raises(DGMDataError, match="row 0 holds 100000, beyond the range of float16"):
        prepare_data(EDGES, {**good_edges(), "x": np.array([1e5, 0.0])}, dtype=torch.float16)
    # NaN (outside invert) and infinities were refused before; still named
    assert "row 1 is infinite" in edge_error(x=np.array([0.0, np.inf]))
    assert "row 1 is NaN" in edge_error(x=np.array([0.0, np.nan]))


def test_inputs_for_sample_are_range_checked_too():
    with pytest.raises(DGMDataError, match=r"input 's' \(positive\): row 0 holds 1e\+300, beyond the range"):
        prepare_inputs(IRS["inputs"], {"s": np.array(1e300), "p": 0.5, "w": np.zeros(3)}, 2)


def test_integers_an_int64_cannot_hold_are_refused():
    data = {**good_labels(2), "k": np.array([1, 2 ** 64 - 1], dtype=np.uint64)}
    text = error("labels", data)
    assert "input 'k' (int): row 1 holds 18446744073709551615, more than an int64 holds" in text
    data["k"] = np.array([1, 2], dtype=np.uint64)
    assert prepare_data(IRS["labels"], data).values["k"].tolist() == [1, 2]


def test_support_edges_where_the_density_is_infinite_are_refused():
    prepare_data(EDGES, good_edges())
    text = edge_error(g=torch.tensor([1.0, 0.0]))
    assert "data variable 'g' (Gamma): row 1 holds 0, outside its support" in text
    assert "a number > 0" in text and "clip" in text
    for value in (0.0, 1.0):
        text = edge_error(b=torch.tensor([0.5, value]))
        assert f"data variable 'b' (Beta): row 1 holds {value:g}, outside its support" in text
        assert "(0, 1), its ends excluded" in text
    text = edge_error(d=torch.tensor([[1 / 3] * 3, [0.0, 0.5, 0.5]]))
    assert "data variable 'd' (Dirichlet): row 1 holds [0.0, 0.5, 0.5], outside its support" in text
    assert "numbers > 0 summing to 1" in text
    # a value that float32 rounds to the edge is shown as given and as converted
    assert "row 1 holds 1e-50 (0 in float32), outside its support" in edge_error(g=np.array([1.0, 1e-50]))
    assert "row 1 holds 0.999999999 (1 in float32)" in edge_error(b=np.array([0.5, 1 - 1e-9]))
    # edges where torch's log-density is finite stay allowed
    zero_ok = {"e": torch.tensor([0.0, 1.0]), "h": torch.tensor([0.0, 1.0]),
               "cb": torch.tensor([0.0, 1.0])}
    prepare_data(EDGES, {**good_edges(), **zero_ok})


def test_refused_edges_are_where_torch_gives_an_infinite_log_density():
    import pyro.distributions as dist

    assert torch.isinf(dist.Gamma(2.0, 1.0).log_prob(torch.tensor(0.0)))
    assert torch.isinf(dist.Gamma(0.5, 1.0).log_prob(torch.tensor(0.0)))
    assert torch.isinf(dist.Beta(2.0, 0.5).log_prob(torch.tensor([0.0, 1.0]))).all()
    assert torch.isinf(dist.Dirichlet(torch.full((3,), 2.0)).log_prob(torch.tensor([0.0, 0.5, 0.5])))
    for d, value in ((dist.Exponential(2.0), 0.0), (dist.HalfNormal(1.0), 0.0), (dist.HalfCauchy(1.0), 0.0),
                     (dist.ContinuousBernoulli(logits=torch.tensor(0.3)), 1.0)):
        assert torch.isfinite(d.log_prob(torch.tensor(value)))


def test_missing_entries_of_edge_supports_get_a_placeholder_inside():
    data = {**good_edges(), "g": torch.tensor([1.0, float("nan")]), "b": torch.tensor([float("nan"), 0.5]),
            "d": torch.tensor([[float("nan")] * 3, [0.2, 0.3, 0.5]])}
    got = prepare_data(EDGES, data, allow_missing=True)
    assert got.values["g"][1] > 0 and 0 < got.values["b"][0] < 1 and (got.values["d"][0] > 0).all()


def test_positions_can_be_written_by_the_caller():
    def locate(var, index):
        return f"{var.name} at {index}"

    with pytest.raises(DGMDataError, match=r"data variable 'g' \(Gamma\): g at \(1,\) holds 0"):
        prepare_data(EDGES, {**good_edges(), "g": torch.tensor([1.0, 0.0])}, locate=locate)


# ---------------------------------------------------------------- data bigger than memory


def late_mistakes():
    """(model, data, options, what the message names): mistakes past the first rows, and
    pairs where whole-array checking reports a later row (an earlier variable or check wins)."""
    x = torch.tensor([[1, 2, 3]] * 7)
    over, nan_late = x.clone(), x.float()
    over[5, 2] = 17
    nan_late[6, 1], nan_late[1, 0] = float("nan"), 17  # NaN is checked before the support
    labels = good_labels(7)
    labels["k"] = labels["k"].clone()
    labels["k"][5] = 4
    support = {"pos": torch.ones(7), "unit": torch.full((7, 2), 0.5), "simplex": torch.full((7, 3), 1 / 3),
               "poisson": torch.ones(7)}
    support["pos"][4], support["unit"][0, 1] = -1.0, float("nan")  # pos is declared first
    partly = {**support, "pos": torch.ones(7), "unit": torch.full((7, 2), 0.5)}
    partly["simplex"] = partly["simplex"].clone()
    partly["simplex"][5, 0], partly["simplex"][5, 1] = 0.9, float("nan")  # 0.9 + 1/3 > 1
    counts = {"t": torch.full((7,), 8), "k": torch.tensor([[3, 4]] * 7)}
    counts["k"][5, 1] = 9
    return [
        ("counts", over, {}, "row 5, column 2 holds 17"),
        ("counts", nan_late, {}, "row 6, column 1 is NaN"),
        ("labels", labels, {}, "row 5 holds 4"),
        ("support", support, {}, "row 4 holds -1"),
        ("support", partly, {"allow_missing": True}, "row 5 is partly missing"),
        ("totals", counts, {}, "row 5, column 1 holds 9, more than its total_count (input 't' holds 8 in row 5)"),
    ]


@pytest.mark.parametrize("case", range(len(late_mistakes())))
def test_validation_in_chunks_reports_what_checking_whole_arrays_reports(case, monkeypatch):
    name, data, options, says = late_mistakes()[case]
    whole = error(name, data, **options)
    monkeypatch.setattr(data_module, "CHUNK_CELLS", 2)  # pieces of one or two rows
    assert error(name, data, **options) == whole
    assert says in whole


def test_rows_of_rows_select_like_indexing():
    x = torch.arange(40.0).reshape(20, 2)
    d = prepare_data(IRS["inputs"],
                     {"s": torch.ones(20), "p": torch.full((20,), 0.5), "w": torch.zeros(20, 3), "y": x[:, 0]})
    y = x[:, 0].numpy()
    as_numpy = (lambda i: i.numpy() if isinstance(i, torch.Tensor) else i)
    picks = [(slice(2, 18, 3), torch.tensor([4, 0, 2])), (torch.tensor([19, 3, 7, 7]), slice(None, None, -1)),
             (slice(None, None, -2), slice(1, 4)), (slice(5, 15), torch.tensor([True, False] * 5))]
    for outer, inner in picks:
        assert d.rows(outer).rows(inner).values["y"].tolist() == y[as_numpy(outer)][as_numpy(inner)].tolist()


def test_a_large_selection_is_converted_in_pieces_to_the_same_values(monkeypatch):
    x = torch.tensor(np.random.default_rng(0).integers(0, 17, size=(50, 3)))
    expected = prepare_data(IRS["counts"], x).rows(torch.arange(49, -1, -1)).values["x"]
    monkeypatch.setattr(data_module, "CHUNK_CELLS", 7)
    assert torch.equal(prepare_data(IRS["counts"], x).rows(torch.arange(49, -1, -1)).values["x"], expected)


class Rows(torch.utils.data.Dataset):
    """A map-style torch Dataset of dict rows, as the docs describe."""

    def __init__(self, columns):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i):
        return {name: column[i] for name, column in self.columns.items()}


def test_a_torch_dataset_of_dict_rows_is_checked_like_arrays():
    labels = good_labels(5)
    out = prepare_data(IRS["labels"], Rows(labels))
    assert out.n == 5 and all(torch.equal(out.values[k], prepare_data(IRS["labels"], labels).values[k])
                              for k in labels)
    numbers = {"u": [[0.0, 1.0]] * 3, "k": [1, 2, 3], "c": [0, 1, 2], "b": [1.0, 0.0, 1.0]}
    assert prepare_data(IRS["labels"], Rows(numbers)).values["k"].tolist() == [1, 2, 3]
    bad = {**labels, "k": torch.tensor([0, 1, 2, 3, 9])}
    assert "input 'k' (int): row 4 holds 9, but onehot(k, 4) takes 0..3" in error("labels", Rows(bad))
    assert "no values for 'b'" in error("labels", Rows({k: v for k, v in labels.items() if k != "b"}))
    missing = torch.tensor([[1.0, float("nan"), 3.0], [4.0, 5.0, 6.0]])
    assert "row 0, column 1 is NaN" in error("counts", Rows({"x": missing}))
    assert prepare_data(IRS["counts"], Rows({"x": missing}), allow_missing=True).observed["x"].tolist() == \
        [[True, False, True], [True, True, True]]


def test_a_torch_dataset_that_breaks_the_protocol_is_a_data_error():
    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3)

    class Endless(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return {"x": torch.zeros(3)}

    assert "row 0 is a Tensor, not a dict" in error("counts", Bare())
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([{"x": torch.zeros(3)}])

        def __len__(self):
            return 1

    assert "has no len()" in error("counts", Endless())
    assert "an IterableDataset has no rows to pick by number" in error("counts", Stream())
    assert "has no rows" in error("counts", Rows({"x": torch.zeros(0, 3)}))
    ragged = Rows({"x": [torch.zeros(3), torch.zeros(3), torch.zeros(4)]})
    assert "row 2: 'x' has shape (4,), but row 0's has (3,)" in error("counts", ragged)


MEAN = """
model mean {
    param  mu[3]
    data   x[3]
    latent z[3]
    z ~ Normal(0, 1)
    x ~ Normal(z + mu, 0.5)
}
"""


def test_a_memmap_and_a_torch_dataset_fit_and_score_like_the_array(tmp_path):
    x = np.random.default_rng(1).normal(size=(60, 3)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    results = []
    for data in (torch.from_numpy(x), mapped, Rows({"x": torch.from_numpy(x)})):
        m = dgmlang.compile(MEAN)
        m.fit(data, steps=12, batch_size=16, seed=3, progress=False)
        state = {k: v.clone() for k, v in {**m.model.state_dict(), **m.guide.state_dict()}.items()}
        scores = m.log_prob(data, num_samples=8, seed=4)
        draws = m.invert(data, num_samples=3, seed=5)["z"]
        results.append((state, scores, draws))
    for state, scores, draws in results[1:]:
        assert all(torch.equal(state[k], results[0][0][k]) for k in state)
        assert torch.equal(scores, results[0][1]) and torch.equal(draws, results[0][2])
