"""Data files for the `dgm` command: .npz, .npy, .csv and the built-in data set `digits`.

`read_data(spec, ir)` turns what a user names on the command line into a dict of numpy
arrays keyed by variable name, each shaped ``(n, *shape)``, ready for `fit`, `invert`,
`log_prob` or `sample`'s inputs. Formats:

* ``.npz`` — one array per variable, under the variable's name (``np.savez(f, x=x, y=y)``);
  arrays stored uncompressed (`np.savez`) are memory-mapped, compressed ones read whole;
* ``.npy`` — one array, for a model with a single variable to fill (one `data`, no `input`),
  memory-mapped: its rows are read as they are used;
* ``.csv`` — a header row, then one row per data point. A scalar variable ``y`` is the
  column ``y``; a vector ``x[3]`` the columns ``x[0]``, ``x[1]``, ``x[2]``; an array
  ``img[2, 2]`` the columns ``img[0][0]``, ``img[0][1]``, ``img[1][0]``, ``img[1][1]``
  (row-major; ``img[0, 1]`` in a quoted header is read the same). An empty cell,
  ``nan`` or ``NA`` is a missing value (allowed in the `data` variables given to `dgm fit`,
  `dgm score` and `dgm invert`, with ``allow_missing``);
* ``digits`` or ``digits:train`` / ``digits:test`` — `dgmlang.datasets.digits()`, with the
  images as ``x`` (n, 64) and the labels as ``y``.

Columns or arrays the model does not use are ignored (an id column, the labels of `digits`
for a model without ``y``). A row of the right size in another layout is reshaped row-major
(the digits' ``(n, 64)`` fills ``x[8, 8]``). Mask files (`read_mask`) take the same formats and
hold booleans or 0/1, True where a value is observed. Anything that does not fit is a
`DGMDataError` whose message starts with the file's name and says what was expected.

>>> import numpy as np, tempfile, os
>>> from dgmlang.ir import ModelIR, Variable
>>> ir = ModelIR("m", (Variable("x", "data", (2,)), Variable("y", "input", (), type="int")), ())
>>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
>>> _ = Path(path).write_text("y,x[0],x[1]\\n3,0.5,1.5\\n4,2.5,\\n")
>>> arrays = read_data(path, ir, allow_missing=True)
>>> arrays["x"], arrays["y"]
(array([[0.5, 1.5],
       [2.5, nan]]), array([3, 4]))
>>> read_data(path, ir, names=["x"]).keys()
Traceback (most recent call last):
...
dgmlang.errors.DGMDataError: ...d.csv: row 1 (line 3), column 'x[1]' is empty (a missing value)
    hint: missing values are allowed only in data variables, in the data given to dgm fit, score and invert
"""
from __future__ import annotations

import csv
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from dgmlang.errors import DGMDataError, DGMUsageError, did_you_mean
from dgmlang.ir import ModelIR, Variable

#: Data set names `read_data` understands besides file paths, with their splits.
BUILTIN_DATASETS = {"digits": ("train", "test")}
FORMATS = (".npz", ".npy", ".csv")
MISSING_CELLS = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "na"})
#: The hint for a missing value where none is allowed (`read_data`'s `missing_hint` default).
MISSING_HINT = "missing values are allowed only in data variables, in the data given to dgm fit, score and invert"


@dataclass(frozen=True)
class Table:
    """What a data file holds before it is matched to a model: named arrays, where they
    came from (`source`, shown in messages) and whether names are column-wise (CSV)."""

    source: str
    arrays: Mapping[str, np.ndarray]
    columns: bool = False


# ---------------------------------------------------------------- column names


def column_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """The CSV columns of a variable, row-major (one bracket per dimension, so no column
    name holds a comma).

    >>> column_names("y", ())
    ['y']
    >>> column_names("x", (3,))
    ['x[0]', 'x[1]', 'x[2]']
    >>> column_names("img", (2, 2))
    ['img[0][0]', 'img[0][1]', 'img[1][0]', 'img[1][1]']
    """
    if not shape:
        return [name]
    return [name + "".join(f"[{i}]" for i in index) for index in np.ndindex(*shape)]


_COLUMN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*((?:\[[0-9,\s]*\]\s*)*)$")


def _normal_column(header: str) -> str:
    """A header in the canonical form: ``x[0, 1]`` (quoted in the file) and ``x[0] [1]``
    become ``x[0][1]``.

    >>> _normal_column(" img[0, 1]"), _normal_column("img[0][1]"), _normal_column("y")
    ('img[0][1]', 'img[0][1]', 'y')
    """
    match = _COLUMN.match(header)
    if not match:
        return header.strip()
    name, brackets = match.groups()
    return name + "".join(f"[{int(i)}]" for i in re.findall(r"[0-9]+", brackets))


# ---------------------------------------------------------------- reading files


def read_table(spec: str | Path) -> Table:
    """The arrays of one file or built-in data set, not yet matched to a model."""
    text = str(spec)
    path = Path(text)
    dataset, _, split = text.partition(":")
    try:
        path.exists()
    except OSError as err:  # a name over 255 bytes, ...: ENAMETOOLONG is not "absent" to exists()
        shown = text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"
        raise DGMUsageError(f"no such data file: {shown} ({err.strerror or err})",
                            hint="check the path") from None
    if not path.exists() and dataset in BUILTIN_DATASETS:
        return _builtin(dataset, split or "train", text)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        if not path.exists():
            raise DGMUsageError(
                f"no such data file: {text}",
                hint="give a .npz, .npy or .csv file, or a built-in data set: "
                     + ", ".join(f"{d} ({', '.join(f'{d}:{s}' for s in splits)})"
                                 for d, splits in BUILTIN_DATASETS.items()),
            )
        raise DGMUsageError(f"{text}: cannot read data from a '{suffix or path.name}' file",
                            hint="use a .npz, .npy or .csv file")
    if not path.is_file():
        raise DGMUsageError(f"no such data file: {text}" if not path.exists() else f"{text} is not a file",
                            hint="check the path")
    _check_magic(path, suffix)
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".npy":  # mapped, not read: the rows are read as training asks for them
            return Table(text, {"": np.load(path, mmap_mode="r", allow_pickle=False)})
        with path.open("rb") as file:  # our handle: numpy leaks its own on a broken zip
            with np.load(file, allow_pickle=False) as archive:
                arrays = {key: _mapped_member(path, archive.zip, key) for key in archive.files}
                return Table(text, {key: archive[key] if array is None else array
                                    for key, array in arrays.items()})
    except DGMDataError:
        raise
    except ValueError as err:
        if any(says in str(err) for says in ("allow_pickle", "Object arrays", "Python objects")):
            raise DGMDataError(f"{text} holds Python objects, not numbers",
                               hint="save plain numeric arrays (refusing to unpickle)") from None
        raise DGMDataError(f"{text} is not a readable {suffix} file ({err})") from None
    except UnicodeDecodeError as err:
        raise DGMDataError(f"{text} is not a readable {suffix} file ({err})",
                           hint="save it as UTF-8 text") from None
    except (OSError, EOFError, zipfile.BadZipFile, csv.Error, NotImplementedError) as err:
        # csv: a cell over 128 KiB; NotImplementedError: a zip entry of an unknown compression
        raise DGMDataError(f"{text} is not a readable {suffix} file ({err})".splitlines()[0]) from None


def _mapped_member(path: Path, archive: zipfile.ZipFile, key: str) -> np.memmap | None:
    """The array `key` of an .npz file memory-mapped where it lies in the file, when it is
    stored uncompressed (`np.savez` stores them so); None when it must be read whole (a
    compressed member from `np.savez_compressed`, a header numpy's readers would refuse, an
    empty array), and `np.load` reads it, with its own errors."""
    names = archive.namelist()
    member = key + ".npy" if key + ".npy" in names else key
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # 0x1: encrypted
        return None
    with path.open("rb") as file:
        file.seek(info.header_offset)
        local = file.read(30)  # the member's local header: its name and extra field follow
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        file.seek(start)
        try:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return None
            shape, fortran_order, dtype = read_header(file)
        except ValueError:
            return None
        offset = file.tell()
    size = dtype.itemsize * math.prod(shape)
    if dtype.hasobject or size == 0 or offset - start + size > info.file_size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")


def _check_magic(path: Path, suffix: str) -> None:
    """Refuse a .npy/.npz file that does not start like one (numpy would try to unpickle it)."""
    expected = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04"}.get(suffix)
    if expected is None:
        return
    try:
        with path.open("rb") as file:
            start = file.read(len(expected))
    except OSError as err:
        raise DGMDataError(f"{path} cannot be read ({err.strerror})") from None
    if start != expected:
        how = "np.save(file, array)" if suffix == ".npy" else "np.savez(file, name=array, ...)"
        raise DGMDataError(f"{path} is not a readable {suffix} file (it does not start like one)",
                           hint=f"write it with {how}")


def _builtin(dataset: str, split: str, text: str) -> Table:
    splits = BUILTIN_DATASETS[dataset]
    if split not in splits:
        raise DGMUsageError(f"{text}: the data set '{dataset}' has no split '{split}'",
                            hint="splits: " + ", ".join(f"{dataset}:{s}" for s in splits))
    from dgmlang.datasets import digits

    arrays = {name: tensor.numpy() for name, tensor in digits().as_dict(split).items()}
    return Table(text, arrays)


def _read_csv(path: Path) -> Table:
    with path.open(newline="", encoding="utf-8-sig") as file:  # a leading BOM is not a name
        rows = list(csv.reader(file))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise DGMDataError(f"{path}: the file is empty", hint="the first row names the columns")
    header = [_normal_column(h) for h in rows[0]]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise DGMDataError(f"{path}: the column '{h}' appears twice in the header")
        seen.add(h)
    body = rows[1:]
    if any(_is_number(h) for h in header if h):
        raise DGMDataError(f"{path}: the first row holds numbers, not column names",
                           hint="start the file with a header row naming the columns (x[0],x[1],... or y)")
    values = np.empty((len(body), len(header)))
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DGMDataError(f"{path}: line {r} has {len(row)} cells but the header has {len(header)}")
        for c, cell in enumerate(row):
            cell = cell.strip()
            if cell in MISSING_CELLS:
                values[r - 2, c] = math.nan
                continue
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise DGMDataError(f"{path}: row {r - 2} (line {r}), column '{header[c]}' holds {cell!r}, "
                                   f"not a number") from None
    return Table(str(path), {h: values[:, i] for i, h in enumerate(header)}, columns=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- matching to a model


def read_data(spec: str | Path, ir: ModelIR, *, names: Iterable[str] | None = None,
              optional: Iterable[str] = (), allow_missing: bool = False,
              missing_hint: str = MISSING_HINT) -> dict[str, np.ndarray]:
    """The arrays `spec` holds for the model's variables `names` (default: every `data` and
    `input` variable), each ``(n, *shape)``; variables in `optional` may be absent. NaN
    (an empty CSV cell) is refused unless `allow_missing`, and then only in `data` variables;
    `missing_hint` is the refusal's hint for a `data` variable (an input is never missing).
    """
    table = read_table(spec)
    wanted = list(names) if names is not None else ir.names("data", "input")
    return _match(table, ir, wanted, set(optional), allow_missing=allow_missing, missing_hint=missing_hint)


def _match(table: Table, ir: ModelIR, wanted: list[str], optional: set[str], *,
           allow_missing: bool, missing_hint: str = MISSING_HINT) -> dict[str, np.ndarray]:
    if not table.columns and "" in table.arrays:  # a bare .npy array
        required = [n for n in wanted if n not in optional]
        target = required if len(required) == 1 else (wanted if len(wanted) == 1 else None)
        if target is None:
            raise DGMDataError(
                f"{table.source}: a .npy file holds one array, but the model needs "
                f"{', '.join(map(repr, required or wanted))}",
                hint="save several variables with np.savez(file, name=array, ...) or a .csv file",
            )
        arrays = {target[0]: table.arrays[""]}
    else:
        arrays = dict(table.arrays)
    found: dict[str, np.ndarray] = {}
    for name in wanted:
        var = ir.variable(name)
        array = _gather(table, arrays, var, required=name not in optional)
        if array is None:
            continue
        found[name] = _checked(table.source, var, array, allow_missing=allow_missing, csv_lines=table.columns,
                               missing_hint=missing_hint)
    rows = {name: a.shape[0] for name, a in found.items()}
    if len(set(rows.values())) > 1:
        raise DGMDataError(f"{table.source}: the variables have different numbers of rows: "
                           + ", ".join(f"{n} {r}" for n, r in rows.items()))
    return found


def _gather(table: Table, arrays: dict[str, np.ndarray], var: Variable, *, required: bool) -> np.ndarray | None:
    """The raw array of `var` (columns stacked for CSV), None when absent and optional."""
    if not table.columns:
        if var.name in arrays:
            return arrays[var.name]
        if not required:
            return None
        raise DGMDataError(
            f"{table.source} has no array '{var.name}' ({_describe(var)}); it holds "
            + (", ".join(repr(k) for k in arrays) or "nothing"),
            hint=did_you_mean(var.name, list(arrays)) or f"save it under its name: np.savez(file, {var.name}=...)",
        )
    columns = column_names(var.name, var.shape)
    present = [c for c in columns if c in arrays]
    if not present and not required:
        return None
    absent = [c for c in columns if c not in arrays]
    if absent:
        others = [c for c in arrays if c not in columns]
        same_but_case = [c for c in others if c.lower() == absent[0].lower()]
        guess = f"did you mean '{same_but_case[0]}'?" if same_but_case else did_you_mean(absent[0], others)
        if not var.shape and f"{var.name}[0]" in arrays:
            guess = f"a scalar variable is one column named '{var.name}'"
        elif var.shape and var.name in arrays:
            guess = f"a {_shape_text(var.shape)} variable takes one column per entry: {_columns_text(columns)}"
        raise DGMDataError(
            f"{table.source} has no column '{absent[0]}' for {_describe(var)}"
            + (f" ({len(absent)} of its {len(columns)} columns are missing)" if len(columns) > 1 else ""),
            hint=guess or f"expected the columns {_columns_text(columns)}",
        )
    return np.stack([arrays[c] for c in columns], axis=-1).reshape(-1, *var.shape)


def _checked(source: str, var: Variable, array: np.ndarray, *, allow_missing: bool,
             csv_lines: bool = False, missing_hint: str = MISSING_HINT) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DGMDataError(f"{source}: '{var.name}' holds values of dtype {array.dtype}, not numbers")
    expected = "(n" + "".join(f", {d}" for d in var.shape) + ")"
    size = math.prod(var.shape)
    if array.ndim == 0:
        raise DGMDataError(f"{source}: '{var.name}' is a single number; expected an array {expected}",
                           hint="one row per data point")
    if tuple(array.shape[1:]) != var.shape:
        if math.prod(array.shape[1:]) == size and array.ndim >= 1:
            array = array.reshape(array.shape[0], *var.shape)
        else:
            raise DGMDataError(
                f"{source}: '{var.name}' has shape {tuple(array.shape)}; expected {expected} "
                f"for {_describe(var)}",
                hint=f"one row per data point, each with {size} entr{'y' if size == 1 else 'ies'}",
            )
    if array.shape[0] == 0:
        raise DGMDataError(f"{source}: '{var.name}' has no rows", hint="give at least one data point")
    if array.dtype.kind == "f":
        bad = _first_bad_entries(array, var, allow_missing=allow_missing)
        if "nan" in bad and not (allow_missing and var.role == "data"):
            where = _position(bad["nan"], var, csv_lines=csv_lines)
            hint = "an input is never missing; give every value" if var.role == "input" else missing_hint
            raise DGMDataError(f"{source}: {where} is empty (a missing value)", hint=hint)
        if "inf" in bad:
            where = _position(bad["inf"], var, csv_lines=csv_lines)
            raise DGMDataError(f"{source}: {where} holds {array[tuple(bad['inf'])]}, "
                               f"not a finite number", hint="infinities are never valid data")
        if _is_integer_variable(var) and "nan" not in bad:
            for key, what, expected in (
                    ("fraction", "not a whole number", "give whole numbers"),
                    ("huge", "beyond the whole numbers an int64 holds", "values from -2**63 to 2**63 - 1")):
                if key in bad:
                    index = bad[key]
                    raise DGMDataError(
                        f"{source}: {_position(index, var, csv_lines=csv_lines)} holds "
                        f"{array[tuple(index)]:g}, {what}",
                        hint=f"'{var.name}' is an int input: {expected}")
            array = array.astype(np.int64)  # CSV has no dtypes: whole-number labels become ints
    return array


def _first_bad_entries(array: np.ndarray, var: Variable, *, allow_missing: bool) -> dict[str, np.ndarray]:
    """The index of the first NaN (``"nan"``), infinity (``"inf"``) and, for an int input,
    fraction (``"fraction"``) and value beyond an int64 (``"huge"``) in a float array,
    read a `dgmlang.data.CHUNK_CELLS` piece at a time (a memmap is not loaded whole)."""
    from dgmlang.data import chunk_rows

    first: dict[str, np.ndarray] = {}
    per_piece = chunk_rows(tuple(array.shape[1:]))
    for start in range(0, array.shape[0], per_piece):
        piece = np.asarray(array[start:start + per_piece])
        found = {"nan": np.isnan(piece), "inf": np.isinf(piece)}
        if _is_integer_variable(var):
            found["fraction"] = piece != np.rint(piece)
            found["huge"] = np.abs(piece) >= 2.0 ** 63
        for key, bad in found.items():
            if key not in first and bad.any():
                index = np.argwhere(bad)[0]
                index[0] += start
                first[key] = index
        if "nan" in first and not (allow_missing and var.role == "data"):
            break  # the first NaN is the message
    return first


def _is_integer_variable(var: Variable) -> bool:
    return var.role == "input" and var.type == "int"


def _position(index: np.ndarray | tuple[int, ...], var: Variable, *, csv_lines: bool) -> str:
    """Where an entry is: its row counted from 0 (for CSV also its line in the file) and its
    column name; for an index shorter than the variable's (a whole row of a Dirichlet or
    simplex value), the first and last column of that row."""
    row = int(index[0])
    line = f" (line {row + 2})" if csv_lines else ""
    rest = tuple(int(i) for i in index[1:])
    names = column_names(var.name, var.shape)
    if len(rest) < len(var.shape):
        tail = var.shape[len(rest):]
        first = int(np.ravel_multi_index(rest + (0,) * len(tail), var.shape))
        last = first + math.prod(tail) - 1
        return f"row {row}{line}, columns '{names[first]}' to '{names[last]}'"
    flat = int(np.ravel_multi_index(rest, var.shape)) if var.shape else 0
    return f"row {row}{line}, column '{names[flat]}'"


def _describe(var: Variable) -> str:
    shape = f"[{', '.join(map(str, var.shape))}]" if var.shape else ""
    return f"{var.role} {var.name}{shape}"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _columns_text(columns: list[str]) -> str:
    return ", ".join(columns) if len(columns) <= 4 else f"{columns[0]}, {columns[1]}, ..., {columns[-1]}"


# ---------------------------------------------------------------- masks and model-specific steps


def read_mask(spec: str | Path, ir: ModelIR, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Boolean masks (True = observed) for the data variables in `shapes` (name -> the data's
    array shape), from a file in any data format holding booleans or 0/1. An array or column
    named after no data variable of the model is refused (a mask for a misspelled variable
    would otherwise be dropped silently), as is an empty cell (a mask has every entry)."""
    table = read_table(spec)
    names = list(shapes)
    _check_mask_names(table, ir)
    masks = _match(table, ir, names, optional=set(names), allow_missing=False,
                   missing_hint="a mask has a value for every entry: 1 where observed, 0 where missing")
    if not masks:
        raise DGMDataError(f"{table.source} holds no mask for {', '.join(map(repr, names))}",
                           hint="name the mask's arrays or columns like the data variables")
    out = {}
    for name, mask in masks.items():
        if mask.dtype != np.bool_:
            if not np.isin(mask, (0, 1)).all():
                index = np.argwhere(~np.isin(mask, (0, 1)))[0]
                where = _position(index, ir.variable(name), csv_lines=table.columns)
                raise DGMDataError(f"{table.source}: the mask for '{name}' holds values other than 0/1 "
                                   f"({where} holds {mask[tuple(index)]:g})",
                                   hint="a mask holds True/1 where observed, False/0 where missing")
            mask = mask.astype(bool)
        if mask.shape != tuple(shapes[name]):
            raise DGMDataError(f"{table.source}: the mask for '{name}' has shape {mask.shape} but the data "
                               f"has {tuple(shapes[name])}", hint="one mask row per data row")
        out[name] = mask
    return out


def _check_mask_names(table: Table, ir: ModelIR) -> None:
    """Every array (column) of a mask file names a data variable of the model."""
    data_names = ir.names("data")
    if not table.columns and "" in table.arrays:  # a bare .npy array: the one data variable's
        return
    for key in table.arrays:
        name = _COLUMN.match(key).group(1) if table.columns and _COLUMN.match(key) else key
        if name in data_names:
            continue
        if name in ir.names("input"):
            raise DGMDataError(f"{table.source}: the mask holds '{key}', but '{name}' is an input, "
                               "and inputs are never missing", hint="leave it out of the mask")
        raise DGMDataError(
            f"{table.source}: the mask holds '{key}', but the model has no data variable '{name}' "
            f"(its data variables: {', '.join(data_names)})",
            hint=did_you_mean(name, data_names) or "name the mask's arrays or columns like the data variables")


def read_observed(spec: str | Path, mask_spec: str | Path | None, ir: ModelIR, *, purpose: str,
                  facts=None, dtype=None, labels: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The data of `dgm fit` and `dgm score`: the arrays of `spec` (NaN marks a missing entry
    of a data variable) and the masks of `mask_spec` (True = observed), checked against the
    model (`validate`) including that `purpose` (fit, validation, log_prob) can marginalize
    the missing entries exactly (`dgmlang.data.check_marginalizable`; `labels`, the plan's
    labels, may have missing entries as well). Returns (values, masks):
    masks for the variables with a missing entry only (NaN in class labels becomes a mask
    entry, `split_missing`), so complete data gives ``masks == {}``."""
    values, masks = split_missing(ir, read_data(spec, ir, allow_missing=True))
    if mask_spec is not None:
        given = read_mask(mask_spec, ir, {k: values[k].shape for k in ir.names("data") if k in values})
        for name, mask in given.items():
            masks[name] = mask & masks[name] if name in masks else mask
    masks = {name: mask for name, mask in masks.items() if not mask.all()}
    where = str(spec) if mask_spec is None else f"{spec} (with the mask {mask_spec})"
    validate(ir, values, str(spec), purpose=purpose, allow_missing=True, mask=masks or None, facts=facts,
             dtype=dtype, marginalize=True, source_shown=where, labels=labels)
    return values, masks


def observed_rows(values: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], ir: ModelIR) -> np.ndarray:
    """Per row, whether every entry of every data variable is observed (no NaN, no False in
    `masks`)."""
    n = len(next(iter(values.values())))
    complete = np.ones(n, dtype=bool)
    for name in ir.names("data"):
        array = values.get(name)
        if array is None:
            complete[:] = False
            continue
        if name in masks:
            complete &= masks[name].reshape(n, -1).all(axis=1)
        if array.dtype.kind == "f":
            from dgmlang.data import chunk_rows

            step = chunk_rows(tuple(array.shape[1:]))
            for start in range(0, n, step):
                piece = np.asarray(array[start:start + step]).reshape(-1, max(1, int(np.prod(array.shape[1:]))))
                complete[start:start + step] &= ~np.isnan(piece).any(axis=1)
    return complete


def integer_data_names(ir: ModelIR) -> list[str]:
    """The `data` variables stored as class labels (int64): those drawn from a Categorical."""
    return [v.name for v in ir.variables if v.role == "data" and ir.draw(v.name).dist == "Categorical"]


def split_missing(ir: ModelIR, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """Arrays with NaN-marked missing entries as (values, masks): where a class-label variable
    has missing entries, they become 0 with a False mask entry (labels must be integers);
    other arrays keep their NaNs, which `invert` reads as missing."""
    values, masks = dict(arrays), {}
    for name in integer_data_names(ir):
        array = values.get(name)
        if array is None or array.dtype.kind != "f":
            continue
        nan = np.isnan(array)
        if nan.any():
            masks[name] = ~nan
        values[name] = np.where(nan, 0, array).astype(np.int64)
    return values, masks


def validate(ir: ModelIR, arrays: Mapping[str, np.ndarray], source: str, *, purpose: str,
             allow_missing: bool = False, mask: Mapping[str, np.ndarray] | None = None,
             facts=None, dtype=None, marginalize: bool = False, source_shown: str | None = None,
             labels: Iterable[str] = ()) -> None:
    """Run the model's own data checks now (support, dtypes, ranges, every use of an integer
    value, ...: `dgmlang.data.prepare_data`), with `source` leading the message (for a .csv
    file, positions are its lines and column names), so a bad file
    fails before training starts rather than deep inside it. `facts` (the model's
    `ModelFacts`) saves building them again; `dtype` is the float dtype the model computes in
    (``model.model.dtype``), float32 by default. `marginalize` also refuses missing entries
    that `purpose` cannot marginalize (`dgmlang.data.check_marginalizable`), with the hint
    for the command line; `source_shown` replaces `source` at the head of messages."""
    from dgmlang.data import check_marginalizable, prepare_data
    from dgmlang.facts import ModelFacts

    shown = source if source_shown is None else source_shown
    try:
        facts = facts if facts is not None else ModelFacts(ir)
        dataset = prepare_data(ir, dict(arrays), purpose=purpose, allow_missing=allow_missing,
                               mask=dict(mask) if mask else None, facts=facts, dtype=dtype,
                               locate=_file_positions(source))
    except DGMDataError as err:
        raise DGMDataError(f"{shown}: {err.message}", err.span, hint=err.hint) from None
    if marginalize:
        try:
            check_marginalizable(ir, dataset, purpose=purpose, facts=facts, labels=labels)
        except DGMDataError as err:
            raise DGMDataError(f"{shown}: {err.message}", err.span,
                               hint="dgm invert fills in every missing pattern; for fit and score, fill or "
                                    "drop the rows with missing entries of this variable") from None


def validate_inputs(ir: ModelIR, arrays: Mapping[str, np.ndarray], source: str, n: int, *,
                    facts=None, dtype=None) -> None:
    """`validate` for the inputs of `sample` read from a file (`dgmlang.data.prepare_inputs`
    for `n` samples), with `source` leading the message."""
    from dgmlang.data import prepare_inputs

    try:
        prepare_inputs(ir, dict(arrays), n, facts=facts, dtype=dtype, locate=_file_positions(source))
    except DGMDataError as err:
        raise DGMDataError(f"{source}: {err.message}", err.span, hint=err.hint) from None


def _file_positions(source: str):
    """How `validate` writes a position: a .csv file's lines and column names; None (the
    default, ``row 3, column 1``) for other files."""
    if Path(source).suffix.lower() != ".csv":
        return None

    def csv_position(var: Variable, index: tuple[int, ...]) -> str:
        return _position(index, var, csv_lines=True)

    return csv_position


def write_csv(path: str | Path, arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """Write per-row arrays (name -> ``(n, *shape)``) as CSV columns named like `column_names`.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.csv")
    >>> _ = write_csv(path, {"x": np.array([[1.0, 2.0]]), "c": np.array([2])}, {"x": (2,), "c": ()})
    >>> print(Path(path).read_text().strip())
    x[0],x[1],c
    1,2,2
    """
    header: list[str] = []
    blocks = []
    for name, array in arrays.items():
        shape = tuple(shapes[name])
        header += column_names(name, shape)
        array = np.asarray(array)
        blocks.append(array.reshape(array.shape[0], -1))
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row in zip(*blocks) if blocks else ():
            writer.writerow([_cell(v) for block in row for v in block])
    return path


def _cell(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)
