"""Data files for the `dgm` command: formats, column names, built-in data sets, masks and the
errors a user gets for a bad file (each naming the file and what was expected)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from dgmlang.datafiles import (
    column_names, read_data, read_mask, read_table, split_missing, validate, write_csv,
)
from dgmlang.errors import DGMDataError, DGMUsageError
from dgmlang.frontend import check_source


def ir_of(text: str):
    (checked,) = check_source(text)
    return checked.ir


CVAE = ir_of("""
model cvae {
    input  y : int
    data   x[4]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, onehot(y, 10), hidden = [8]))
}""")

IMAGE = ir_of("""
model image {
    data   img[2, 3]
    latent z
    z ~ Normal(0, 1)
    img ~ Normal(z, 1)
}""")

GMM = ir_of("""
model labelled {
    data x[2]
    data c
    param mu[3, 2]
    c ~ Categorical(logits = zeros(3))
    x ~ Normal(mu[c], 0.5)
}""")


def write(path, text: str):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- formats


def test_npz_holds_one_array_per_variable_and_extra_arrays_are_ignored(tmp_path):
    x = np.arange(8).reshape(2, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2]), ids=np.array([7, 8]))
    arrays = read_data(tmp_path / "d.npz", CVAE)
    assert sorted(arrays) == ["x", "y"]
    np.testing.assert_array_equal(arrays["x"], x)


def test_npy_fills_the_single_variable(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2, 3)))
    assert read_data(tmp_path / "x.npy", IMAGE)["img"].shape == (3, 2, 3)


def test_npy_for_a_model_with_two_variables_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    with pytest.raises(DGMDataError, match=r"x\.npy: a \.npy file holds one array, but the model needs 'y', 'x'"):
        read_data(tmp_path / "x.npy", CVAE)


def test_csv_columns_are_named_like_indexing_and_labels_become_integers(tmp_path):
    write(tmp_path / "d.csv", "x[0],x[1],x[2],x[3],y\n1,2,3,4,5\n0,0,16,1,9\n")
    arrays = read_data(tmp_path / "d.csv", CVAE)
    np.testing.assert_array_equal(arrays["x"], [[1, 2, 3, 4], [0, 0, 16, 1]])
    assert arrays["y"].dtype == np.int64 and arrays["y"].tolist() == [5, 9]


def test_csv_matrix_columns_are_row_major_and_spaces_in_brackets_are_ignored(tmp_path):
    header = ",".join(f'"img[{i}, {j}]"' if i else f"img[{i}][{j}]" for i in range(2) for j in range(3))
    write(tmp_path / "d.csv", header + "\n" + ",".join(map(str, range(6))) + "\n")
    np.testing.assert_array_equal(read_data(tmp_path / "d.csv", IMAGE)["img"], [[[0, 1, 2], [3, 4, 5]]])


def test_column_names_round_trip_through_write_csv(tmp_path):
    img = np.random.default_rng(0).normal(size=(3, 2, 3))
    write_csv(tmp_path / "out.csv", {"img": img}, {"img": (2, 3)})
    assert read_table(tmp_path / "out.csv").arrays.keys() == set(column_names("img", (2, 3)))
    np.testing.assert_allclose(read_data(tmp_path / "out.csv", IMAGE)["img"], img, rtol=1e-5)


def test_a_flat_row_of_the_right_size_is_reshaped_row_major(tmp_path):
    np.savez(tmp_path / "d.npz", img=np.arange(12).reshape(2, 6))
    np.testing.assert_array_equal(read_data(tmp_path / "d.npz", IMAGE)["img"][1], [[6, 7, 8], [9, 10, 11]])


def test_digits_data_set_and_its_splits():
    vae = ir_of("model vae { data x[8, 8]\n latent z\n z ~ Normal(0, 1)\n x ~ Binomial(16, logits = z) }")
    train = read_data("digits", vae)
    assert sorted(train) == ["x"] and train["x"].shape == (1437, 8, 8)
    assert read_table("digits:test").arrays["x"].shape == (360, 64)
    with pytest.raises(DGMUsageError, match="no split 'valid'"):
        read_table("digits:valid")


# ---------------------------------------------------------------- bad files


def test_missing_column_names_the_file_the_column_and_a_close_match(tmp_path):
    write(tmp_path / "d.csv", "x[0],x[1],x[2],x[3],Y\n1,2,3,4,5\n")
    with pytest.raises(DGMDataError) as err:
        read_data(tmp_path / "d.csv", CVAE)
    assert f"{tmp_path / 'd.csv'} has no column 'y' for input y" in str(err.value)
    assert "did you mean 'Y'?" in str(err.value)


def test_a_vector_given_as_one_column_gets_a_hint_with_the_column_names(tmp_path):
    write(tmp_path / "d.csv", "x,y\n1,2\n")
    with pytest.raises(DGMDataError, match=r"has no column 'x\[0\]'.*\n.*one column per entry: x\[0\], x\[1\], x\[2\], x\[3\]"):
        read_data(tmp_path / "d.csv", CVAE)


def test_missing_array_in_npz_lists_what_the_file_holds(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.ones((2, 4)), y=np.array([1, 2]))
    with pytest.raises(DGMDataError, match=r"d\.npz has no array 'x' \(data x\[4\]\); it holds 'images', 'y'"):
        read_data(tmp_path / "d.npz", CVAE)


def test_wrong_shape_says_what_was_expected(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((2, 5)), y=np.array([1, 2]))
    with pytest.raises(DGMDataError, match=r"d\.npz: 'x' has shape \(2, 5\); expected \(n, 4\) for data x\[4\]"):
        read_data(tmp_path / "d.npz", CVAE)


def test_rows_that_differ_between_variables_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((2, 4)), y=np.array([1, 2, 3]))
    with pytest.raises(DGMDataError, match="different numbers of rows: y 3, x 2"):
        read_data(tmp_path / "d.npz", CVAE)


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("1,2,3,4,5\n", "the first row holds numbers, not column names"),
    ("x[0],x[1],x[2],x[3],y\n1,2,3\n", "line 2 has 3 cells but the header has 5"),
    ("x[0],x[1],x[2],x[3],y\n1,2,three,4,5\n", "row 0 \\(line 2\\), column 'x\\[2\\]' holds 'three', not a number"),
    ("x[0],x[0],x[2],x[3],y\n", "the column 'x\\[0\\]' appears twice"),
])
def test_malformed_csv(tmp_path, content, message):
    write(tmp_path / "d.csv", content)
    with pytest.raises(DGMDataError, match=message):
        read_data(tmp_path / "d.csv", CVAE)


def test_nan_is_refused_for_fit_with_its_row_line_and_column(tmp_path):
    write(tmp_path / "d.csv", "x[0],x[1],x[2],x[3],y\n1,2,3,4,5\n1,,3,4,5\n")
    with pytest.raises(DGMDataError, match=r"d\.csv: row 1 \(line 3\), column 'x\[1\]' is empty \(a missing value\)"):
        read_data(tmp_path / "d.csv", CVAE)


def test_nan_marks_missing_data_in_invert_but_never_an_input(tmp_path):
    write(tmp_path / "d.csv", "x[0],x[1],x[2],x[3],y\n1,NA,3,4,5\n")
    assert np.isnan(read_data(tmp_path / "d.csv", CVAE, allow_missing=True)["x"][0, 1])
    write(tmp_path / "e.csv", "x[0],x[1],x[2],x[3],y\n1,2,3,4,\n")
    with pytest.raises(DGMDataError, match="an input is never missing"):
        read_data(tmp_path / "e.csv", CVAE, allow_missing=True)


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DGMDataError, match=r"bad\.npz is not a readable \.npz file \(it does not start like one\)"):
        read_data(tmp_path / "bad.npz", CVAE)
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(DGMDataError, match=r"cut\.npz is not a readable \.npz file"):
        read_data(tmp_path / "cut.npz", CVAE)
    with pytest.raises(DGMUsageError, match="no such data file"):
        read_data(tmp_path / "absent.npz", CVAE)
    write(tmp_path / "d.txt", "1 2 3")
    with pytest.raises(DGMUsageError, match="cannot read data from a '.txt' file"):
        read_data(tmp_path / "d.txt", CVAE)


def test_pickled_objects_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DGMDataError, match="holds Python objects"):
        read_data(tmp_path / "obj.npy", IMAGE)
    (tmp_path / "p.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DGMDataError, match="not a readable .npy file"):
        read_data(tmp_path / "p.npy", IMAGE)


def test_validate_runs_the_model_checks_and_names_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([[1, 2, 3, 17]]), y=np.array([1]))
    arrays = read_data(tmp_path / "d.npz", CVAE)
    with pytest.raises(DGMDataError) as err:
        validate(CVAE, arrays, str(tmp_path / "d.npz"), purpose="fit")
    assert str(err.value).startswith(f"{tmp_path / 'd.npz'}: data variable 'x' (Binomial): row 0, column 3 holds 17")
    assert "0..16" in str(err.value)


# ---------------------------------------------------------------- masks and missing labels


def test_masks_in_every_format(tmp_path):
    shapes = {"x": (2, 4)}
    np.savez(tmp_path / "m.npz", x=np.array([[True, False, True, True], [False] * 4]))
    np.save(tmp_path / "m.npy", np.array([[1, 0, 1, 1], [0, 0, 0, 0]]))
    write(tmp_path / "m.csv", "x[0],x[1],x[2],x[3]\n1,0,1,1\n0,0,0,0\n")
    expected = [[True, False, True, True], [False] * 4]
    for name in ("m.npz", "m.npy", "m.csv"):
        mask = read_mask(tmp_path / name, CVAE, shapes)["x"]
        assert mask.dtype == bool and mask.tolist() == expected, name


def test_bad_masks(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[1, 0, 2, 1]]))
    with pytest.raises(DGMDataError, match=r"holds values other than 0/1 \(row 0, column 'x\[2\]' holds 2\)"):
        read_mask(tmp_path / "m.npy", CVAE, {"x": (1, 4)})
    np.save(tmp_path / "n.npy", np.ones((3, 4), dtype=bool))
    with pytest.raises(DGMDataError, match="the mask for 'x' has shape \\(3, 4\\) but the data has \\(1, 4\\)"):
        read_mask(tmp_path / "n.npy", CVAE, {"x": (1, 4)})
    np.savez(tmp_path / "o.npz", other=np.ones((1, 4), dtype=bool))
    with pytest.raises(DGMDataError, match="the mask holds 'other', but the model has no data variable 'other'"):
        read_mask(tmp_path / "o.npz", CVAE, {"x": (1, 4)})
    np.savez(tmp_path / "y.npz", x=np.ones((1, 4), dtype=bool), y=np.ones(1, dtype=bool))
    with pytest.raises(DGMDataError, match="'y' is an input, and inputs are never missing"):
        read_mask(tmp_path / "y.npz", CVAE, {"x": (1, 4)})


def test_missing_class_labels_become_a_mask(tmp_path):
    write(tmp_path / "d.csv", "x[0],x[1],c\n0.5,1,2\n0,0,\n")
    arrays = read_data(tmp_path / "d.csv", GMM, allow_missing=True)
    values, masks = split_missing(GMM, arrays)
    assert values["c"].dtype == np.int64 and values["c"].tolist() == [2, 0]
    assert masks["c"].tolist() == [True, False]
    validate(GMM, values, "d.csv", purpose="invert", allow_missing=True, mask=masks)


# ---------------------------------------------------------------- issue 11: BOMs, ranges, edges

EDGES = ir_of("""
model edges {
    input  n : int
    data   k[2]
    data   g
    data   p[3]
    k ~ Binomial(n, 0.5)
    g ~ Gamma(2, 1)
    p ~ Dirichlet(ones(3) * 2)
}""")
EDGE_HEADER = "n,k[0],k[1],g,p[0],p[1],p[2]\n"
EDGE_ROW = "3,1,2,1.5,0.2,0.3,0.5\n"


def read_and_validate(path, ir=EDGES, **options):
    arrays = read_data(path, ir, **options)
    validate(ir, arrays, str(path), purpose="fit")
    return arrays


def test_a_utf8_bom_before_the_header_is_not_part_of_a_name(tmp_path):
    (tmp_path / "d.csv").write_bytes(("\ufeff" + EDGE_HEADER + EDGE_ROW).encode("utf-8"))
    arrays = read_and_validate(tmp_path / "d.csv")
    assert arrays["n"].tolist() == [3] and arrays["g"].tolist() == [1.5]
    (tmp_path / "e.csv").write_bytes(("\ufeffN" + EDGE_HEADER[1:] + EDGE_ROW).encode("utf-8"))
    with pytest.raises(DGMDataError) as err:
        read_data(tmp_path / "e.csv", EDGES)
    assert "\ufeff" not in str(err.value) and "did you mean 'N'?" in str(err.value)


@pytest.mark.parametrize("cell, says", [
    ("inf", "holds inf, not a finite number"),
    ("-inf", "holds -inf, not a finite number"),
    ("1e19", "holds 1e+19, beyond the whole numbers an int64 holds"),
    ("-9.3e18", "holds -9.3e+18, beyond the whole numbers an int64 holds"),
    ("2.5", "holds 2.5, not a whole number"),
])
def test_an_int_column_that_int64_cannot_hold_is_refused_not_wrapped(tmp_path, cell, says):
    write(tmp_path / "d.csv", EDGE_HEADER + EDGE_ROW + cell + EDGE_ROW[1:])
    with pytest.raises(DGMDataError) as err:
        read_data(tmp_path / "d.csv", EDGES)
    assert str(err.value).startswith(f"{tmp_path / 'd.csv'}: row 1 (line 3), column 'n' {says}"), str(err.value)


def test_the_largest_int64_column_value_is_kept_exactly(tmp_path):
    write(tmp_path / "d.csv", "n,k[0],k[1],g,p[0],p[1],p[2]\n4611686018427387904,1,2,1.5,0.2,0.3,0.5\n")
    assert read_data(tmp_path / "d.csv", EDGES)["n"].tolist() == [2 ** 62]


def test_infinite_cells_are_refused_with_file_row_and_column(tmp_path):
    write(tmp_path / "d.csv", EDGE_HEADER + EDGE_ROW + "3,1,2,Infinity,0.2,0.3,0.5\n")
    with pytest.raises(DGMDataError, match=r"d.csv: row 1 \(line 3\), column 'g' holds inf, not a finite"):
        read_data(tmp_path / "d.csv", EDGES)
    np.savez(tmp_path / "d.npz", n=np.array([3]), k=np.array([[1, 2]]), g=np.array([1.5]),
             p=np.array([[0.2, np.inf, 0.5]]))
    with pytest.raises(DGMDataError, match=r"d.npz: row 0, column 'p\[1\]' holds inf"):
        read_data(tmp_path / "d.npz", EDGES)


@pytest.mark.parametrize("row, says", [
    ("3,1,2,1e300,0.2,0.3,0.5", "data variable 'g' (Gamma): row 1 (line 3), column 'g' holds 1e+300, "
                                 "beyond the range of float32"),
    ("3,1,2,0,0.2,0.3,0.5", "data variable 'g' (Gamma): row 1 (line 3), column 'g' holds 0, outside its support"),
    ("3,1,2,1.5,0,0.5,0.5", "data variable 'p' (Dirichlet): row 1 (line 3), columns 'p[0]' to 'p[2]' "
                             "holds [0.0, 0.5, 0.5], outside its support"),
    ("2,1,3,1.5,0.2,0.3,0.5", "data variable 'k' (Binomial): row 1 (line 3), column 'k[1]' holds 3, "
                               "more than its total_count (input 'n' holds 2 in row 1)"),
])
def test_validate_names_the_csv_file_line_and_column(tmp_path, row, says):
    write(tmp_path / "d.csv", EDGE_HEADER + EDGE_ROW + row + "\n")
    with pytest.raises(DGMDataError) as err:
        read_and_validate(tmp_path / "d.csv")
    assert str(err.value).startswith(f"{tmp_path / 'd.csv'}: {says}"), str(err.value)


def test_validate_checks_against_the_model_dtype(tmp_path):
    import torch

    np.savez(tmp_path / "d.npz", n=np.array([3]), k=np.array([[1, 2]]), g=np.array([1e5]),
             p=np.array([[0.2, 0.3, 0.5]]))
    arrays = read_data(tmp_path / "d.npz", EDGES)
    validate(EDGES, arrays, "d.npz", purpose="fit")
    with pytest.raises(DGMDataError, match=r"^d.npz: data variable 'g' \(Gamma\): row 0 holds 100000, beyond the range of float16"):
        validate(EDGES, arrays, "d.npz", purpose="fit", dtype=torch.float16)


def test_a_bad_mask_cell_is_named_by_file_line_and_column(tmp_path):
    write(tmp_path / "m.csv", "x[0],x[1],x[2],x[3]\n1,0,1,1\n0,0,0.5,0\n")
    with pytest.raises(DGMDataError) as err:
        read_mask(tmp_path / "m.csv", CVAE, {"x": (2, 4)})
    assert str(err.value).startswith(f"{tmp_path / 'm.csv'}: the mask for 'x' holds values other than 0/1 "
                                     "(row 1 (line 3), column 'x[2]' holds 0.5)"), str(err.value)


def test_inputs_read_for_sample_are_validated_with_the_file_named(tmp_path):
    from dgmlang.datafiles import validate_inputs

    write(tmp_path / "in.csv", "n\n3\n-1\n")
    arrays = read_data(tmp_path / "in.csv", EDGES, names=["n"])
    with pytest.raises(DGMDataError) as err:
        validate_inputs(EDGES, arrays, str(tmp_path / "in.csv"), 2)
    assert str(err.value).startswith(f"{tmp_path / 'in.csv'}: input 'n' (int): row 1 (line 3), column 'n' holds -1, "
                                     "but it is the total_count"), str(err.value)
    write(tmp_path / "ok.csv", "n\n3\n2\n")
    validate_inputs(EDGES, read_data(tmp_path / "ok.csv", EDGES, names=["n"]), "ok.csv", 2)


def test_a_file_name_too_long_for_the_system_is_a_usage_error(tmp_path):
    long = tmp_path / ("e" * 300 + ".csv")
    with pytest.raises(DGMUsageError, match=r"no such data file: .*\.\.\. \(\d+ characters\) \(File name too long\)"):
        read_data(long, IMAGE)
    with pytest.raises(DGMUsageError, match="File name too long"):
        read_mask(long, CVAE, {"x": (1, 4)})


@pytest.mark.parametrize("content, says", [
    (b'x[0],x[1],x[2],x[3],y\n"' + b"1" * 200_000 + b'",1,1,1,1\n', "field larger than field limit"),
    ("x[0],x[1],x[2],x[3],y\n1,1,\xe9,1,1\n".encode("latin-1"), "'utf-8' codec can't decode"),
    ("x[0],x[1],x[2],x[3],y\n1,1,1,1,1\n".encode("utf-16"), "'utf-8' codec can't decode"),
])
def test_unreadable_csv_text_is_a_data_error(tmp_path, content, says):
    (tmp_path / "d.csv").write_bytes(content)
    with pytest.raises(DGMDataError, match=f"d.csv is not a readable .csv file .*{says}"):
        read_data(tmp_path / "d.csv", CVAE)


def test_an_npz_entry_of_an_unknown_compression_method_is_a_data_error(tmp_path):
    # zipfile reads the archive's directory, then refuses the entry's method when numpy
    # reads the array (NotImplementedError): a damaged file, not a traceback
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((3, 4)))
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = raw.find(signature)
        raw[at + offset:at + offset + 2] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(DGMDataError, match="is not a readable .npz file"):
        read_table(path)


# ---------------------------------------------------------------- data bigger than memory


def test_a_npy_file_is_memory_mapped_and_stays_mapped_through_validation(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((5, 6), dtype=np.float32))  # reshaped to img[2, 3]
    arrays = read_data(tmp_path / "x.npy", IMAGE)
    assert isinstance(arrays["img"], np.memmap) and arrays["img"].shape == (5, 2, 3)
    validate(IMAGE, arrays, str(tmp_path / "x.npy"), purpose="fit")
    assert isinstance(arrays["img"], np.memmap)


def test_a_file_is_checked_in_chunks_with_rows_counted_in_the_whole_file(tmp_path, monkeypatch):
    import dgmlang.data

    monkeypatch.setattr(dgmlang.data, "CHUNK_CELLS", 6)  # one row of img[2, 3] at a time
    img = np.zeros((6, 2, 3))
    img[4, 1, 2], img[2, 0, 0] = np.nan, np.inf  # the NaN is reported: it is checked first
    np.save(tmp_path / "x.npy", img)
    with pytest.raises(DGMDataError, match=r"x\.npy: row 4, column 'img\[1\]\[2\]' is empty"):
        read_data(tmp_path / "x.npy", IMAGE)
    img[4, 1, 2] = 0
    np.save(tmp_path / "x.npy", img)
    with pytest.raises(DGMDataError, match=r"x\.npy: row 2, column 'img\[0\]\[0\]' holds inf"):
        read_data(tmp_path / "x.npy", IMAGE)
    labels = np.zeros((6, 4))
    labels[3, 1] = 17
    np.savez(tmp_path / "c.npz", x=labels, y=np.arange(6))
    with pytest.raises(DGMDataError, match=r"c\.npz: data variable 'x' \(Binomial\): row 3, column 1 holds 17"):
        validate(CVAE, read_data(tmp_path / "c.npz", CVAE), str(tmp_path / "c.npz"), purpose="fit")


def test_uncompressed_npz_arrays_are_memory_mapped_and_compressed_ones_read(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([1, 2, 3])
    np.savez(tmp_path / "d.npz", x=x, y=y, extra=np.asfortranarray(np.ones((2, 3))))
    table = read_table(tmp_path / "d.npz")
    assert all(isinstance(a, np.memmap) for a in table.arrays.values())
    assert table.arrays["x"].tolist() == x.tolist() and table.arrays["y"].tolist() == y.tolist()
    assert table.arrays["extra"].tolist() == np.ones((2, 3)).tolist()
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    arrays = read_data(tmp_path / "c.npz", CVAE)
    assert not isinstance(arrays["x"], np.memmap) and arrays["x"].tolist() == x.tolist()
