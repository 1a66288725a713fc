"""Faithful inversion (NaMI): the worked examples of LANGUAGE.md, the discrete rule, and
property tests with d-separation on random models."""
from __future__ import annotations

import random
import time
from itertools import combinations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlang.errors import DGMGuideError, DGMModelError, DGMUsageError
from dgmlang.graph import build_graph
from dgmlang.inverse import ORDERS, GuidePlan, GuideStep, invert, naive_inverse
from dgmlang.ir import BuiltinCall, Binary, Draw, IndexExpr, Lit, ModelIR, NetCall, Ref, Variable
from dgmlang.source import Source, Span

NODE_KINDS = {
    "latent": {"role": "latent", "discrete": False, "finite": False},
    "finite": {"role": "latent", "discrete": True, "finite": True, "dist": "Categorical"},
    "count": {"role": "latent", "discrete": True, "finite": False, "dist": "Poisson"},
    "data": {"role": "data", "discrete": False, "finite": False},
    "input": {"role": "input", "discrete": False, "finite": False},
    "global": {"role": "global", "discrete": False, "finite": False},
}


def model(*declarations: str, edges: str = "") -> nx.DiGraph:
    """A model graph: `model("latent a b", "data x", edges="a->b, b->x")`, nodes in the
    order declared. "finite" declares finite discrete latents, "count" unbounded ones."""
    graph = nx.DiGraph()
    for declaration in declarations:
        kind, *names = declaration.split()
        for name in names:
            graph.add_node(name, **NODE_KINDS[kind])
    for edge in filter(None, (e.strip() for e in edges.split(","))):
        parent, child = (part.strip() for part in edge.split("->"))
        graph.add_edge(parent, child)
    return graph


def faithfulness_violations(graph: nx.DiGraph, plan: GuidePlan) -> list[tuple[str, set[str]]]:
    """Each sampled latent that, given its guide inputs, is not d-separated in the model from
    the observations, inputs, globals and earlier-sampled latents it does not see."""
    known = {n for n, role in graph.nodes(data="role") if role != "latent"}
    violations = []
    for step in plan.steps:
        if step.kind in ("global", "enumerated_in_model"):
            continue
        inputs = set(step.inputs)
        assert inputs <= known, f"{step.latent} reads values not sampled before it"
        unseen = known - inputs
        if unseen and not nx.is_d_separator(graph, {step.latent}, unseen, inputs):
            violations.append((step.latent, unseen))
        known.add(step.latent)
    return violations


def reference_inverse(graph: nx.DiGraph, order: str = "nami") -> list[tuple[str, tuple[str, ...]]]:
    """NaMI (or min-fill) written the slow obvious way (every eligible latent's fill-in
    recounted at every step): `(latent, inputs)` in sampling order."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    latent = {n for n, role in graph.nodes(data="role") if role == "latent"}
    moral = nx.moral_graph(graph)
    moral.remove_edges_from([(a, b) for a, b in moral.edges if a not in latent and b not in latent])
    relevant = lambda a, b: a in latent or b in latent  # noqa: E731

    def fill_in(v):
        missing = [(a, b) for a, b in combinations(moral[v], 2)
                   if relevant(a, b) and not moral.has_edge(a, b)]
        if order == "nami":
            return (len(missing),)
        both = sum(1 for a, b in missing if a in latent and b in latent)
        return both, len(missing) - both

    remaining, eliminated = set(latent), []
    while remaining:
        frontier = [v for v in remaining
                    if order == "minfill" or not any(p in remaining for p in graph.predecessors(v))]
        v = min(frontier, key=lambda v: (*fill_in(v), graph.nodes[v]["discrete"], index[v]))
        neighbours = sorted(moral[v], key=index.get)
        moral.add_edges_from((a, b) for a, b in combinations(neighbours, 2) if relevant(a, b))
        moral.remove_node(v)
        remaining.remove(v)
        eliminated.append((v, tuple(neighbours)))
    return eliminated[::-1]


def kinds(plan: GuidePlan) -> dict[str, str]:
    return {s.latent: s.kind for s in plan.steps}


# ---------------------------------------------------------------- worked examples

TREE = dict(edges="a->b, a->c, b->d, c->e")


def test_chain_is_inverted_bottom_up_like_digits_hvae():
    g = model("latent z2 z1", "data x", edges="z2->z1, z1->x")
    assert invert(g).as_list() == [("z1", ["x"]), ("z2", ["z1"])]
    assert naive_inverse(g).as_list() == [("z1", ["x"]), ("z2", ["z1"])]


def test_tree_naive_reversal_sees_only_children():
    g = model("latent a b c", "data d e", **TREE)
    assert naive_inverse(g).as_list() == [("b", ["d"]), ("c", ["e"]), ("a", ["b", "c"])]


def test_tree_faithful_inverse_adds_the_needed_edges():
    g = model("latent a b c", "data d e", **TREE)
    plan = invert(g)
    assert plan.as_list() == [("c", ["d", "e"]), ("b", ["c", "d"]), ("a", ["b", "c"])]
    assert {s.kind for s in plan.steps} == {"amortized"}


def test_naive_reversal_is_not_faithful_on_the_tree_and_nami_is():
    g = model("latent a b c", "data d e", **TREE)
    violations = faithfulness_violations(g, naive_inverse(g))
    # b sees only d, yet depends on e through a
    assert ("b", {"e"}) in violations
    assert faithfulness_violations(g, invert(g)) == []


def test_discrete_parent_is_sampled_first_and_enumerated_in_the_guide():
    g = model("latent z", "data x", "finite y", edges="z->x, y->x")
    plan = invert(g)
    assert plan.as_list() == [("y", ["x"]), ("z", ["x", "y"])]
    assert kinds(plan) == {"y": "enumerated_in_guide", "z": "amortized"}


def test_mixture_label_is_summed_out_in_the_model():
    plan = invert(model("data x", "finite c", edges="c->x"))
    assert plan.steps == (GuideStep("c", (), "enumerated_in_model"),)
    assert plan.as_list() == [("c", "enumerated in model")]


def test_globals_come_first_with_no_inputs():
    g = model("input u", "data y", "global w b", edges="w->y, b->y, u->y")
    plan = invert(g)
    assert plan.as_list() == [("w", []), ("b", [])]
    assert kinds(plan) == {"w": "global", "b": "global"}


def test_ppca_latent_sees_the_data():
    assert invert(model("data x", "latent z", edges="z->x")).as_list() == [("z", ["x"])]


def test_globals_inputs_and_co_parents_feed_a_local_guide():
    # z's guide sees the global it is drawn from and x's other parent, the input u
    g = model("global g", "input u", "latent z", "data x", edges="g->z, z->x, u->x")
    assert invert(g).as_list() == [("g", []), ("z", ["g", "u", "x"])]


def test_discrete_needed_only_through_the_guide_closure_is_enumerated_in_the_guide():
    # z's guide needs y1; y1's guide needs y2: both must be sampled by the guide
    g = model("latent z", "finite y1 y2", "data x", edges="z->y1, y1->y2, y2->x")
    plan = invert(g)
    assert plan.as_list() == [("y2", ["x"]), ("y1", ["y2"]), ("z", ["y1"])]
    assert kinds(plan) == {"y2": "enumerated_in_guide", "y1": "enumerated_in_guide", "z": "amortized"}


def test_discrete_latent_no_continuous_guide_needs_is_summed_out_even_beside_one_that_is():
    # z's guide reads y1, so y1 is enumerated in the guide; y2 is read by no guide that the
    # guide samples (its own guide would read y1), so the model sums it out
    g = model("latent z", "finite y1 y2", "data x", edges="y2->y1, y1->x, z->x")
    plan = invert(g)
    assert plan.as_list() == [("y1", ["x"]), ("z", ["y1", "x"]), ("y2", "enumerated in model")]
    assert faithfulness_violations(g, plan) == []


def test_all_discrete_model_sums_everything_out_in_declaration_order():
    g = model("finite y2 y1", "data x", edges="y2->y1, y1->x")
    assert invert(g).as_list() == [("y2", "enumerated in model"), ("y1", "enumerated in model")]


def test_ties_eliminate_continuous_latents_before_discrete_ones():
    # both frontier latents add no fill-in: the continuous one is eliminated first and so
    # sampled last, whatever the declaration order
    for order in (("finite y", "latent z"), ("latent z", "finite y")):
        g = model(*order, "data x", edges="z->x, y->x")
        assert [s.latent for s in invert(g).steps] == ["y", "z"]


def test_ties_between_equal_latents_follow_declaration_order():
    g1 = model("latent a c b", "data d e", edges="a->b, a->c, b->d, c->e")
    # now c is declared before b, so c is eliminated first and b sampled first
    assert invert(g1).as_list() == [("b", ["d", "e"]), ("c", ["b", "e"]), ("a", ["c", "b"])]


# ---------------------------------------------------------------- errors and API


def test_unbounded_discrete_latent_is_a_guide_error_with_its_span():
    g = model("count n", "data x", edges="n->x")
    src = Source("m.dgm", "model m {\n  latent n\n}")
    g.nodes["n"]["span"] = Span("m.dgm", 2, 10, 2, 11, source=src)
    with pytest.raises(DGMGuideError) as info:
        invert(g)
    text = str(info.value)
    assert text.startswith("m.dgm:2:10: latent 'n' is discrete with unbounded support (Poisson)")
    assert "Bernoulli, Categorical and Binomial" in text


def test_a_cycle_is_a_model_error_naming_it():
    g = model("latent a b", "data x", edges="a->b, b->a, b->x")
    with pytest.raises(DGMModelError, match=r"cycle among random variables: a -> b -> a"):
        invert(g)


def test_a_node_without_a_role_is_a_usage_error():
    g = nx.DiGraph([("z", "x")])
    with pytest.raises(DGMUsageError, match="graph node 'z' has role None"):
        invert(g)


def test_guide_step_rejects_unknown_kinds_and_plan_finds_steps():
    with pytest.raises(ValueError, match="unknown guide step kind"):
        GuideStep("z", (), "sampled")
    plan = invert(model("latent z", "data x", edges="z->x"))
    assert plan.step("z") == GuideStep("z", ("x",), "amortized")
    with pytest.raises(KeyError, match="no guide step for 'w'"):
        plan.step("w")


# ---------------------------------------------------------------- from the model IR


def _ir(name, variables, draws):
    return ModelIR(name, tuple(Variable(n, role, shape) for n, role, shape in variables), tuple(draws))


def test_corpus_models_from_their_ir():
    hvae = _ir("digits_hvae", [("x", "data", (64,)), ("z2", "latent", (8,)), ("z1", "latent", (16,))], [
        Draw("z2", "Normal", (("loc", Lit(0, (), True)), ("scale", Lit(1, (), True)))),
        Draw("z1", "Normal", packed=NetCall("net1", (Ref("z2", (8,)),), (32,))),
        Draw("x", "Binomial", (("total_count", Lit(16, (), True)),
                               ("logits", NetCall("net2", (Ref("z1", (16,)),), (64,))))),
    ])
    gmm = _ir("gmm", [("mu", "param", (3, 2)), ("x", "data", (2,)), ("c", "latent", ())], [
        Draw("c", "Categorical", (("logits", BuiltinCall("zeros", (Lit(3, (), True),), (3,))),)),
        Draw("x", "Normal", (("loc", IndexExpr(Ref("mu", (3, 2)), (Ref("c", ()),), (2,))),
                             ("scale", Lit(0.5, ())))),
    ])
    linreg = _ir("linreg", [("u", "input", (3,)), ("y", "data", ()), ("w", "global", (3,)),
                            ("b", "global", ())], [
        Draw("w", "Normal", (("loc", Lit(0, (), True)), ("scale", Lit(1, (), True)))),
        Draw("b", "Normal", (("loc", Lit(0, (), True)), ("scale", Lit(10, (), True)))),
        Draw("y", "Normal", (("loc", Binary("+", BuiltinCall("dot", (Ref("w", (3,)), Ref("u", (3,))), ()),
                                            Ref("b", ()), ())), ("scale", Lit(0.5, ())))),
    ])
    assert invert(build_graph(hvae)).as_list() == [("z1", ["x"]), ("z2", ["z1"])]
    assert invert(build_graph(gmm)).as_list() == [("c", "enumerated in model")]
    plan = invert(build_graph(linreg))
    assert plan.steps == (GuideStep("w", (), "global"), GuideStep("b", (), "global"))


def test_discrete_parent_from_its_ir():
    ir = _ir("mix", [("z", "latent", (2,)), ("x", "data", (4,)), ("y", "latent", ())], [
        Draw("z", "Normal", (("loc", Lit(0, (), True)), ("scale", Lit(1, (), True)))),
        Draw("y", "Categorical", (("logits", BuiltinCall("zeros", (Lit(3, (), True),), (3,))),)),
        Draw("x", "Normal", packed=NetCall("dec", (Ref("z", (2,)), BuiltinCall(
            "onehot", (Ref("y", ()), Lit(3, (), True)), (3,))), (8,))),
    ])
    plan = invert(build_graph(ir))
    assert plan.as_list() == [("y", ["x"]), ("z", ["x", "y"])]
    assert kinds(plan) == {"y": "enumerated_in_guide", "z": "amortized"}


# ---------------------------------------------------------------- properties


@st.composite
def random_models(draw, max_nodes: int = 8) -> nx.DiGraph:
    """A random DAG over up to `max_nodes` nodes, declared in a topological order: latents
    (some finite discrete), data, inputs (no parents) and globals (only global parents)."""
    n = draw(st.integers(2, max_nodes))
    kinds_ = draw(st.lists(st.sampled_from(["latent", "latent", "finite", "data", "data",
                                             "input", "global"]), min_size=n, max_size=n))
    graph = nx.DiGraph()
    for i, kind in enumerate(kinds_):
        graph.add_node(f"v{i}", **NODE_KINDS[kind])
    for j, child_kind in enumerate(kinds_):
        for i in range(j):
            if child_kind == "input" or (child_kind == "global" and kinds_[i] != "global"):
                continue
            if draw(st.integers(0, 2)) == 0:
                graph.add_edge(f"v{i}", f"v{j}")
    return graph


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=200, deadline=None)
@given(graph=random_models())
def test_every_guide_step_is_faithful_to_the_model(graph, order):
    assert faithfulness_violations(graph, invert(graph, order)) == []


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=200, deadline=None)
@given(graph=random_models())
def test_incremental_elimination_matches_the_obvious_algorithm(graph, order):
    plan = invert(graph, order)
    sampled = [(s.latent, s.inputs) for s in plan.steps if s.kind in ("amortized", "enumerated_in_guide")]
    summed_out = {s.latent for s in plan.steps if s.kind == "enumerated_in_model"}
    reference = [(v, inputs) for v, inputs in reference_inverse(graph, order) if v not in summed_out]
    assert sampled == reference
    assert plan.order == order


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=200, deadline=None)
@given(graph=random_models())
def test_plan_covers_each_latent_once_and_follows_the_discrete_rule(graph, order):
    plan = invert(graph, order)
    roles = dict(graph.nodes(data="role"))
    names = [s.latent for s in plan.steps]
    assert sorted(names) == sorted(n for n, r in roles.items() if r in ("latent", "global"))
    globals_ = [n for n in graph.nodes if roles[n] == "global"]
    assert names[: len(globals_)] == globals_
    needed_by = {}
    for step in plan.steps:
        for u in step.inputs:
            needed_by.setdefault(u, []).append(step)
    for step in plan.steps:
        if graph.nodes[step.latent]["discrete"] and roles[step.latent] == "latent":
            readers = [s for s in needed_by.get(step.latent, []) if s.kind != "enumerated_in_model"]
            expected = "enumerated_in_guide" if readers else "enumerated_in_model"
            assert step.kind == expected
        elif roles[step.latent] == "latent":
            assert step.kind == "amortized"


@settings(max_examples=100, deadline=None)
@given(random_models(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_edge_insertion_order(graph, rng):
    edges = list(graph.edges)
    rng.shuffle(edges)
    shuffled = nx.DiGraph()
    shuffled.add_nodes_from(graph.nodes(data=True))
    shuffled.add_edges_from(edges)
    assert invert(shuffled) == invert(graph) == invert(graph)
    assert invert(shuffled, "minfill") == invert(graph, "minfill")


def test_unknown_order_is_a_usage_error():
    with pytest.raises(DGMUsageError, match="unknown guide order 'fewest'"):
        invert(model("latent a", "data x", edges="a->x"), "fewest")


# ---------------------------------------------------------------- size


def test_long_chain_is_fast():
    n = 5000
    g = model("latent " + " ".join(f"z{i}" for i in range(n)), "data x",
              edges=", ".join(f"z{i}->z{i + 1}" for i in range(n - 1)) + f", z{n - 1}->x")
    start = time.perf_counter()
    plan = invert(g)
    elapsed = time.perf_counter() - start
    print(f"\ninvert: chain of {n} latents in {elapsed * 1000:.0f} ms")
    assert plan.steps[0] == GuideStep(f"z{n - 1}", ("x",), "amortized")
    assert all(s.inputs == (f"z{i + 1}",) for i, s in zip(range(n - 2, -1, -1), plan.steps[1:]))


def binary_tree(depth: int) -> tuple[nx.DiGraph, list[str], list[str]]:
    """A binary tree of latents t1.. in heap order, each leaf observed by one x."""
    latents = [f"t{i}" for i in range(1, 2**depth)]
    observed = [f"x{i}" for i in range(2 ** (depth - 1), 2**depth)]
    edges = [f"t{i // 2}->t{i}" for i in range(2, 2**depth)]
    edges += [f"t{i}->x{i}" for i in range(2 ** (depth - 1), 2**depth)]
    g = model("latent " + " ".join(latents), "data " + " ".join(observed), edges=", ".join(edges))
    return g, latents, observed


def test_min_fill_inverts_a_binary_tree_from_its_leaves_with_n_log_n_inputs():
    """NaMI eliminates the tree from the root: the last levels read every leaf below them
    (328,191 inputs at 1,023 latents). Min-fill eliminates from the leaves up: a latent reads
    its parent and the observations below it, about n/2 log2 n in all."""
    g, latents, observed = binary_tree(10)
    plan = invert(g, "minfill")
    total = sum(len(s.inputs) for s in plan.steps)
    assert sum(len(s.inputs) for s in invert(g).steps) == 328_191
    assert total <= 7_000, total  # 6,142; the bar is 20,000
    assert faithfulness_violations(g, plan) == []
    small, *_ = binary_tree(3)
    assert invert(small, "minfill").as_list()[-4:] == [
        ("t7", ["t3", "x7"]), ("t6", ["t3", "x6"]), ("t5", ["t2", "x5"]), ("t4", ["t2", "x4"])]


def test_binary_tree_observed_at_leaves():
    depth = 10  # 1,023 latents, 512 observations
    g, latents, observed = binary_tree(depth)
    start = time.perf_counter()
    plan = invert(g)
    elapsed = time.perf_counter() - start
    widest = max(len(s.inputs) for s in plan.steps)
    print(f"\ninvert: binary tree of {len(latents)} latents in {elapsed:.2f} s (widest guide input: {widest})")
    assert sorted(s.latent for s in plan.steps) == sorted(latents)
    assert plan.steps[-1].latent == "t1"  # the root is eliminated first, sampled last
    # spot-check faithfulness by d-separation on a sample of steps
    rng = random.Random(0)
    known = set(observed)
    for step in plan.steps:
        if rng.random() < 0.02:
            unseen = known - set(step.inputs)
            assert nx.is_d_separator(g, {step.latent}, unseen, set(step.inputs))
        known.add(step.latent)
