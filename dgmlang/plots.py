"""Pictures (matplotlib, PNG/SVG): model and guide graphs, image grids, completions, sample
scatter plots, score histograms, loss curves.

matplotlib is imported inside each function, with the non-interactive Agg backend, so
importing this module costs nothing.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import networkx as nx

from dgmlang.errors import DGMUsageError

ROLE_STYLE = {  # role -> (fill colour, label suffix)
    "data": ("#c8c8c8", "observed"),
    "input": ("#fff2cc", "input"),
    "latent": ("#ffffff", "latent"),
    "global": ("#cfe2f3", "global"),
}


def guide_graph(model_graph: nx.DiGraph, plan) -> nx.DiGraph:
    """The derived guide as a graph: an edge from each guide input to the latent it feeds."""
    guide = nx.DiGraph()
    guide.add_nodes_from(model_graph.nodes(data=True))
    for step in plan.steps:
        for source in step.inputs:
            guide.add_edge(source, step.latent)
    return guide


def to_dot(model_graph: nx.DiGraph, plan, name: str) -> str:
    """Graphviz text with two clusters: the model, and its derived guide.

    >>> g = nx.DiGraph(); g.add_node("z", role="latent", shape=(2,)); g.add_node("x", role="data", shape=(3,))
    >>> g.add_edge("z", "x")
    >>> class Plan: steps = ()
    >>> "subgraph cluster_model" in to_dot(g, Plan(), "ppca")
    True
    """
    lines = [f'digraph "{name}" {{', "  rankdir=TB;", '  node [shape=ellipse, style=filled, fontname="Helvetica"];']
    for prefix, graph, title in (("m_", model_graph, "model"), ("g_", guide_graph(model_graph, plan), "guide")):
        lines.append(f"  subgraph cluster_{title} {{")
        lines.append(f'    label="{title}";')
        for node, attrs in graph.nodes(data=True):
            fill, _ = ROLE_STYLE.get(attrs.get("role"), ("#ffffff", ""))
            shape = attrs.get("shape") or ()
            label = node + (f"[{', '.join(map(str, shape))}]" if shape else "")
            dashed = ', peripheries=2' if attrs.get("role") == "global" else ""
            lines.append(f'    {prefix}{node} [label="{label}", fillcolor="{fill}"{dashed}];')
        for a, b in graph.edges():
            style = "" if title == "model" else " [style=dashed]"
            lines.append(f"    {prefix}{a} -> {prefix}{b}{style};")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graphs(model_graph: nx.DiGraph, plan, name: str, out: str | Path) -> Path:
    """Write the model graph and its guide graph side by side to `out` (.dot, .png or .svg)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".dot", ".png", ".svg"):
        raise DGMUsageError(f"cannot write a graph as '{suffix or out.name}'", hint="use a .dot, .png or .svg file name")
    dot_text = to_dot(model_graph, plan, name)
    if suffix == ".dot":
        out.write_text(dot_text)
        return out
    if shutil.which("dot"):
        subprocess.run(["dot", f"-T{suffix[1:]}", "-o", str(out)], input=dot_text, text=True, check=True)
        return out
    _draw_with_matplotlib(model_graph, guide_graph(model_graph, plan), name, out)
    return out


def _layers(graph: nx.DiGraph, order_graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Positions: one row per topological generation of `order_graph`, top to bottom. When
    an edge skips a row, rows holding one node alternate left and right, so the long edge
    does not run through the nodes between.

    >>> chain = nx.DiGraph([("x", "a"), ("a", "b"), ("x", "b")])
    >>> _layers(chain, chain)
    {'x': (0.0, 0), 'a': (0.6, -1), 'b': (-0.6, -2)}
    """
    generations = [sorted(layer) for layer in nx.topological_generations(order_graph)]
    depth_of = {node: depth for depth, layer in enumerate(generations) for node in layer}
    skips = any(depth_of[b] - depth_of[a] > 1 for a, b in order_graph.edges())
    pos = {}
    for depth, layer in enumerate(generations):
        shift = 0.6 * (1 if depth % 2 else -1) if skips and len(layer) == 1 and depth else 0.0
        for i, node in enumerate(layer):
            pos[node] = (i - (len(layer) - 1) / 2 + shift, -depth)
    return pos


def _node_label(graph: nx.DiGraph, node: str) -> str:
    shape = graph.nodes[node].get("shape")
    return node + ("\n" + "x".join(map(str, shape)) if shape else "")


def _draw_with_matplotlib(model_graph, guide, name, out: Path) -> None:
    plt = _pyplot()

    panels = ((model_graph, _layers(model_graph, model_graph), f"model {name}", "solid"),
              (guide, _layers(guide, guide), "derived guide", "dashed"))
    widest = max(sum(1 for p in pos.values() if p[1] == y) for _, pos, _, _ in panels for y in {p[1] for p in pos.values()})
    deepest = max(-p[1] for _, pos, _, _ in panels for p in pos.values())
    width = max(4.0, 1.6 * widest)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 1.4 * (1 + deepest) + 1))
    for ax, (graph, pos, title, style) in zip(axes, panels):
        nodes = list(graph.nodes)
        colours = [ROLE_STYLE.get(graph.nodes[n].get("role"), ("#ffffff", ""))[0] for n in nodes]
        labels = {n: _node_label(graph, n) for n in nodes}
        # node_size is an area in points^2: wide enough for the longest label line
        sizes = [max(1600, (6 * max(map(len, labels[n].splitlines())) + 12) ** 2) for n in nodes]
        nx.draw_networkx_nodes(graph, pos, nodelist=nodes, ax=ax, node_color=colours, edgecolors="black",
                               node_size=sizes)
        nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=9)
        nx.draw_networkx_edges(graph, pos, ax=ax, nodelist=nodes, style=style, arrows=True, arrowsize=16,
                               node_size=sizes, connectionstyle="arc3,rad=0.12")
        ax.set_title(title)
        ax.margins(0.25)
        ax.axis("off")
    legend = [plt.Line2D([], [], marker="o", ls="", markersize=11, markerfacecolor=c, markeredgecolor="black", label=role)
              for role, (c, _) in ROLE_STYLE.items()]
    fig.legend(handles=legend, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def image_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (height, width) a data variable's values are drawn at, or None when they are not
    images: an array (H, W) or (1, H, W) with H, W >= 4, or a vector whose length is a square
    of at least 16 (the digits' 64 pixels are 8x8).

    >>> image_shape((64,)), image_shape((1, 16, 16)), image_shape((3,)), image_shape((8, 2))
    ((8, 8), (16, 16), None, None)
    """
    shape = tuple(shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2 and min(shape) >= 4:
        return shape
    if len(shape) == 1 and shape[0] >= 16 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (side, side)
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images, out: str | Path, *, shape: tuple[int, ...], ncols: int | None = None,
               titles: list[str] | None = None, vmax: float | None = None, vmin: float | None = 0,
               row_labels: list[str] | None = None, title: str | None = None) -> Path:
    """Write a grid of grey images (an array (n, H*W) or (n, H, W)) to a PNG, dark = high;
    with `shape` ``(H, W, 3)``, colour images (RGB, shown as they are: light = high).

    `vmin`/`vmax` fix the grey scale (default 0 and the largest value; `vmin=None` uses the
    smallest); `row_labels` name the rows (e.g. the class each row was drawn for).
    """
    import numpy as np

    plt = _pyplot()
    images = np.asarray(images, dtype=float).reshape(-1, *shape)
    n = len(images)
    ncols = ncols or min(n, 10)
    nrows = math.ceil(n / ncols)
    low = float(images.min()) if vmin is None else vmin
    high = vmax if vmax is not None else (float(images.max()) if images.max() > low else low + 1)
    extra = (0.3 if titles else 0) + (0.4 if title else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols + (0.6 if row_labels else 0), 1.1 * nrows + extra),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            if len(shape) == 3:  # RGB, scaled from [low, high] to [0, 1]
                ax.imshow(np.clip((images[i] - low) / (high - low), 0, 1))
            else:
                ax.imshow(images[i], cmap="gray_r", vmin=low, vmax=high)
            if titles:
                ax.set_title(titles[i], fontsize=7)
    for r, label in enumerate(row_labels or ()):
        if r < nrows:
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def completion_grid(observed, completed, out: str | Path, *, shape: tuple[int, int], mask=None, truth=None,
                    vmin: float = 0, vmax: float | None = None, title: str | None = None,
                    max_columns: int = 12) -> Path:
    """Write inversion results as image rows: the observed image (missing pixels in red),
    the completion (the posterior mean), and the truth when given; one column per data point.

    `observed`, `completed` and `truth` are arrays (n, H*W) or (n, H, W); `mask` (same shape,
    True = observed) defaults to the non-NaN entries of `observed`.
    """
    import numpy as np

    plt = _pyplot()
    observed = np.asarray(observed, dtype=float).reshape(-1, *shape)[:max_columns]
    completed = np.asarray(completed, dtype=float).reshape(-1, *shape)[:max_columns]
    mask = (~np.isnan(observed) if mask is None
            else np.asarray(mask, dtype=bool).reshape(-1, *shape)[:max_columns])
    rows = [("observed", np.ma.masked_array(np.nan_to_num(observed), mask=~mask)), ("completed", completed)]
    if truth is not None:
        rows.append(("truth", np.asarray(truth, dtype=float).reshape(-1, *shape)[:max_columns]))
    high = vmax if vmax is not None else max(float(np.nanmax(r if not np.ma.isMA(r) else r.filled(0))) for _, r in rows)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="#d62728")
    n = len(observed)
    # One picture per row, the images side by side with a blank column between them: one
    # axes per row instead of one per image (36 axes took most of a second to lay out).
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.05 * n + 0.9, 1.1 * len(rows) + (0.4 if title else 0.1)),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(_side_by_side(images, vmin), cmap=cmap, vmin=vmin, vmax=high)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _side_by_side(images, blank: float):
    """Images (n, H, W) as one (H, n * (W + 1) - 1) picture, a column of `blank` between two;
    a masked array stays masked where its images are (not in the gaps)."""
    import numpy as np

    n, height, width = images.shape
    gap = np.full((height, 1), blank)
    pieces = []
    for i in range(n):
        if i:
            pieces.append(np.ma.masked_array(gap, mask=False))
        pieces.append(np.ma.masked_array(images[i], mask=np.ma.getmaskarray(images[i])))
    return np.ma.hstack(pieces)


def completion_vectors(observed, completed, std, out: str | Path, *, mask, name: str, truth=None,
                       max_rows: int = 6) -> Path:
    """Inversion results for non-image data: one panel per data point (the first `max_rows`),
    each coordinate's observed value (black dot), its completion where missing (posterior
    mean +- 2 std, blue) and the truth when given (red cross). Arrays are (n, d)."""
    import numpy as np

    plt = _pyplot()
    observed, completed, std = (np.asarray(a, dtype=float) for a in (observed, completed, std))
    mask = np.asarray(mask, dtype=bool)
    rows = min(len(completed), max_rows)
    d = completed.shape[1]
    fig, axes = plt.subplots(rows, 1, figsize=(max(4.0, 0.5 * d + 2), 1.6 * rows + 0.4), squeeze=False, sharex=True)
    coords = np.arange(d)
    for r in range(rows):
        ax = axes[r, 0]
        seen, hidden = mask[r], ~mask[r]
        ax.plot(coords[seen], observed[r, seen], "o", color="black", ms=5, label="observed")
        ax.errorbar(coords[hidden], completed[r, hidden], yerr=2 * std[r, hidden], fmt="s", color="C0", ms=5,
                    capsize=3, label="completed (mean +- 2 std)")
        if truth is not None:
            ax.plot(coords[hidden], np.asarray(truth, dtype=float)[r, hidden], "x", color="C3", ms=7, mew=2,
                    label="truth")
        ax.set_ylabel(f"row {r}", fontsize=8)
    axes[-1, 0].set_xticks(coords)
    axes[-1, 0].set_xticklabels([f"{name}[{i}]" if d > 1 else name for i in coords], fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def scatter_samples(values, out: str | Path, *, name: str, reference=None, max_coordinates: int = 4) -> Path:
    """Picture samples of a non-image variable (an array (n,) or (n, d)): a histogram for a
    scalar, a scatter plot for two coordinates, pairwise scatter plots of the first
    `max_coordinates` coordinates otherwise; `reference` (same layout, e.g. the training
    data) is drawn underneath in grey."""
    import numpy as np

    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    values = values.reshape(len(values), -1)
    ref = None if reference is None else np.asarray(reference, dtype=float).reshape(len(reference), -1)
    d = min(values.shape[1], max_coordinates)
    label = (lambda i: name if values.shape[1] == 1 else f"{name}[{i}]")
    if d == 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if ref is not None:
            ax.hist(ref[:, 0], bins=40, density=True, color="0.75", label="reference")
        ax.hist(values[:, 0], bins=40, density=True, histtype="step", lw=1.5, color="C0", label="samples")
        ax.set_xlabel(label(0))
        ax.legend(loc="upper right")
    else:
        pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
        cols = min(len(pairs), 3)
        fig, axes = plt.subplots(math.ceil(len(pairs) / cols), cols, figsize=(3.6 * cols, 3.3 * math.ceil(len(pairs) / cols)),
                                 squeeze=False)
        for ax, (i, j) in zip(axes.flat, pairs):
            if ref is not None:
                ax.scatter(ref[:, i], ref[:, j], s=4, color="0.7", label="reference")
            ax.scatter(values[:, i], values[:, j], s=4, color="C0", alpha=0.7, label="samples")
            ax.set_xlabel(label(i))
            ax.set_ylabel(label(j))
        for ax in list(axes.flat)[len(pairs):]:
            ax.axis("off")
        if ref is not None:
            axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def score_histogram(groups: dict, out: str | Path, *, threshold: float | None = None,
                    xlabel: str = "log-likelihood per data point (nats)", log_scale: bool = False) -> Path:
    """Histograms of scores per named group (e.g. clean vs corrupted data), with an optional
    threshold line. With `log_scale`, negative scores (log-likelihoods) are drawn as their
    magnitude on a logarithmic axis, so groups that differ by orders of magnitude stay apart."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    values = {k: np.asarray(v, dtype=float) for k, v in groups.items()}
    if log_scale:
        values = {k: -v for k, v in values.items()}
        threshold = None if threshold is None else -threshold
        xlabel = "negative " + xlabel + ", log scale"
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    if log_scale and finite.size and finite.min() > 0:
        bins = np.geomspace(finite.min(), finite.max(), 60)
        ax.set_xscale("log")
    else:
        bins = np.linspace(finite.min(), finite.max(), 50) if finite.size else 10
    for label, scores in values.items():
        ax.hist(scores, bins=bins, alpha=0.55, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.1f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _loss_scale(losses) -> str:
    """"log" when positive losses span more than a factor of 3 (the early drop would flatten
    the rest of the curve), "symlog" for a wide range that crosses zero, else "linear".

    >>> _loss_scale([530.0, 120.0, 90.0]), _loss_scale([9.0, 8.0]), _loss_scale([1800.0, -40.0, -370.0])
    ('log', 'linear', 'symlog')
    """
    finite = sorted(v for v in losses if math.isfinite(v))
    if not finite:
        return "linear"
    low, high, middle = finite[0], finite[-1], finite[len(finite) // 2]
    if low > 0:
        return "log" if high > 3 * low else "linear"
    return "symlog" if high - low > 20 * max(1.0, abs(middle)) else "linear"


def loss_curve(losses, out: str | Path, *, validation=None, steps_per_epoch: int | None = None) -> Path:
    """Write the training loss (per step) and, when given, the validation loss (per epoch)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, label="training loss (per step)")
    if validation and steps_per_epoch:
        ax.plot([steps_per_epoch * (i + 1) for i in range(len(validation))], validation, "o-", ms=3,
                label="validation loss (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per data point (nats)")
    scale = _loss_scale(losses)
    if scale == "log":
        ax.set_yscale("log")
    elif scale == "symlog":
        finite = sorted(v for v in losses if math.isfinite(v))
        ax.set_yscale("symlog", linthresh=max(1.0, abs(finite[len(finite) // 2])))
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
