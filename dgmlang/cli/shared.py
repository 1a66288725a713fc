"""Helpers the commands share: output names, chunked scoring under a progress bar, and the
pictures of samples."""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dgmlang.errors import DGMDataError, DGMError, DGMUsageError, rows_phrase

#: Rows per chunk when scoring or inverting with a progress bar.
CHUNK_ROWS = 64
OUTPUT_FORMATS = (".png", ".npz", ".csv")
#: Limits on sizes given on the command line (docs/cli.md, "Limits"): beyond them a value
#: is a usage error (status 2), before anything is read.
MAX_ROWS = 10**7            # -n, --batch-size
MAX_NUM_SAMPLES = 10**5     # --num-samples (per row)
MAX_REFINE = 10**5          # --refine (Adam steps per row)
MAX_NUM_PARTICLES = 10**4   # --num-particles
MAX_STEPS = 10**9           # --steps
MAX_EPOCHS = 10**6          # --epochs
MAX_SEED = 2**63 - 1        # --seed: 0..MAX_SEED
MAX_INPUT_CHARS = 100_000   # the VALUE of --input NAME=VALUE
MAX_INPUT_DEPTH = 32        # brackets nested in it
#: Values one call may hold (rows x samples x entries per row), checked once the model is
#: read (status 1: it depends on the model): about 2 GB in float32.
MAX_VALUES = 5 * 10**8
#: Temporary files are named ``.NAME.XXXXXXXX.tmp.SUFFIX`` beside the file they become.
TEMPORARY_MARK = ".tmp"


def temporary_pattern(name: str) -> str:
    """The glob pattern of `write_atomic`'s temporary files for the file called `name`
    (whose stem may itself hold a glob).

    >>> temporary_pattern("loss.csv")
    '.loss.*.tmp.csv'
    """
    stem, dot, suffix = name.rpartition(".")
    return f".{stem}.*{TEMPORARY_MARK}{dot}{suffix}"


#: A file name this long leaves no room for the temporary name it is written under.
MAX_NAME_BYTES = 200


def check_writable(path: Path, *, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot be written: a missing parent
    folder, a path that is a folder (or, with `folder`, a file), no permission to write in
    the folder. A symlink at `path` is fine: `write_atomic` replaces the link itself."""
    path = Path(path)
    text = str(path)
    if not text or path.name in ("", ".", ".."):
        raise DGMUsageError(f"cannot write '{text}': it names a folder, not a file" if not folder
                            else f"cannot use '{text}' as a run folder")
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise DGMUsageError(f"cannot write '{text}': the file name is too long "
                            f"(at most {MAX_NAME_BYTES} bytes)")
    parent = path.parent
    if os.path.lexists(path):
        is_link = path.is_symlink()
        if not folder and not is_link and path.is_dir():
            raise DGMUsageError(f"cannot write '{text}': it is a folder", hint="give a file name inside it")
        if not folder and not is_link and not path.is_file():
            raise DGMUsageError(f"cannot write '{text}': it is not a regular file")
        if folder:
            if is_link or not path.is_dir():
                raise DGMUsageError(f"cannot use '{text}' as a run folder: it is "
                                    + ("a symlink" if is_link else "a file"),
                                    hint="give a folder path (--out RUN)")
            parent = path
    else:
        # a run folder is created with its parents: its nearest existing ancestor must be a folder
        while folder and not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
    if not os.path.lexists(parent):
        raise DGMUsageError(f"cannot write '{text}': the folder '{parent}' does not exist",
                            hint="create it first, or give another path")
    if not parent.is_dir():
        raise DGMUsageError(f"cannot write '{text}': '{parent}' is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DGMUsageError(f"cannot write '{text}': no permission to write in the folder '{parent}'")
    return path


def output_paths(paths: list[Path], allowed: tuple[str, ...] = OUTPUT_FORMATS) -> list[Path]:
    """Check output names before any work is done: the format, and that each can be written."""
    for path in paths:
        if path.suffix.lower() not in allowed:
            raise DGMUsageError(f"cannot write '{path}': unknown output format '{path.suffix or path.name}'",
                                hint="use " + ", ".join(allowed))
        check_writable(path)
    return paths


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def write_atomic(path: Path) -> Iterator[Path]:
    """A temporary file in `path`'s folder, with `path`'s suffix, for the caller to write;
    when the block ends it replaces `path` (``os.replace``: an existing file, or a symlink
    itself, never the symlink's target). A failed write leaves `path` as it was and is a
    DGMError naming the file.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with write_atomic(folder / "a.txt") as temporary:
    ...     _ = temporary.write_text("hi")
    >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('hi', ['a.txt'])
    """
    path = Path(path)
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:MAX_NAME_BYTES]}.",
                                        suffix=f"{TEMPORARY_MARK}{path.suffix}")
        os.close(handle)
    except OSError as err:
        raise DGMError(f"cannot write '{path}': {err.strerror or err}") from None
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as err:
        raise DGMError(f"cannot write '{path}': {err.strerror or err}") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def say(*parts, file=None) -> None:
    """print, but a character the terminal cannot encode (a file name given as undecodable
    bytes) is escaped instead of raising."""
    stream = file if file is not None else sys.stdout
    text = " ".join(map(str, parts))
    try:
        print(text, file=stream)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=stream)


def check_budget(what: str, values: int) -> None:
    """Refuse a call that would hold more than MAX_VALUES numbers at once."""
    if values > MAX_VALUES:
        raise DGMUsageError(f"{what} would hold {values:,} values at once; the limit is {MAX_VALUES:,}",
                            hint="ask for fewer rows or samples")


def row_values(ir, roles: tuple[str, ...] = ("data", "latent", "input")) -> int:
    """Numbers per row in the variables of these roles."""
    import math

    return max(1, sum(math.prod(v.shape) for v in ir.variables if v.role in roles))


def value_range(ir, name: str) -> tuple[float | None, float | None]:
    """Bounds of a data variable's support (for a fixed grey scale), None where unbounded or
    where the bound depends on other variables."""
    from dgmlang.supports import support_of

    constraint = support_of(ir, ir.variable(name)).constraint

    def bound(attribute: str) -> float | None:
        value = getattr(constraint, attribute, None)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "numel") and value.numel() == 1:
            return float(value)
        return None

    return bound("lower_bound"), bound("upper_bound")


def placement(args):
    """The device and dtype asked for with ``--device`` / ``--dtype`` (None: the CPU, and
    float32 for a new model or the saved dtype for a run), checked before any work: a GPU
    this torch cannot use is a `DGMUsageError` saying what to install."""
    from dgmlang import devices

    device = devices.device_of(getattr(args, "device", None))
    dtype = getattr(args, "dtype", None)
    if dtype is not None:
        devices.check_pair(device, devices.dtype_of(dtype))
    return device, dtype


def to_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=quiet or total <= CHUNK_ROWS)


@contextmanager
def one_warning(chunks: int) -> Iterator[None]:
    """Hold the `DGMWarning`s of a command's per-chunk calls (`log_prob`, `invert` each warn
    once per call) and give each kind (its text, numbers aside) once: the first chunk's, saying
    in how many of the `chunks` it came up."""
    import re
    import warnings

    from dgmlang.errors import DGMWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DGMWarning)
        yield
    kinds: dict[str, list] = {}
    for w in caught:
        if issubclass(w.category, DGMWarning):
            kinds.setdefault(re.sub(r"\d+", "#", str(w.message)), []).append(w)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for held in kinds.values():
        extra = f" (in {len(held)} of the {chunks} chunks of {CHUNK_ROWS} rows)" if chunks > 1 else ""
        warnings.warn(DGMWarning(f"{held[0].message}{extra}"), stacklevel=3)


def score_rows(model, arrays: dict, *, num_samples: int, seed: int | None, quiet: bool, desc: str,
               source: str | None = None, masks: dict | None = None):
    """log p(row) for every row, chunk by chunk under one progress bar; rows whose score
    is not finite are named in the whole file (`source`), not in their chunk. With missing
    entries (NaN, or False in `masks`), the log-likelihood of a row's observed entries."""
    import numpy as np

    from dgmlang.nets import seeded

    n = len(next(iter(arrays.values())))
    out = []
    with seeded(seed), progress_bar(n, desc, quiet) as bar, one_warning(-(-n // CHUNK_ROWS)):
        for start in range(0, n, CHUNK_ROWS):
            chunk = {k: v[start:start + CHUNK_ROWS] for k, v in arrays.items()}
            try:
                chunk_masks = {k: v[start:start + CHUNK_ROWS] for k, v in masks.items()} if masks else None
                out.append(to_numpy(model.log_prob(chunk, mask=chunk_masks, num_samples=num_samples,
                                                   progress=False)))
            except DGMDataError as err:
                rows = getattr(err, "rows", None)
                if rows is None:
                    raise
                where = f"{source}: " if source else ""
                raise DGMDataError(f"{where}the log-likelihood of {rows_phrase([start + r for r in rows])} "
                                   "is not finite", hint=err.hint) from None
            bar.update(len(out[-1]))
    return np.concatenate(out)


def per_variable_paths(out: Path, names: list[str]) -> list[Path]:
    """One file per variable: `out` itself for one, OUT-NAME.png for several."""
    if len(names) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{name}{out.suffix}") for name in names]


def draw_samples(ir, samples: dict, outs: list[Path], *, reference: dict | None = None,
                  titles: list[str] | None = None, caption: str = "") -> list[Path]:
    """Image grids for image-shaped data variables, scatter plots for the others."""
    from dgmlang.plots import image_grid, image_shape, scatter_samples

    names = ir.names("data")
    written = []
    for name, path in zip(names, per_variable_paths(outs[0], names)):
        values = samples[name]
        shape = image_shape(ir.variable(name).shape)
        with write_atomic(path) as temporary:
            if shape is not None:
                low, high = value_range(ir, name)
                image_grid(values[:100], temporary, shape=shape, vmin=low if low is not None else None, vmax=high,
                           titles=titles[:100] if titles else None, title=f"samples of {name}{caption}")
            else:
                scatter_samples(values, temporary, name=name,
                                reference=None if reference is None else reference.get(name))
        written.append(path)
    return written
