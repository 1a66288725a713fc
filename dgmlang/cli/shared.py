"""Helpers the commands share: output names, chunked scoring under a progress bar, and the
pictures of samples."""
from __future__ import annotations

from pathlib import Path

from dgmlang.errors import DGMUsageError

#: Rows per chunk when scoring or inverting with a progress bar.
CHUNK_ROWS = 64
OUTPUT_FORMATS = (".png", ".npz", ".csv")


def output_paths(paths: list[Path], allowed: tuple[str, ...] = OUTPUT_FORMATS) -> list[Path]:
    """Check output names before any work is done."""
    for path in paths:
        if path.suffix.lower() not in allowed:
            raise DGMUsageError(f"cannot write '{path}': unknown output format '{path.suffix or path.name}'",
                                hint="use " + ", ".join(allowed))
        if path.parent and not path.parent.exists():
            raise DGMUsageError(f"cannot write '{path}': the folder {path.parent} does not exist")
    return paths


def value_range(ir, name: str) -> tuple[float | None, float | None]:
    """Bounds of a data variable's support (for a fixed grey scale), None where unbounded or
    where the bound depends on other variables."""
    from dgmlang.data import support_of

    constraint = support_of(ir, ir.variable(name)).constraint

    def bound(attribute: str) -> float | None:
        value = getattr(constraint, attribute, None)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "numel") and value.numel() == 1:
            return float(value)
        return None

    return bound("lower_bound"), bound("upper_bound")


def to_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=quiet or total <= CHUNK_ROWS)


def score_rows(model, arrays: dict, *, num_samples: int, seed: int | None, quiet: bool, desc: str):
    """log p(row) for every row, chunk by chunk under one progress bar."""
    import numpy as np

    from dgmlang.nets import seeded

    n = len(next(iter(arrays.values())))
    out = []
    with seeded(seed), progress_bar(n, desc, quiet) as bar:
        for start in range(0, n, CHUNK_ROWS):
            chunk = {k: v[start:start + CHUNK_ROWS] for k, v in arrays.items()}
            out.append(to_numpy(model.log_prob(chunk, num_samples=num_samples)))
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
        if shape is not None:
            low, high = value_range(ir, name)
            image_grid(values[:100], path, shape=shape, vmin=low if low is not None else None, vmax=high,
                       titles=titles[:100] if titles else None, title=f"samples of {name}{caption}")
        else:
            scatter_samples(values, path, name=name, reference=None if reference is None else reference.get(name))
        written.append(path)
    return written
