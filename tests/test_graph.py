"""The model graph: nodes and their attributes, edges through expressions and lets, cycles,
topological order, and speed on long models. The IRs are built by hand, as `check` would."""
from __future__ import annotations

import sys
import time

import networkx as nx
import pytest

from dgmlang.errors import DGMModelError, DGMNameError
from dgmlang.graph import build_graph, topological_order
from dgmlang.inverse import invert
from dgmlang.ir import (
    Binary, BuiltinCall, Draw, IndexExpr, LetDef, Lit, ModelIR, NetCall, Ref, SliceItem,
    Stack, Unary, Variable,
)
from dgmlang.source import Source, Span

ONE = Lit(1, (), True)
ZERO = Lit(0, (), True)


def standard_normal(target: str) -> Draw:
    return Draw(target, "Normal", (("loc", ZERO), ("scale", ONE)))


def normal(target: str, loc, scale=ONE) -> Draw:
    return Draw(target, "Normal", (("loc", loc), ("scale", scale)))


def ir_of(name: str, variables, draws, lets=()) -> ModelIR:
    return ModelIR(name, tuple(Variable(*v) for v in variables), tuple(draws), tuple(lets))


DIGITS_CVAE = ir_of(
    "digits_cvae",
    [("y", "input", (), "int"), ("x", "data", (64,)), ("z", "latent", (16,))],
    [
        standard_normal("z"),
        Draw("x", "Binomial", (
            ("total_count", Lit(16, (), True)),
            ("logits", NetCall("net0", (Ref("z", (16,)), BuiltinCall(
                "onehot", (Ref("y", ()), Lit(10, (), True)), (10,))), (64,))),
        )),
    ],
)

DIGITS_HVAE = ir_of(
    "digits_hvae",
    [("x", "data", (64,)), ("z2", "latent", (8,)), ("z1", "latent", (16,))],
    [
        standard_normal("z2"),
        Draw("z1", "Normal", packed=NetCall("net0", (Ref("z2", (8,)),), (32,))),
        Draw("x", "Binomial", (("total_count", Lit(16, (), True)),
                               ("logits", NetCall("net1", (Ref("z1", (16,)),), (64,))))),
    ],
)

GMM = ir_of(
    "gmm",
    [("mu", "param", (3, 2)), ("x", "data", (2,)), ("c", "latent", (), "int")],
    [
        Draw("c", "Categorical", (("logits", BuiltinCall("zeros", (Lit(3, (), True),), (3,))),)),
        normal("x", IndexExpr(Ref("mu", (3, 2)), (Ref("c", ()),), (2,)), Lit(0.5, ())),
    ],
)

LINREG = ir_of(
    "linreg",
    [("u", "input", (3,)), ("y", "data", ()), ("w", "global", (3,)), ("b", "global", ())],
    [
        standard_normal("w"),
        normal("b", ZERO, Lit(10, (), True)),
        normal("y", Binary("+", BuiltinCall("dot", (Ref("w", (3,)), Ref("u", (3,))), ()),
                           Ref("b", ()), ()), Lit(0.5, ())),
    ],
)

PPCA = ir_of(
    "ppca",
    [("W", "const", (3, 2)), ("x", "data", (3,)), ("z", "latent", (2,))],
    [
        standard_normal("z"),
        normal("x", BuiltinCall("matmul", (Ref("W", (3, 2)), Ref("z", (2,))), (3,)), Lit(0.1, ())),
    ],
)


def edges(graph: nx.DiGraph) -> set[tuple[str, str]]:
    return set(graph.edges)


# ---------------------------------------------------------------- nodes and edges


def test_nodes_are_random_variables_and_inputs_in_declaration_order():
    g = build_graph(GMM)
    assert list(g.nodes) == ["x", "c"]  # the param mu is not a node
    assert list(build_graph(LINREG).nodes) == ["u", "y", "w", "b"]
    assert list(build_graph(PPCA).nodes) == ["x", "z"]  # nor is the const W


def test_node_attributes_come_from_the_ir_and_the_distribution_registry():
    g = build_graph(DIGITS_CVAE)
    assert g.nodes["y"] == {"role": "input", "shape": (), "dist": None, "discrete": False,
                            "finite": False, "span": None}
    assert g.nodes["x"]["dist"] == "Binomial"
    assert (g.nodes["x"]["discrete"], g.nodes["x"]["finite"]) == (True, True)
    assert (g.nodes["z"]["role"], g.nodes["z"]["shape"], g.nodes["z"]["discrete"]) == ("latent", (16,), False)
    c = build_graph(GMM).nodes["c"]
    assert (c["dist"], c["discrete"], c["finite"]) == ("Categorical", True, True)


def test_an_unbounded_discrete_distribution_is_discrete_but_not_finite():
    ir = ir_of("counts", [("x", "data", ()), ("n", "latent", (), "int")], [
        Draw("n", "Poisson", (("rate", Lit(3.0, ())),)),
        normal("x", Ref("n", ())),
    ])
    n = build_graph(ir).nodes["n"]
    assert (n["discrete"], n["finite"]) == (True, False)


def test_the_node_span_is_the_declaration():
    span = Span("m.dgm", 3, 5, 3, 16)
    ir = ModelIR("m", (Variable("z", "latent", (), span=span),), (standard_normal("z"),))
    assert build_graph(ir).nodes["z"]["span"] == span


def test_edges_follow_references_in_every_kind_of_expression():
    assert edges(build_graph(DIGITS_CVAE)) == {("z", "x"), ("y", "x")}  # net args, onehot
    assert edges(build_graph(DIGITS_HVAE)) == {("z2", "z1"), ("z1", "x")}  # packed net
    assert edges(build_graph(GMM)) == {("c", "x")}  # an index
    assert edges(build_graph(LINREG)) == {("w", "y"), ("u", "y"), ("b", "y")}
    assert edges(build_graph(PPCA)) == {("z", "x")}


def test_edges_through_unary_stack_slices_and_scale():
    ir = ir_of("m", [("a", "latent", (4,)), ("b", "latent", ()), ("s", "global", ()),
                     ("x", "data", (2,))], [
        standard_normal("a"), standard_normal("b"), standard_normal("s"),
        normal("x",
               Stack((Unary("-", IndexExpr(Ref("a", (4,)), (SliceItem(0, 1),), ()), ()), Ref("b", ())), (2,)),
               BuiltinCall("exp", (Ref("s", ()),), ())),
    ])
    assert edges(build_graph(ir)) == {("a", "x"), ("b", "x"), ("s", "x")}


def test_edges_through_let_chains():
    ir = ir_of("m", [("u", "input", ()), ("z", "latent", ()), ("x", "data", ())], [
        standard_normal("z"),
        normal("x", Ref("h2", ())),
    ], lets=[
        LetDef("h1", Binary("*", Ref("z", ()), Lit(2, (), True), ())),
        LetDef("unused", Ref("u", ())),
        LetDef("h2", Binary("+", Ref("h1", ()), Ref("u", ()), ())),
    ])
    assert edges(build_graph(ir)) == {("z", "x"), ("u", "x")}


def test_a_let_defined_after_the_let_that_uses_it_still_resolves():
    ir = ir_of("m", [("z", "latent", ()), ("x", "data", ())], [standard_normal("z"), normal("x", Ref("a", ()))],
               lets=[LetDef("a", Ref("b", ())), LetDef("b", Ref("z", ()))])
    assert edges(build_graph(ir)) == {("z", "x")}


# ---------------------------------------------------------------- errors


def test_a_cycle_is_named_in_order_and_points_at_a_draw_on_it():
    source = Source("loop.dgm", "model loop {\n  latent a\n  latent b\n  latent c\n"
                                "  a ~ Normal(c, 1)\n  b ~ Normal(a, 1)\n  c ~ Normal(b, 1)\n}\n")

    def draw(target, parent, line):
        return Draw(target, "Normal", (("loc", Ref(parent, ())), ("scale", ONE)),
                    span=Span("loop.dgm", line, 3, line, 19, source=source))

    ir = ModelIR("loop", tuple(Variable(n, "latent", ()) for n in "abc"),
                 (draw("a", "c", 5), draw("b", "a", 6), draw("c", "b", 7)))
    with pytest.raises(DGMModelError) as info:
        build_graph(ir)
    assert str(info.value).splitlines()[:3] == [
        "loop.dgm:5:3: cycle among random variables: a -> b -> c -> a",
        "      a ~ Normal(c, 1)",
        "      ^^^^^^^^^^^^^^^^",
    ]


def test_a_cycle_through_a_let_and_data_is_found():
    ir = ir_of("m", [("x", "data", ()), ("z", "latent", ())], [
        normal("z", Ref("h", ())), normal("x", Ref("z", ())),
    ], lets=[LetDef("h", Binary("*", Ref("x", ()), Lit(2.0, ()), ()))])
    with pytest.raises(DGMModelError, match=r"cycle among random variables: x -> z -> x"):
        build_graph(ir)


def test_a_variable_drawn_from_itself_is_a_cycle():
    ir = ir_of("m", [("z", "latent", ())], [normal("z", Ref("z", ()))])
    with pytest.raises(DGMModelError) as info:
        build_graph(ir)
    assert info.value.message == "cycle among random variables: z -> z"


def test_lets_that_depend_on_each_other_are_a_model_error():
    ir = ir_of("m", [("x", "data", ())], [normal("x", Ref("a", ()))],
               lets=[LetDef("a", Ref("b", ())), LetDef("b", Ref("a", ()))])
    with pytest.raises(DGMModelError, match="depends on itself"):
        build_graph(ir)


def test_an_unknown_name_is_a_name_error():
    ir = ir_of("m", [("x", "data", ())], [normal("x", Ref("nope", (), span=Span("m.dgm", 4, 16, 4, 20)))])
    with pytest.raises(DGMNameError, match="unknown name 'nope'") as info:
        build_graph(ir)
    assert info.value.span.line == 4


# ---------------------------------------------------------------- order


def test_topological_order_breaks_ties_by_declaration_order():
    ir = ir_of("m", [("x", "data", ()), ("b", "latent", ()), ("a", "latent", ()), ("u", "input", ())], [
        standard_normal("b"), standard_normal("a"),
        normal("x", Binary("+", Ref("a", ()), Ref("b", ()), ()), BuiltinCall("exp", (Ref("u", ()),), ())),
    ])
    assert topological_order(build_graph(ir)) == ["b", "a", "u", "x"]


def test_topological_order_of_a_cyclic_graph_names_the_cycle():
    g = nx.DiGraph([("p", "q"), ("q", "r"), ("r", "q")])
    with pytest.raises(DGMModelError, match="q -> r -> q"):
        topological_order(g)


# ---------------------------------------------------------------- size


def _chain_ir(n: int, *, through_lets: bool) -> ModelIR:
    variables = [Variable("x", "data", ())] + [Variable(f"z{i}", "latent", ()) for i in range(n)]
    draws = [standard_normal("z0")]
    lets = []
    for i in range(1, n):
        parent = f"z{i - 1}"
        if through_lets:
            lets.append(LetDef(f"h{i}", Binary("*", Ref(parent, ()), Lit(0.9, ()), ())))
            parent = f"h{i}"
        draws.append(normal(f"z{i}", Ref(parent, ())))
    draws.append(normal("x", Ref(f"z{n - 1}", ())))
    return ModelIR("chain", tuple(variables), tuple(draws), tuple(lets))


@pytest.mark.parametrize("through_lets", [False, True])
def test_chain_of_5000_latents_builds_and_inverts_quickly(through_lets):
    ir = _chain_ir(5000, through_lets=through_lets)
    start = time.perf_counter()
    g = build_graph(ir)
    built = time.perf_counter()
    plan = invert(g)
    done = time.perf_counter()
    print(f"\nchain of 5000 latents{' through lets' if through_lets else ''}: "
          f"graph {1000 * (built - start):.0f} ms, invert {1000 * (done - built):.0f} ms")
    assert g.number_of_edges() == 5000
    assert plan.as_list()[:2] == [("z4999", ["x"]), ("z4998", ["z4999"])]


def test_a_let_chain_longer_than_the_recursion_limit_resolves():
    n = sys.getrecursionlimit() + 100
    lets = [LetDef("h0", Ref("z", ()))]
    lets += [LetDef(f"h{i}", Unary("-", Ref(f"h{i - 1}", ()), ())) for i in range(1, n)]
    ir = ir_of("m", [("z", "latent", ()), ("x", "data", ())],
               [standard_normal("z"), normal("x", Ref(f"h{n - 1}", ()))], lets=lets[::-1])
    assert edges(build_graph(ir)) == {("z", "x")}


def test_a_deeply_nested_expression_is_walked_without_recursion():
    n = sys.getrecursionlimit() + 100
    names = [f"z{i}" for i in range(n)]
    total = Ref(names[0], ())
    for name in names[1:]:
        total = Binary("+", total, Ref(name, ()), ())
    ir = ir_of("m", [("x", "data", ())] + [(name, "latent", ()) for name in names],
               [standard_normal(name) for name in names] + [normal("x", total)])
    g = build_graph(ir)
    assert set(g.predecessors("x")) == set(names)


def test_a_let_over_thousands_of_lets_resolves_quickly():
    n = 5000
    lets = [LetDef(f"h{i}", Binary("*", Ref("z", ()), Lit(float(i), ()), ())) for i in range(n)]
    total = Ref("h0", ())
    for i in range(1, n):
        total = Binary("+", total, Ref(f"h{i}", ()), ())
    lets.insert(0, LetDef("s", total))  # defined before the lets it uses
    ir = ir_of("m", [("z", "latent", ()), ("x", "data", ())],
               [standard_normal("z"), normal("x", Ref("s", ()))], lets=lets)
    start = time.perf_counter()
    g = build_graph(ir)
    print(f"\nlet over {n} lets: graph in {1000 * (time.perf_counter() - start):.0f} ms")
    assert edges(g) == {("z", "x")}
