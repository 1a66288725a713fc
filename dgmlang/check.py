"""Syntax tree to checked model: `check(program) -> tuple[ModelIR, ...]`, or a `DGMError`.

The checker resolves every name, role, shape and type of a model, binds each distribution's
arguments to their Pyro names, infers every network's output size from the parameter it
feeds, and rejects what later stages cannot serve. Independent errors are all reported
(`DGMErrors`); a statement that depends on something already reported is skipped quietly,
so one mistake gives one message.

>>> from dgmlang.parse import parse
>>> (vae,) = check(parse('''
... model vae {
...     data   x[64]
...     latent z[16]
...     z ~ Normal(0, 1)
...     x ~ Binomial(16, logits = mlp(z, hidden = [256, 256]))
... }''', "vae.dgm"))
>>> vae.draw("x").param("logits")
NetCall(net='mlp_1', args=(Ref(name='z', shape=(16,)),), shape=(64,), constraint='real')
>>> vae.net("mlp_1").input_sizes, vae.net("mlp_1").output_size
((16,), 64)
>>> try:
...     check(parse("model m {\\n  latent z\\n  z ~ Normal(0)\\n}", "m.dgm"))
... except DGMError as err:
...     print(err)
m.dgm:3:7: Normal is missing its argument 'scale'
      z ~ Normal(0)
          ^^^^^^^^^
    hint: write Normal(loc, scale); only a network call may stand alone for all the arguments, as in Normal(mlp(z))
"""

from __future__ import annotations

import math
from typing import Callable

from dgmlang import ast
from dgmlang import ir
from dgmlang.check_constraints import ConstraintChecker
from dgmlang.check_draws import DrawChecker
from dgmlang.check_errors import (
    ROLE_WORDS,
    const_cycle,
    declared_twice,
    guide_on_role,
    model_declared_twice,
    param_int,
    reserved_name,
    unknown_family,
    unknown_guide_option,
    unknown_name,
)
from dgmlang.check_exprs import ExpressionChecker
from dgmlang.check_nets import NetChecker
from dgmlang.check_recur import RecurrenceChecker
from dgmlang.check_time import TimeChecker
from dgmlang import check_limits
from dgmlang import limits
from dgmlang.check_ranges import leaves, value_fits
from dgmlang.check_shape_errors import (
    bad_const, bad_size_list, const_dims, const_type, empty_list, list_items_differ,
    not_constant_int, not_positive_int, simplex_scalar,
)
from dgmlang.check_shapes import Shape, flat_size, negate, to_float
from dgmlang.check_spans import declared_span, head_span, position_of, source_text, walk_ast
from dgmlang.check_values import NO_WANT, NetInfo, Skip, Value, VarInfo, Want
from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, GUIDE_FAMILIES, NETWORKS, SUPPORT_TYPES
from dgmlang.errors import DGMError, DGMErrors, DGMModelError
from dgmlang.parse import paused_gc
from dgmlang.source import Span

__all__ = ["check"]


def check(program: ast.Program) -> tuple[ir.ModelIR, ...]:
    """One checked `ModelIR` per model of `program`, in file order.

    Raises the `DGMError` when there is one mistake, `DGMErrors` (sorted by position) when
    there are several independent ones.
    """
    errors: list[DGMError] = []
    models: list[ir.ModelIR] = []
    first_model: dict[str, ast.ModelDef] = {}
    for model in program.models:
        if model.name in first_model:
            errors.append(model_declared_twice(model, first_model[model.name]))
        else:
            first_model[model.name] = model
        checker = ModelChecker(model)
        with paused_gc():
            result = checker.run()
        errors.extend(checker.errors)
        if result is not None:
            models.append(result)
    if errors:
        raise _combine(errors)
    return tuple(models)


def _combine(errors: list[DGMError]) -> DGMError:
    unique: list[DGMError] = []
    seen: set[tuple] = set()
    for err in errors:
        key = (type(err), err.message, position_of(err.span))
        if key not in seen:
            seen.add(key)
            unique.append(err)
    return unique[0] if len(unique) == 1 else DGMErrors(unique)


class ModelChecker(RecurrenceChecker, TimeChecker, ExpressionChecker, ConstraintChecker, DrawChecker, NetChecker):
    """Checks one model; `run()` returns its IR, or None with `errors` filled. Names,
    declarations and consts are checked here; lets and expressions by `ExpressionChecker`,
    ranges by `ConstraintChecker`, draws by `DrawChecker`, networks by `NetChecker`, loops
    and sequences by `TimeChecker`, recurrent lets and inputs read by step by
    `RecurrenceChecker`."""

    def __init__(self, model: ast.ModelDef):
        self.model = model
        self.errors: list[DGMError] = []
        # name -> the statement that declares it (a Decl, Let or NetDef)
        self.declared: dict[str, ast.Decl | ast.Let | ast.NetDef] = {}
        self.vars: dict[str, VarInfo] = {}
        self.lets: dict[str, ast.Let] = {}
        self.let_values: dict[str, Value] = {}
        self.bad_lets: set[str] = set()
        self.free_lets: dict[str, bool] = {}
        self.waiting_lets: set[str] = set()
        self.netinfo: dict[str, NetInfo] = {}
        self.draws: dict[str, list[ast.Draw]] = {}
        self.consts_in_progress: set[str] = set()
        self.bad_consts: set[str] = set()
        self.anon_names: dict[int, str] = {}
        self.nets: list[ir.Net] = []
        self.anon_nets: dict[str, ir.Net] = {}
        self.bounds: dict[str, int] = {}
        self.pending_bounds: list[tuple[str, int, str, Span | None]] = []
        self.draw_irs: dict[int, ir.Draw] = {}
        self.unknown_targets = False
        self.net_weights: dict[str, int] = {}  # network -> its weights (dgmlang.limits)
        # recurrent lets (dgmlang.check_recur): their names, step statements, step shapes,
        # checked values, what they read, and those whose steps failed
        self.recurrent: set[str] = set()
        self.let_step_stmts: list[ast.Let] = []
        self.let_shapes: dict[str, tuple] = {}
        self.let_values_by_step: dict[int, Value] = {}
        self.let_deps: dict[str, tuple] = {}
        self.failed_lets: set[str] = set()

    def report(self, err: DGMError) -> None:
        self.errors.append(err)

    def attempt(self, fn: Callable, *args):
        """Run one independent check: report its error, swallow a skip; None on failure."""
        try:
            return fn(*args)
        except Skip:
            return None
        except DGMError as err:
            self.report(err)
            return None
        except RecursionError:
            self.report(DGMModelError("this statement is nested too deeply to check", self.current))
            return None

    # -------------------------------------------------------------- driver

    def run(self) -> ir.ModelIR | None:
        self.current = self.model.span
        body = self.body = self.flatten_body()
        for stmt in body:
            self.current = stmt.span
            self.attempt(self.declare, stmt)
        self.name_anonymous_nets(body)
        for decl in [s for s in body if isinstance(s, ast.Decl)]:
            if self.declared.get(decl.name) is decl:
                self.current = decl.span
                self.attempt(self.check_declaration, decl)
        for stmt in body:
            if isinstance(stmt, ast.NetDef) and self.declared.get(stmt.name) is stmt:
                self.current = stmt.span
                self.attempt(self.check_net_definition, stmt)
        ordered_lets = self.order_lets()
        self.check_lets(ordered_lets, waiting=False)
        self.check_recurrent_lets()
        for stmt in body:
            if isinstance(stmt, ast.Draw):
                self.current = stmt.span
                self.attempt(self.check_draw, stmt)
        self.check_lets(ordered_lets, waiting=True)
        self.check_sequences()
        self.check_completeness()
        if not self.errors:
            self.current = self.model.span
            self.attempt(self.check_model_limits)
        if self.errors:
            return None
        return self.build()

    def check_model_limits(self) -> None:
        """A model with no random variable, and the guide networks' size: each may read up
        to every data, input and latent value (a bound: the guide plan comes later)."""
        randoms = [n for n, v in self.vars.items() if v.decl.role in ir.RANDOM_ROLES]
        if not randoms:
            raise check_limits.empty_model(self.model.name, self.model.name_span or self.model.span)
        held = [(position_of(net.span), self.net_weights.get(net.name, 0), f"network '{net.name}'", net.span)
                for net in self.nets]
        held += [(position_of(v.decl.span), flat_size(v.shape), f"'{n}'", v.decl.name_span)
                 for n, v in self.vars.items() if v.decl.role in ("param", "global") and v.shape is not None]
        total = 0
        for _, weights, what, span in sorted(held, key=lambda h: h[0]):
            total += weights
            check_limits.check_total_weights(total, what, span)
        sizes = {n: flat_size(v.shape) for n, v in self.vars.items()
                 if v.decl.role in ir.LOCAL_ROLES and v.shape is not None}
        total = sum(sizes.values())
        widest = max([h for net in self.nets for h in net.hidden[-1:]], default=0)
        if any(net.kind == "deconv" for net in self.nets):
            widest = max(widest, 256)
        for name, info in self.vars.items():
            if info.decl.role != "latent" or info.shape is None:
                continue
            hidden = info.guide.hidden if info.guide is not None and info.guide.hidden else None
            first = hidden[0] if hidden else max(widest, 64)
            rest = (hidden or (first,)) + (sizes[name],)
            count = (total - sizes[name]) * first + first + check_limits.mlp_parameters(rest)
            check_limits.check_network(name, count, info.decl.name_span, guide=True)

    def build(self) -> ir.ModelIR:
        variables = []
        for stmt in self.body:
            if isinstance(stmt, ast.Decl):
                info = self.vars[stmt.name]
                variables.append(
                    ir.Variable(
                        stmt.name, stmt.role, info.shape, info.type, info.guide, info.value,
                        span=stmt.name_span or stmt.span,
                    )
                )
        draws = []
        for s in self.body:
            if isinstance(s, ast.Draw) and s.index is None:
                draws.append(self.draw_irs[id(s)])
            elif isinstance(s, ast.Draw) and s is self.draws[s.target][0]:
                draws.append(self.sequence_draw(s.target))
        recurrent = self.recurrent_let_defs()
        lets = [
            ir.LetDef(s.name, self.let_values[s.name].expr, span=s.span) if s.index is None
            else recurrent[s.name]
            for s in self.body
            if isinstance(s, ast.Let) and (s.index is None or s is self.let_runs[s.name][0][2])
        ]
        nets = sorted(self.nets, key=lambda n: position_of(n.span))
        return ir.ModelIR(
            self.model.name, tuple(variables), tuple(draws), tuple(lets), tuple(nets),
            span=self.model.span,
        )

    # -------------------------------------------------------------- names

    def declare(self, stmt) -> None:
        if isinstance(stmt, ast.Draw):
            self.draws.setdefault(stmt.target, []).append(stmt)
            return
        if isinstance(stmt, ast.Let) and stmt.index is not None:
            self.declare_let_step(stmt)
            return
        if stmt.name in self.declared:
            raise declared_twice(stmt.name, declared_span(stmt), declared_span(self.declared[stmt.name]))
        self.declared[stmt.name] = stmt
        if isinstance(stmt, ast.Let):
            self.lets[stmt.name] = stmt
        elif isinstance(stmt, ast.NetDef):
            kind = stmt.call.func
            self.netinfo[stmt.name] = NetInfo(stmt, kind, None)
        else:
            self.vars[stmt.name] = VarInfo(stmt, None, "real")
        if stmt.name in BUILTINS or stmt.name in DISTRIBUTIONS or stmt.name in NETWORKS:
            raise reserved_name(stmt.name, declared_span(stmt))

    def name_anonymous_nets(self, body) -> None:
        """`mlp_1`, `mlp_2`, `deconv_1`, ... in source order, skipping names a named net
        already has."""
        counters = {kind: 0 for kind in NETWORKS}
        for stmt in body:
            if isinstance(stmt, ast.Draw):
                roots = [stmt.dist]
            elif isinstance(stmt, ast.Let):
                roots = [stmt.value]
            elif isinstance(stmt, ast.Decl) and stmt.value is not None:
                roots = [stmt.value]
            else:
                continue
            for root in roots:
                for node in walk_ast(root):
                    if isinstance(node, ast.Call) and node.func in NETWORKS:
                        if id(node) in self.anon_names:
                            continue  # one node reached twice (an AST built in Python)
                        while True:
                            counters[node.func] += 1
                            name = f"{node.func}_{counters[node.func]}"
                            if name not in self.netinfo:
                                break
                        self.anon_names[id(node)] = name

    def symbol_names(self) -> list[str]:
        return list(self.declared)

    # -------------------------------------------------------------- declarations

    def check_declaration(self, decl: ast.Decl) -> None:
        info = self.vars[decl.name]
        if decl.role == "const":
            self.const_value(decl.name)
            return
        dims = []
        failed = False
        for dim in decl.dims:
            try:
                dims.append(self.const_int(dim, "a dimension", positive=True))
            except DGMError as err:
                self.report(err)
                failed = True
        declared_type = decl.type or "real"
        if decl.role == "param" and declared_type == "int":
            self.report(param_int(decl.name, decl.name_span))
            failed = True
        if declared_type == "simplex" and not dims and not failed:
            self.report(simplex_scalar(decl.name, decl.name_span))
            failed = True
        if decl.guide is not None:
            if decl.role not in ("latent", "global"):
                self.report(guide_on_role(decl.role, decl.guide[0].span if decl.guide else decl.span))
            else:
                info.guide, info.family_span = self.guide_options(decl.guide)
        info.type = self.random_type(decl) if decl.role in ir.RANDOM_ROLES else declared_type
        if not failed:
            check_limits.check_elements(tuple(dims), f"'{decl.name}'", decl.name_span)
            info.shape = tuple(dims)

    def random_type(self, decl: ast.Decl) -> str:
        """A random variable's type follows its distribution's support (order-free: read
        from the draw's syntax)."""
        draws = self.draws.get(decl.name)
        if draws:
            spec = DISTRIBUTIONS.get(draws[0].dist.func)
            if spec is not None:
                return SUPPORT_TYPES[spec.support]
        return decl.type or "real"

    def guide_options(self, options: tuple[ast.Keyword, ...]) -> tuple[ir.GuideOptions, Span | None]:
        hidden = None
        family = "normal"
        family_span = None
        for option in options:
            name_span = head_span(option.span, len(option.name))
            if option.name == "hidden":
                hidden = self.attempt(self.size_list, option.value, "hidden", True)
            elif option.name == "family":
                value = option.value
                if not isinstance(value, ast.Name):
                    self.report(unknown_family(source_text(value), value.span))
                elif value.name not in GUIDE_FAMILIES:
                    self.report(unknown_family(value.name, value.span))
                else:
                    family = value.name
                    family_span = option.span
            else:
                self.report(unknown_guide_option(option.name, name_span))
        return ir.GuideOptions(hidden, family), family_span

    def size_list(self, expr: ast.Expr, option: str, allow_empty: bool) -> tuple[int, ...]:
        """A list of positive integers (`hidden = [256, 256]`), or a const holding one."""
        if isinstance(expr, ast.Name) and expr.name in self.vars and self.vars[expr.name].decl.role == "const":
            value = self.const_value(expr.name)
            items = value if isinstance(value, tuple) else None
            if items is None or not all(isinstance(v, int) and v > 0 for v in items):
                raise bad_size_list(option, expr.span)
            for v in items:
                check_limits.check_width(v, option, expr.span)
            return items
        if not isinstance(expr, ast.ListExpr) or (not expr.items and not allow_empty):
            raise bad_size_list(option, expr.span)
        sizes = []
        for item in expr.items:
            size = self.const_int(item, f"a size in {option}", positive=True)
            check_limits.check_width(size, option, item.span)
            sizes.append(size)
        return tuple(sizes)

    # -------------------------------------------------------------- constants

    def const_value(self, name: str):
        """The value of const `name` (numbers and nested tuples), evaluated once."""
        info = self.vars[name]
        if info.shape is not None:
            return info.value
        if name in self.bad_consts:
            raise Skip
        if name in self.consts_in_progress:
            raise const_cycle(name, info.decl.name_span)
        self.consts_in_progress.add(name)
        try:
            return self.evaluate_const(info)
        except (DGMError, Skip):
            self.bad_consts.add(name)
            raise
        finally:
            self.consts_in_progress.discard(name)

    def evaluate_const(self, info: VarInfo):
        decl, name = info.decl, info.decl.name
        value, shape = self.literal(decl.value)
        if decl.dims:
            dims = tuple(self.const_int(d, "a dimension", positive=True) for d in decl.dims)
            if dims != shape:
                raise const_dims(name, dims, shape, decl.name_span)
        is_int = all(isinstance(v, int) for v in leaves(value))
        info.type = "int" if is_int else "real"
        if decl.type is not None and decl.type != "real":
            if not value_fits(value, decl.type):
                raise const_type(name, decl.type, decl.value.span)
            info.type = decl.type
        check_limits.check_numbers(value, decl.value.span)
        info.value, info.shape = value, shape
        return value

    def literal(self, expr: ast.Expr) -> tuple[object, Shape]:
        """A const's value: a number, a (rectangular) nested list, or another const."""
        if isinstance(expr, ast.Num):
            check_limits.check_number(expr.value, expr.span)
            return expr.value, ()
        if isinstance(expr, ast.UnaryOp):
            value, shape = self.literal(expr.operand)
            return negate(value), shape
        if isinstance(expr, ast.BinOp):
            (left, lshape), (right, rshape) = self.literal(expr.left), self.literal(expr.right)
            if lshape or rshape:
                raise bad_const("arithmetic in a const works on single numbers only", expr.span)
            return _arithmetic(expr.op, left, right, expr.span), ()
        if isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is None:
                if expr.name in self.declared:
                    raise bad_const(f"'{expr.name}' is not a const", expr.span)
                raise unknown_name(expr.name, expr.span, self.symbol_names())
            if info.decl.role != "const":
                raise bad_const(f"'{expr.name}' is a {ROLE_WORDS[info.decl.role]}", expr.span)
            value = self.const_value(expr.name)
            return value, info.shape
        if isinstance(expr, ast.ListExpr):
            if not expr.items:
                raise empty_list(expr.span)
            items = [self.literal(item) for item in expr.items]
            first = items[0][1]
            for item, (_, shape) in zip(expr.items, items):
                if shape != first:
                    raise list_items_differ(first, shape, item.span)
            values = tuple(v for v, _ in items)
            if not all(isinstance(v, int) for v in leaves(values)):
                values = to_float(values)
            return values, (len(items),) + first
        raise bad_const(f"'{source_text(expr)}' is not", expr.span)

    def const_int(self, expr: ast.Expr, what: str, positive: bool) -> int:
        """A compile-time integer: a number, an int const, or + - * of those."""
        if isinstance(expr, ast.Num):
            value = expr.value
            check_limits.check_number(value, expr.span)
        elif isinstance(expr, ast.UnaryOp):
            value = -self.const_int(expr.operand, what, positive=False)
        elif isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is None:
                if expr.name in self.declared:
                    raise not_constant_int(what, f"'{expr.name}' is not a const", expr.span)
                raise unknown_name(expr.name, expr.span, self.symbol_names())
            if info.decl.role != "const":
                raise not_constant_int(
                    what, f"'{expr.name}' is a {ROLE_WORDS[info.decl.role]}", expr.span
                )
            value = self.const_value(expr.name)
            if isinstance(value, tuple):
                raise not_constant_int(what, f"const '{expr.name}' is an array", expr.span)
        elif isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*"):
            left = self.const_int(expr.left, what, positive=False)
            right = self.const_int(expr.right, what, positive=False)
            value = {"+": left + right, "-": left - right, "*": left * right}[expr.op]
            if abs(value) > limits.MAX_INT:
                raise check_limits.int_result_too_large(f"{left} {expr.op} {right}", expr.span)
        else:
            raise not_constant_int(what, f"'{source_text(expr)}' is not", expr.span)
        if not isinstance(value, int):
            if positive:
                raise not_positive_int(what, value, expr.span)
            raise not_constant_int(what, f"{value} is not an integer", expr.span)
        if positive and value <= 0:
            raise not_positive_int(what, value, expr.span)
        return value

    def expr(self, e: ast.Expr, want: Want = NO_WANT) -> Value:
        """`ExpressionChecker.expr` within the limits: a written number in int64 or float32,
        and every value it computes of at most `limits.MAX_ELEMENTS` entries."""
        if isinstance(e, ast.Num):
            check_limits.check_number(e.value, e.span)
        value = super().expr(e, want)
        check_limits.check_elements(value.shape, "this value", e.span)
        return value

    def fixed_int(self, value: Value) -> int | None:
        """The integer a value always has (a literal or an int const), else None."""
        expr = value.expr
        if isinstance(expr, ir.Lit) and isinstance(expr.value, int):
            return expr.value
        if isinstance(expr, ir.Ref) and expr.name in self.vars:
            info = self.vars[expr.name]
            if info.decl.role == "const" and isinstance(info.value, int):
                return info.value
        return None

    def is_net_call(self, expr: ast.Expr) -> bool:
        return isinstance(expr, ast.Call) and (expr.func in NETWORKS or expr.func in self.netinfo)


def _arithmetic(op: str, left, right, span: Span | None):
    """`left op right` on two numbers, as Python computes it (an int for + - * of ints)."""
    written = f"{left} {op} {right}"
    try:
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            result = left / right
        else:
            if isinstance(left, int) and isinstance(right, int) and check_limits.int_power_too_large(left, right):
                raise check_limits.int_result_too_large(written, span)
            result = left**right
            if isinstance(result, complex):
                raise ValueError
    except (ZeroDivisionError, OverflowError, ValueError):
        raise bad_const(f"{written} has no finite value", span) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise bad_const(f"{written} has no finite value", span)
    if isinstance(result, int) and abs(result) > limits.MAX_INT:
        raise check_limits.int_result_too_large(written, span)
    return result
