"""Checking lets and expressions: names, operators, lists, indexing, built-in functions, and
the order lets are checked in (a let whose shape waits on a network waits for its use)."""
from __future__ import annotations

import networkx as nx

from dgmlang import ast
from dgmlang import check_limits
from dgmlang import check_ranges as ranges
from dgmlang import ir
from dgmlang.check_constraints import builtin_range
from dgmlang.check_errors import (
    ROLE_WORDS,
    distribution_as_value,
    function_as_value,
    let_cycle,
    net_as_value,
    not_callable,
    unknown_function,
    unknown_name,
)
from dgmlang.check_shape_errors import (
    bad_const,
    bound_out_of_range,
    builtin_arity,
    builtin_keyword,
    builtin_shapes,
    cannot_broadcast,
    clamp_bounds_not_ordered,
    empty_list,
    empty_slice,
    index_not_int,
    index_not_scalar,
    index_out_of_range,
    index_scalar,
    list_items_differ,
    needs_vector,
    onehot_not_int,
    slice_step_zero,
    too_many_indices,
)
from dgmlang.check_shapes import Shape, broadcast_shapes, fmt_shape, to_float
from dgmlang.check_spans import head_span, name_span_in, op_span, source_text, walk_ast
from dgmlang.check_values import Dep, NO_WANT, Skip, Value, Want, merge_deps
from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, NETWORKS
from dgmlang.printer import format_expr


class ExpressionChecker:
    """Lets and expressions: each checked expression becomes a `Value` (its IR, integer-ness
    and bound, the variables it reads, its range). A part of `dgmlang.check.ModelChecker`,
    whose state (`vars`, `lets`, `netinfo`, ...) it reads and fills."""

    def order_lets(self) -> list[str]:
        """The lets in dependency order; a cycle among lets is
        reported once, naming it, and its lets are left out."""
        graph = nx.DiGraph()
        order = {name: i for i, name in enumerate(self.lets)}
        for name, let in self.lets.items():
            graph.add_node(name)
            for node in walk_ast(let.value):
                if isinstance(node, ast.Name) and node.name in self.lets:
                    graph.add_edge(node.name, name)
        for component in nx.strongly_connected_components(graph):
            if len(component) > 1 or any(graph.has_edge(n, n) for n in component):
                first = min(component, key=order.__getitem__)
                # Edges run from what a let reads to the let; the message follows "reads".
                reads = graph.subgraph(component).reverse()
                cycle = [u for u, _ in nx.find_cycle(reads, source=first)]
                self.report(let_cycle(cycle, name_span_in(self.lets[first].span, first)))
                self.bad_lets |= component
        graph.remove_nodes_from(self.bad_lets)
        ordered = list(nx.topological_sort(graph))
        # Whether each let waits on its use to fix a network's size, directly or through
        # the lets it reads; computed in dependency order, so without deep recursion.
        self.waiting_lets = set()
        for name in ordered:
            try:
                self.free_lets[name] = self.is_free(self.lets[name].value)
            except RecursionError:  # reported when the let itself is checked
                self.free_lets[name] = False
            if self.free_lets[name] or any(p in self.waiting_lets for p in graph.predecessors(name)):
                self.waiting_lets.add(name)
        return ordered

    def check_lets(self, ordered: list[str], waiting: bool) -> None:
        """Check the lets that do not wait on a use (`waiting` False: before the draws, so
        long chains of lets are checked without recursion), or all that are left."""
        for name in ordered:
            if name not in self.let_values and (waiting or name not in self.waiting_lets):
                self.current = self.lets[name].span
                self.attempt(self.let_value, name, NO_WANT)

    def let_value(self, name: str, want: Want) -> Value:
        """The checked value of let `name`; the first use of a let whose shape waits on a
        network fixes it with what that use expects."""
        if name in self.let_values:
            return self.let_values[name]
        if name in self.bad_lets:
            raise Skip
        self.bad_lets.add(name)  # until it succeeds, so an error is reported once
        value = self.expr(self.lets[name].value, want)
        self.bad_lets.discard(name)
        self.let_values[name] = value
        return value

    def is_free(self, expr: ast.Expr) -> bool:
        """Whether the shape of `expr` waits on what its consumer expects (a network whose
        output size is not known yet)."""
        if isinstance(expr, ast.Call):
            if expr.func in NETWORKS:
                return expr.func != "gru"  # a gru's output is shaped like its state
            named = self.netinfo.get(expr.func)
            if named is not None:
                return named.output_shape is None and named.kind != "gru"
            spec = BUILTINS.get(expr.func)
            if spec is not None and spec.shape_rule in ("elementwise", "last_dim") and expr.args:
                return self.is_free(expr.args[0])
            if spec is not None and spec.shape_rule == "broadcast":
                # like arithmetic: free when the known arguments are scalars
                free = [self.is_free(a) for a in expr.args]
                return any(free) and all(f or self.is_scalar(a) for f, a in zip(free, expr.args))
            return False
        if isinstance(expr, ast.BinOp):
            # A scalar on the other side broadcasts to anything, so it tells no size.
            left, right = self.is_free(expr.left), self.is_free(expr.right)
            return (left and (right or self.is_scalar(expr.right))) or (
                right and self.is_scalar(expr.left)
            )
        if isinstance(expr, ast.UnaryOp):
            return self.is_free(expr.operand)
        if isinstance(expr, ast.ListExpr):
            return bool(expr.items) and all(self.is_free(i) for i in expr.items)
        if isinstance(expr, ast.Name) and expr.name in self.lets:
            if expr.name in self.let_values or expr.name in self.bad_lets:
                return False
            if expr.name not in self.free_lets:
                self.free_lets[expr.name] = False  # guards against cycles (reported elsewhere)
                self.free_lets[expr.name] = self.is_free(self.lets[expr.name].value)
            return self.free_lets[expr.name]
        return False

    def is_scalar(self, expr: ast.Expr) -> bool:
        """Whether `expr` is known to be a scalar without checking it (numbers, scalar
        variables and checked lets, and arithmetic of those)."""
        if isinstance(expr, ast.Num):
            return True
        if isinstance(expr, ast.UnaryOp):
            return self.is_scalar(expr.operand)
        if isinstance(expr, ast.BinOp):
            return self.is_scalar(expr.left) and self.is_scalar(expr.right)
        if isinstance(expr, ast.Name):
            if expr.name in self.vars:
                return self.vars[expr.name].shape == ()
            value = self.let_values.get(expr.name)
            return value is not None and value.shape == ()
        return False

    def expr(self, e: ast.Expr, want: Want = NO_WANT) -> Value:
        if isinstance(e, ast.Num):
            bound = e.value + 1 if isinstance(e.value, int) and e.value >= 0 else None
            return Value(ir.Lit(e.value, (), isinstance(e.value, int), span=e.span),
                          isinstance(e.value, int), bound, range=ranges.literal(e.value))
        if isinstance(e, ast.Name):
            return self.name(e, want)
        if isinstance(e, ast.UnaryOp):
            inner = self.expr(e.operand, want.inner())
            if isinstance(inner.expr, ir.Lit) and not isinstance(inner.expr.value, tuple):
                lit = inner.expr
                return Value(ir.Lit(-lit.value, (), lit.is_int, span=e.span), inner.is_int,
                              range=ranges.literal(-lit.value))
            return Value(ir.Unary("-", inner.expr, inner.shape, span=e.span), inner.is_int,
                          None, inner.local, inner.random, ranges.neg(inner.range))
        if isinstance(e, ast.BinOp):
            return self.binop(e, want)
        if isinstance(e, ast.ListExpr):
            return self.list_expr(e, want)
        if isinstance(e, ast.Index):
            return self.index(e)
        if isinstance(e, ast.Call):
            return self.call(e, want)
        raise bad_const("this is not an expression", getattr(e, "span", None))

    def name(self, e: ast.Name, want: Want) -> Value:
        info = self.vars.get(e.name)
        if info is not None:
            role = info.decl.role
            if info.shape is None:
                raise Skip
            is_int = info.type == "int"
            local = Dep(e.name, e.span) if role in ir.LOCAL_ROLES else None
            random = Dep(e.name, e.span) if role in ir.RANDOM_ROLES else None
            if role == "const" and is_int and not info.shape:
                bound = info.value + 1 if info.value >= 0 else None
            else:
                bound = self.bounds.get(e.name)
            return Value(ir.Ref(e.name, info.shape, span=e.span), is_int, bound, local, random,
                          self.variable_range(e.name))
        if e.name in self.lets:
            value = self.let_value(e.name, want)
            local = Dep(value.local.name, e.span, e.name) if value.local else None
            random = Dep(value.random.name, e.span, e.name) if value.random else None
            return Value(ir.Ref(e.name, value.shape, span=e.span), value.is_int, value.bound, local, random,
                          value.range)
        if e.name in self.netinfo:
            self.netinfo[e.name].called = True  # used, wrongly: one error, not two
            raise net_as_value(e.name, e.span)
        if e.name in BUILTINS:
            raise function_as_value(e.name, e.span)
        if e.name in DISTRIBUTIONS:
            raise distribution_as_value(e.name, e.span)
        raise unknown_name(e.name, e.span, self.symbol_names())

    def binop(self, e: ast.BinOp, want: Want) -> Value:
        inner = want.inner()
        if want.shape is None and not self.is_free(e) and self.is_free(e.left) != self.is_free(e.right):
            if self.is_free(e.left):
                right = self.expr(e.right, inner)
                left = self.expr(e.left, Want(right.shape))
            else:
                left = self.expr(e.left, inner)
                right = self.expr(e.right, Want(left.shape))
        else:
            left = self.expr(e.left, inner)
            right = self.expr(e.right, inner)
        shape = broadcast_shapes(left.shape, right.shape)
        if shape is None:
            raise cannot_broadcast(e.op, left.shape, right.shape, op_span(e))
        is_int = left.is_int and right.is_int and e.op in ("+", "-", "*")
        return Value(
            ir.Binary(e.op, left.expr, right.expr, shape, span=e.span),
            is_int,
            None,
            merge_deps(left.local, right.local),
            merge_deps(left.random, right.random),
            self.binop_range(e, left, right),
        )

    def list_expr(self, e: ast.ListExpr, want: Want) -> Value:
        if not e.items:
            raise empty_list(e.span)
        item_want = Want(want.shape[1:], "real", want.why) if want.shape else Want(None, why=want.why)
        if item_want.shape is None:
            known = next((i for i in e.items if not self.is_free(i)), None)
            values = {}
            if known is not None:
                values[id(known)] = self.expr(known, NO_WANT)
                item_want = Want(values[id(known)].shape)
            items = [values.get(id(i)) or self.expr(i, item_want) for i in e.items]
        else:
            items = [self.expr(i, item_want) for i in e.items]
        first = items[0].shape
        for node, item in zip(e.items, items):
            if item.shape != first:
                raise list_items_differ(first, item.shape, node.span)
        shape = (len(items),) + first
        is_int = all(i.is_int for i in items)
        if all(isinstance(i.expr, ir.Lit) for i in items):
            value = tuple(i.expr.value for i in items)
            if not is_int:
                value = to_float(value)
            return Value(ir.Lit(value, shape, is_int, span=e.span), is_int, range=ranges.literal(value))
        local = random = None
        for i in items:
            local, random = merge_deps(local, i.local), merge_deps(random, i.random)
        return Value(ir.Stack(tuple(i.expr for i in items), shape, span=e.span), is_int, None, local, random,
                      ranges.hull(i.range for i in items))

    def index(self, e: ast.Index) -> Value:
        value = self.expr(e.value, Want(None, why="its value is indexed, which does not tell its size"))
        shape = value.shape
        if not shape:
            raise index_scalar(e.value.span)
        if len(e.indices) > len(shape):
            raise too_many_indices(shape, len(e.indices), e.span)
        items: list = []
        out: list[int] = []
        local, random = value.local, value.random
        for dim, (item, size) in enumerate(zip(e.indices, shape)):
            if isinstance(item, ast.Slice):
                parts = [
                    None if p is None else self.const_int(p, "a slice bound", positive=False)
                    for p in (item.start, item.stop, item.step)
                ]
                if parts[2] == 0:
                    raise slice_step_zero(item.span)
                length = len(range(*slice(*parts).indices(size)))
                if length == 0:
                    raise empty_slice(size, item.span)
                items.append(ir.SliceItem(*parts))
                out.append(length)
                continue
            index = self.expr(item, NO_WANT)
            if not index.is_int:
                detail = f"'{item.name}' is real" if isinstance(item, ast.Name) else "this value is real"
                raise index_not_int(detail, item.span)
            if index.shape:
                raise index_not_scalar(index.shape, item.span)
            fixed = self.fixed_int(index)
            if fixed is not None:
                if not -size <= fixed < size:
                    raise index_out_of_range(fixed, size, item.span)
            elif index.bound is not None:
                if index.bound > size:
                    # a step read in canonical text: the same from a .dgm file and from Python
                    written = format_expr(item) if isinstance(index.expr, ir.StepRef) else source_text(item)
                    raise bound_out_of_range(written, index.bound, size, "the indexed dimension", item.span)
            elif isinstance(item, ast.Name) and item.name in self.vars:
                self.pending_bounds.append((item.name, size, "the indexed dimension", item.span))
            elif isinstance(index.expr, ir.StepRef):  # a step of a chain: its classes come later
                self.pending_bounds.append((index.expr.name, size, "the indexed dimension", item.span))
            items.append(index.expr)
            local, random = merge_deps(local, index.local), merge_deps(random, index.random)
        out.extend(shape[len(e.indices):])
        # indexing leading dimensions keeps whole rows of a simplex
        kept = value.range if len(e.indices) < len(shape) else value.range.entries()
        return Value(
            ir.IndexExpr(value.expr, tuple(items), tuple(out), span=e.span),
            value.is_int,
            None,
            local,
            random,
            kept,
        )

    def call(self, e: ast.Call, want: Want) -> Value:
        if self.is_net_call(e):
            return self.net_call(e, want)
        spec = BUILTINS.get(e.func)
        if spec is not None:
            return self.builtin(e, spec, want)
        fspan = head_span(e.span, len(e.func))
        if e.func in DISTRIBUTIONS:
            raise distribution_as_value(e.func, fspan)
        if e.func in self.vars:
            raise not_callable(e.func, f"a {ROLE_WORDS[self.vars[e.func].decl.role]}", fspan)
        if e.func in self.lets:
            raise not_callable(e.func, "a let", fspan)
        raise unknown_function(e.func, fspan, [*BUILTINS, *NETWORKS, *self.netinfo])

    def builtin(self, e: ast.Call, spec, want: Want) -> Value:
        if e.kwargs:
            kw = e.kwargs[0]
            raise builtin_keyword(e.func, kw.name, head_span(kw.span, len(kw.name)))
        low, high = spec.arity
        if len(e.args) < low or (high is not None and len(e.args) > high):
            raise builtin_arity(e.func, spec.arity, len(e.args), e.span)
        rule = spec.shape_rule
        if rule == "fill":
            dims = tuple(self.const_int(a, f"a dimension of {e.func}", positive=True) for a in e.args)
            args = tuple(ir.Lit(d, (), True, span=a.span) for d, a in zip(dims, e.args))
            fill = ranges.literal(0 if e.func == "zeros" else 1)
            return Value(ir.BuiltinCall(e.func, args, dims, span=e.span), range=fill)
        if rule == "onehot":
            y = self.expr(e.args[0], Want(None, why="it is onehot's value"))
            if not y.is_int:
                detail = f"'{e.args[0].name}' is real" if isinstance(e.args[0], ast.Name) else "this value is real"
                raise onehot_not_int(detail, e.args[0].span)
            k = self.const_int(e.args[1], "onehot's number of classes", positive=True)
            check_limits.check_classes(k, f"onehot(..., {k})", e.args[1].span)
            if y.bound is not None and y.bound > k:
                raise bound_out_of_range(source_text(e.args[0]), y.bound, k, f"onehot(..., {k})", e.args[0].span)
            if y.bound is None and isinstance(e.args[0], ast.Name) and e.args[0].name in self.vars:
                self.pending_bounds.append((e.args[0].name, k, f"onehot(..., {k})", e.args[0].span))
            args = (y.expr, ir.Lit(k, (), True, span=e.args[1].span))
            return Value(ir.BuiltinCall(e.func, args, y.shape + (k,), span=e.span), False, None, y.local, y.random,
                          ranges.ONEHOT)
        if rule in ("elementwise", "last_dim"):
            arg = self.expr(e.args[0], want.inner())
            if rule == "last_dim" and not arg.shape:
                raise needs_vector(e.func, e.args[0].span)
            self.check_domain(e.func, e.args[0], arg)
            shape = arg.shape
            values = [arg]
        elif rule == "broadcast":
            values, shape = self.broadcast_args(e, want)
        else:
            why = f"it is an argument of {e.func}, which does not tell its size"
            values = [self.expr(a, Want(None, why=why)) for a in e.args]
            shape = self.builtin_shape(e, [v.shape for v in values])
        local = random = None
        for v in values:
            local, random = merge_deps(local, v.local), merge_deps(random, v.random)
        is_int = rule in ("reduce", "concat", "broadcast") and e.func != "mean" and all(v.is_int for v in values)
        return Value(
            ir.BuiltinCall(e.func, tuple(v.expr for v in values), shape, span=e.span),
            is_int,
            None,
            local,
            random,
            builtin_range(e.func, rule, values),
        )

    def broadcast_args(self, e: ast.Call, want: Want) -> tuple[list[Value], Shape]:
        """The arguments of min, max or clamp and the shape they broadcast to; a network among
        them takes the shape of the others (as in arithmetic) or of what the consumer wants.
        clamp's bounds must not be known to be out of order."""
        free = [self.is_free(a) for a in e.args]
        checked: dict[int, Value] = {}
        known: Shape = ()
        for i in sorted(range(len(e.args)), key=lambda i: free[i]):  # known shapes first
            arg_want = Want(known) if want.shape is None and free[i] and known else want.inner()
            checked[i] = self.expr(e.args[i], arg_want)
            known = broadcast_shapes(known, checked[i].shape) or known
        values = [checked[i] for i in range(len(e.args))]
        shape: Shape = ()
        for arg, value in zip(e.args, values):
            joined = broadcast_shapes(shape, value.shape)
            if joined is None:
                raise cannot_broadcast(e.func, shape, value.shape, arg.span)
            shape = joined
        if e.func == "clamp":
            low, high = values[1], values[2]
            constants = self.constant_value(low), self.constant_value(high)
            if None not in constants and ranges.any_above(*constants):
                raise clamp_bounds_not_ordered(format_expr(e.args[1]), format_expr(e.args[2]), True, e.args[1].span)
            if low.range.low > high.range.high:
                raise clamp_bounds_not_ordered(format_expr(e.args[1]), format_expr(e.args[2]), False, e.args[1].span)
        return values, shape

    def constant_value(self, value: Value):
        """The number or nested tuple a literal or a const stands for, else None."""
        expr = value.expr
        if isinstance(expr, ir.Lit):
            return expr.value
        if isinstance(expr, ir.Ref) and expr.name in self.vars and self.vars[expr.name].decl.role == "const":
            return self.vars[expr.name].value
        return None

    def builtin_shape(self, e: ast.Call, shapes: list[Shape]) -> Shape:
        rule, name = BUILTINS[e.func].shape_rule, e.func
        if rule == "reduce":
            return ()
        if rule == "dot":
            a, b = shapes
            if len(a) != 1 or len(b) != 1 or a != b:
                raise builtin_shapes(name, f"needs two vectors of one length, got shapes {fmt_shape(a)} and {fmt_shape(b)}", e.span)
            return ()
        if rule == "matmul":
            a, b = shapes
            if not a or not b:
                raise builtin_shapes(
                    name, f"needs arrays, got shapes {fmt_shape(a)} and {fmt_shape(b)}", e.span,
                    "multiply by a scalar with *",
                )
            inner_a = a[-1]
            inner_b = b[-2] if len(b) > 1 else b[0]
            batch = broadcast_shapes(a[:-2], b[:-2])
            if inner_a != inner_b or batch is None:
                raise builtin_shapes(
                    name,
                    f"shapes {fmt_shape(a)} and {fmt_shape(b)} do not fit",
                    e.span,
                    f"the first's last dimension ({inner_a}) must equal the second's "
                    f"{'second-to-last dimension' if len(b) > 1 else 'length'} ({inner_b})",
                )
            return batch + (a[-2:-1] if len(a) > 1 else ()) + (b[-1:] if len(b) > 1 else ())
        if rule == "concat":
            first = shapes[0]
            for arg, shape in zip(e.args, shapes):
                if not shape:
                    raise builtin_shapes(
                    name, "cannot join a scalar", arg.span, "write [x] for a vector of one entry"
                )
                if len(shape) != len(first) or shape[:-1] != first[:-1]:
                    raise builtin_shapes(
                        name,
                        f"shapes {fmt_shape(first)} and {fmt_shape(shape)} differ in more than their last dimension",
                        arg.span,
                        "concat joins arrays along their last dimension; the others must agree",
                    )
            return first[:-1] + (sum(s[-1] for s in shapes),)
        raise AssertionError(rule)  # every rule is handled above
