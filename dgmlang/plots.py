"""Pictures (matplotlib, PNG/SVG): model and guide graphs, image grids, loss curves.

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
    """Positions: one row per topological generation of `order_graph`, top to bottom."""
    pos = {}
    generations = list(nx.topological_generations(order_graph))
    for depth, layer in enumerate(generations):
        for i, node in enumerate(sorted(layer)):
            pos[node] = (i - (len(layer) - 1) / 2, -depth)
    return pos


def _draw_with_matplotlib(model_graph, guide, name, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = _layers(model_graph, model_graph)
    width = max(4.0, 1.6 * max((sum(1 for p in pos.values() if p[1] == y) for y in {p[1] for p in pos.values()}), default=1))
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 1.4 * (1 + max((-p[1] for p in pos.values()), default=0)) + 1))
    for ax, graph, title, style in ((axes[0], model_graph, f"model {name}", "solid"), (axes[1], guide, "derived guide", "dashed")):
        colours = [ROLE_STYLE.get(graph.nodes[n].get("role"), ("#ffffff", ""))[0] for n in graph.nodes]
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, edgecolors="black", node_size=1600)
        labels = {n: n + ("\n" + "x".join(map(str, graph.nodes[n].get("shape") or ())) if graph.nodes[n].get("shape") else "") for n in graph.nodes}
        nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=9)
        nx.draw_networkx_edges(graph, pos, ax=ax, style=style, arrows=True, arrowsize=16, node_size=1600,
                               connectionstyle="arc3,rad=0.12")
        ax.set_title(title)
        ax.margins(0.25)
        ax.axis("off")
    legend = [plt.Line2D([], [], marker="o", ls="", markersize=11, markerfacecolor=c, markeredgecolor="black", label=role)
              for role, (c, _) in ROLE_STYLE.items()]
    fig.legend(handles=legend, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def image_grid(images, out: str | Path, *, shape: tuple[int, int], ncols: int | None = None,
               titles: list[str] | None = None, vmax: float | None = None) -> Path:
    """Write a grid of grey images (an array (n, H*W) or (n, H, W)) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    images = np.asarray(images, dtype=float).reshape(-1, *shape)
    n = len(images)
    ncols = ncols or min(n, 10)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.1 * nrows + (0.3 if titles else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=vmax if vmax is not None else images.max() or 1)
            if titles:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def loss_curve(losses, out: str | Path, *, validation=None, steps_per_epoch: int | None = None) -> Path:
    """Write the training loss (per step) and, when given, the validation loss (per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, label="training loss (per step)")
    if validation and steps_per_epoch:
        ax.plot([steps_per_epoch * (i + 1) for i in range(len(validation))], validation, "o-", ms=3,
                label="validation loss (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per data point (nats)")
    finite = [v for v in losses if v == v]
    if finite and max(finite) > 20 * (sorted(finite)[len(finite) // 2] if sorted(finite)[len(finite) // 2] > 0 else 1):
        ax.set_yscale("symlog")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
