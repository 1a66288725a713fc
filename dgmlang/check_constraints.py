"""The ranges of a model's values and the rules on them (docs/language.md, "Rules the checker
enforces"): a constrained argument must be shown to satisfy its constraint, log, sqrt and
`**` stay in their domain, Uniform's high lies above its low."""
from __future__ import annotations

from dgmlang import ast
from dgmlang import check_limits
from dgmlang import check_ranges as ranges
from dgmlang import ir
from dgmlang.check_errors import bounds_not_ordered, outside_domain
from dgmlang.check_ranges import Range
from dgmlang.check_shapes import flat_size, fmt_shape
from dgmlang.check_spans import argument_exprs, walk_ast
from dgmlang.check_values import NO_WANT, BoundDraw, Skip, Value
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMError
from dgmlang.printer import format_expr


#: What a network output is mapped onto, by the constraint of what it feeds.
NET_RANGES = {
    "real": ranges.REAL,
    "positive": ranges.POSITIVE,
    "unit": ranges.UNIT,
    "simplex": ranges.SIMPLEX,
    "nonneg_int": ranges.NONNEGATIVE,
}

#: The values a param or input of each declared type takes (a param is kept inside its
#: constraint by a bijection, so never on its edge; an input may be exactly 0 or 1).
_PARAM_RANGES = {"positive": ranges.POSITIVE, "unit": ranges.UNIT, "simplex": ranges.SIMPLEX}
_INPUT_RANGES = {"positive": ranges.POSITIVE, "unit": ranges.UNIT_CLOSED, "simplex": ranges.ONEHOT}

#: The values a random variable takes, by its distribution's support (a continuous draw
#: lies inside its support; a count may be 0).
_SUPPORT_RANGES = {
    "positive": ranges.POSITIVE,
    "unit": ranges.UNIT,
    "simplex": ranges.SIMPLEX,
    "boolean": ranges.UNIT_CLOSED,
    "finite_int": ranges.NONNEGATIVE,
    "nonneg_int": ranges.NONNEGATIVE,
}


def builtin_range(func: str, rule: str, values: list[Value]) -> Range:
    """The range of a built-in function's value from its arguments' (`rule`: its shape rule)."""
    first = values[0]
    if rule in ("elementwise", "last_dim"):
        return ranges.function(func, first.range)
    if rule == "reduce":
        shape = first.shape
        return ranges.reduce(func, first.range, flat_size(shape), shape[-1] if shape else 1)
    if rule == "broadcast":
        parts = [v.range.entries() for v in values]
        if func == "clamp":
            return ranges.clamp(*parts)
        return (ranges.minimum if func == "min" else ranges.maximum)(*parts)
    if rule in ("dot", "matmul"):
        inner = first.shape[-1]
        product = ranges.mul(first.range.entries(), values[1].range.entries())
        return ranges.reduce("sum", product, inner, inner)
    return ranges.hull(v.range for v in values)


class ConstraintChecker:
    """What a model's values are known to be (`dgmlang.check_ranges`): the range of each
    variable, of operators and functions, the domains of log, sqrt and `**`, the order of
    Uniform's bounds, and the hint naming the declarations to type. A part of
    `dgmlang.check.ModelChecker`, whose state (`vars`, `draws`) it reads."""

    def variable_range(self, name: str) -> Range:
        """The values variable `name` takes: a const's own, a param's or input's by its
        declared type, a random variable's by its distribution's support (read from the
        draw's syntax, so in any order; Uniform's from literal bounds)."""
        info = self.vars[name]
        role = info.decl.role
        if role == "const":
            return ranges.literal(info.value)
        if role == "param":
            return _PARAM_RANGES.get(info.type, ranges.REAL)
        if role == "input":
            return _INPUT_RANGES.get(info.type, ranges.REAL)
        draws = self.draws.get(name)
        spec = DISTRIBUTIONS.get(draws[0].dist.func) if draws else None
        if spec is None:
            return ranges.REAL
        if spec.name == "Uniform":
            return self.uniform_range(draws[0].dist)
        return _SUPPORT_RANGES.get(spec.support, ranges.REAL)

    def uniform_range(self, call: ast.Call) -> Range:
        given = dict(zip(("low", "high"), call.args))
        given.update((k.name, k.value) for k in call.kwargs)
        low, high = self.written_number(given.get("low")), self.written_number(given.get("high"))
        if low is None or high is None or not low < high:
            return ranges.REAL
        return Range(low, high, True, True)

    def written_number(self, expr) -> float | None:
        """The number an expression is written as: a literal, maybe negated, or a scalar const."""
        if isinstance(expr, ast.Num):
            # a number beyond the limits is reported where it is checked; it shows nothing
            return expr.value if check_limits.fits_number(expr.value) else None
        if isinstance(expr, ast.UnaryOp):
            inner = self.written_number(expr.operand)
            return None if inner is None else -inner
        if isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is not None and info.decl.role == "const" and info.shape == ():
                return info.value
        return None

    def linear_terms(self, expr: ast.Expr, scale: float, terms: dict) -> None:
        """Add `scale * expr` to `terms` as a sum of numbers (key None) and other terms
        (keyed by their text), through + - and multiplication by a number."""
        number = self.written_number(expr)
        if number is not None:
            coefficient, _ = terms.get(None, (0.0, None))
            terms[None] = (coefficient + scale * number, None)
        elif isinstance(expr, ast.UnaryOp):
            self.linear_terms(expr.operand, -scale, terms)
        elif isinstance(expr, ast.BinOp) and expr.op in ("+", "-"):
            self.linear_terms(expr.left, scale, terms)
            self.linear_terms(expr.right, scale if expr.op == "+" else -scale, terms)
        elif isinstance(expr, ast.BinOp) and expr.op == "*" and self.written_number(expr.left) is not None:
            self.linear_terms(expr.right, scale * self.written_number(expr.left), terms)
        elif isinstance(expr, ast.BinOp) and expr.op == "*" and self.written_number(expr.right) is not None:
            self.linear_terms(expr.left, scale * self.written_number(expr.right), terms)
        else:
            key = format_expr(expr)
            coefficient, _ = terms.get(key, (0.0, expr))
            terms[key] = (coefficient + scale, expr)

    def difference_range(self, high: ast.Expr, low: ast.Expr) -> Range:
        """The range of `high - low`, the terms both share cancelled."""
        terms: dict = {}
        self.linear_terms(high, 1.0, terms)
        self.linear_terms(low, -1.0, terms)
        total = ranges.literal(0)
        for key, (coefficient, expr) in terms.items():
            if coefficient == 0:
                continue
            if key is None:
                term = ranges.literal(coefficient)
            else:
                try:
                    value = self.expr(expr, NO_WANT)  # checked already: only its range is new
                except (DGMError, Skip):
                    return ranges.REAL
                term = ranges.mul(value.range.entries(), ranges.literal(coefficient))
            total = ranges.add(total, term)
        return total

    def binop_range(self, e: ast.BinOp, left: Value, right: Value) -> Range:
        if e.op == "+":
            return ranges.add(left.range, right.range)
        if e.op == "-":
            return ranges.sub(left.range, right.range)
        if e.op == "*":
            return ranges.mul(left.range, right.range)
        if e.op == "/":
            return ranges.div(left.range, right.range)
        exponent = right.expr.value if isinstance(right.expr, ir.Lit) else None
        whole = isinstance(exponent, (int, float)) and float(exponent).is_integer()
        if left.range.low < 0 and not whole:
            raise outside_domain(
                "**", "a non-negative base unless its exponent is a whole number",
                format_expr(e.left), "can be negative",
                self.declarations_to_type(e.left, "positive"), e.left.span,
            )
        return ranges.power(left.range, right.range, whole)

    def check_domain(self, func: str, arg_expr: ast.Expr, arg: Value) -> None:
        """log and sqrt of a value that may be negative (or 0, for log) are NaN or -inf."""
        if func == "log" and not arg.range.fits("positive"):
            needs = "a positive argument"
        elif func == "sqrt" and arg.range.low < 0:
            needs = "a non-negative argument"
        else:
            return
        why = ranges.problem(arg.range, "positive")
        declare = self.declarations_to_type(arg_expr, "positive")
        raise outside_domain(func, needs, format_expr(arg_expr), why, declare, arg_expr.span)

    def declarations_to_type(self, expr: ast.Expr, constraint: str) -> list[str]:
        """The params and inputs `expr` reads whose declared type does not show `constraint`
        (as `param sigma` or `input s[3]`, for a hint)."""
        found: list[str] = []
        for node in walk_ast(expr):
            if isinstance(node, ast.Name) and node.name in self.vars:
                info = self.vars[node.name]
                if info.decl.role in ("param", "input") and info.shape is not None \
                        and info.type != "int" and (info.shape or constraint != "simplex") \
                        and not self.variable_range(node.name).fits(constraint):
                    dims = fmt_shape(info.shape) if info.shape else ""
                    text = f"{info.decl.role} {node.name}{dims}"
                    if text not in found:
                        found.append(text)
        return found

    def check_bounds(self, d: ast.Draw, draw: "BoundDraw") -> None:
        """Uniform's high must be shown to lie above its low: by the bounds' ranges, or by the
        range of their difference once the terms they share cancel (`Uniform(a, a + 1)`)."""
        low, high = draw.values["low"], draw.values["high"]
        a, b = low.range, high.range
        if b.low > a.high or (b.low == a.high and (b.low_open or a.high_open)):
            return
        given = argument_exprs(("low", "high"), d.dist)
        if self.difference_range(given["high"], given["low"]).fits("positive"):
            return
        known = isinstance(low.expr, ir.Lit) and isinstance(high.expr, ir.Lit)
        self.report(bounds_not_ordered(format_expr(given["low"]), format_expr(given["high"]), known,
                                        given["high"].span))
