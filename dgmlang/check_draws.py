"""Checking draws (`target ~ Distribution(...)`): arguments, roles, completeness."""
from __future__ import annotations

from dgmlang import ast
from dgmlang import check_limits
from dgmlang import check_ranges as ranges
from dgmlang import ir
from dgmlang.check_errors import (
    bad_literal,
    both_alternatives,
    cannot_pack,
    count_not_fixed,
    count_not_int,
    data_support_depends,
    declared_type_mismatch,
    discrete_global,
    discrete_latent_vector,
    duplicate_argument,
    family_on_discrete,
    global_depends_on_local,
    missing_alternative,
    missing_argument,
    net_cannot_produce,
    no_distribution,
    not_a_distribution,
    not_a_variable,
    not_random,
    not_shown,
    support_depends,
    too_many_args,
    two_distributions,
    unbounded_discrete,
    unknown_argument,
    unknown_distribution,
    unknown_target,
    unused_net,
)
from dgmlang.check_ranges import value_fits
from dgmlang.check_shape_errors import (
    bound_out_of_range,
    categorical_classes_unknown,
    deconv_packed,
    dirichlet_event,
    needs_vector,
    net_size_unknown,
    param_shape,
)
from dgmlang.check_shapes import Shape, broadcasts_to, flat_size
from dgmlang.check_spans import argument_exprs, head_span, name_span_in, walk_ast
from dgmlang.check_values import BoundDraw, Dep, NO_WANT, Skip, Value, VarInfo, Want
from dgmlang.distributions import (
    BUILTINS,
    DISTRIBUTIONS,
    DistSpec,
    NETWORKS,
    ParamSpec,
    SUPPORT_TYPES,
)
from dgmlang.errors import DGMError
from dgmlang.printer import format_expr


class DrawChecker:
    """Draws: the distribution, its arguments bound by name and checked against the target's
    shape and the parameters' constraints, what each role may be drawn from, and what is
    left undrawn or unused at the end. A part of `dgmlang.check.ModelChecker`."""

    def check_draw(self, d: ast.Draw) -> None:
        if id(d) in self.misplaced:
            raise Skip
        target_span = head_span(d.span, len(d.target))
        draws = [s for s in self.draws.get(d.target, []) if s.index is None]
        if d.index is None and len(draws) > 1 and draws[0] is not d:
            raise two_distributions(d.target, target_span, draws[0].span)
        info = self.vars.get(d.target)
        if info is None:
            if d.target in self.lets:
                raise not_a_variable(d.target, "a let", target_span)
            if d.target in self.netinfo:
                raise not_a_variable(d.target, "a network", target_span)
            self.unknown_targets = True
            raise unknown_target(d.target, target_span, self.undrawn())
        role = info.decl.role
        if role not in ir.RANDOM_ROLES:
            raise not_random(d.target, role, target_span)
        call = d.dist
        fspan = head_span(call.span, len(call.func))
        spec = DISTRIBUTIONS.get(call.func)
        if spec is None:
            if call.func in self.netinfo:
                self.netinfo[call.func].called = True
            if call.func in BUILTINS or call.func in NETWORKS or call.func in self.declared:
                raise not_a_distribution(call.func, fspan)
            raise unknown_distribution(call.func, fspan)
        if info.shape is None:
            self.check_arguments_quietly(call)
            raise Skip
        if d.target in self.sequences:
            self.check_step_draw(d, spec, info)
            return
        draw = self.bind(d, spec, info.shape)
        self.check_role(d, spec, info, draw)
        self.draw_irs[id(d)] = draw.ir
        if spec.name == "Categorical":
            self.bounds[d.target] = draw.classes
        elif spec.name == "Bernoulli":
            self.bounds[d.target] = 2
        elif spec.name == "Binomial":
            count = draw.values.get("total_count")
            fixed = 1 if count is None else self.fixed_int(count)
            if fixed is not None:
                self.bounds[d.target] = fixed + 1
        classes = self.bounds.get(d.target)
        if role == "latent" and classes is not None:  # enumerated: one value per class
            check_limits.check_classes(classes, f"'{d.target}' ~ {spec.name}(...)", d.span)

    def check_arguments_quietly(self, call: ast.Call) -> None:
        """Check the arguments of a draw whose target failed, for their own errors."""
        for arg in [*call.args, *(k.value for k in call.kwargs)]:
            if not self.is_free(arg):
                self.attempt(self.expr, arg, NO_WANT)

    def bind(self, d: ast.Draw, spec: DistSpec, tshape: Shape) -> "BoundDraw":
        call = d.dist
        if len(call.args) == 1 and not call.kwargs and self.is_net_call(call.args[0]):
            packed = spec.packed_params()
            if not packed:
                raise cannot_pack(spec, call.args[0].span)
            if len(packed) > 1:
                return self.bind_packed(d, spec, packed, tshape)
            given, failed = {packed[0].name: (call.args[0], call.args[0].span)}, False
        else:
            given, failed = self.match_arguments(spec, call)
        values: dict[str, Value] = {}
        for param in spec.params:
            if param.name not in given:
                continue
            expr, _ = given[param.name]
            try:
                values[param.name] = self.argument(d, spec, param, expr, tshape)
            except Skip:
                failed = True
            except DGMError as err:
                self.report(err)
                failed = True
        if failed:
            raise Skip
        params = tuple((p.name, values[p.name].expr) for p in spec.params if p.name in values)
        classes = None
        if spec.name == "Categorical":
            (value,) = [values[n] for n in ("probs", "logits") if n in values]
            classes = value.shape[-1]
        return BoundDraw(ir.Draw(d.target, spec.name, params, span=d.span), values, classes)

    def match_arguments(self, spec: DistSpec, call: ast.Call) -> tuple[dict, bool]:
        """Positional and keyword arguments by parameter name (with their spans), and
        whether a mistake was reported (the arguments themselves are still checked)."""
        given: dict = {}
        names = spec.param_names
        failed = False
        for i, arg in enumerate(call.args):
            if i >= len(names):
                self.report(too_many_args(spec, len(call.args), arg.span))
                failed = True
                break
            given[names[i]] = (arg, arg.span)
        unknown = [kw for kw in call.kwargs if kw.name not in names]
        missing = [
            p.name
            for p in spec.params
            if p.required and p.name not in given and p.name not in (k.name for k in call.kwargs)
        ]
        for kw in call.kwargs:
            kspan = head_span(kw.span, len(kw.name))
            if kw.name not in names:
                self.report(unknown_argument(spec, kw.name, kspan, missing))
                failed = True
                continue
            if kw.name in given:
                self.report(duplicate_argument(spec, kw.name, kspan))
                failed = True
                continue
            given[kw.name] = (kw.value, kw.span)
        for group in spec.alternatives:
            present = [n for n in group if n in given]
            if len(present) > 1:
                self.report(both_alternatives(spec, group, given[present[1]][1]))
                failed = True
            elif not present and not unknown:
                self.report(missing_alternative(spec, group, call.span))
                failed = True
        if not unknown:  # a misspelled keyword is the missing argument: say it once
            for name in missing:
                self.report(missing_argument(spec, name, call.span))
                failed = True
        return given, failed

    def param_want(self, spec: DistSpec, param: ParamSpec, tshape: Shape, target: str, span) -> Want:
        if spec.event_rank == 1:
            if not tshape:
                raise dirichlet_event(target, tshape, (), span)
            return Want(tshape, param.constraint)
        if param.event_rank == 1:
            return Want(None, param.constraint, categorical_classes_unknown(spec))
        return Want(tshape, param.constraint)

    def argument(self, d: ast.Draw, spec: DistSpec, param: ParamSpec, expr: ast.Expr, tshape: Shape) -> Value:
        if param.constraint == "nonneg_int" and self.is_net_call(expr):
            raise net_cannot_produce(spec, param, expr.span)
        want = self.param_want(spec, param, tshape, d.target, expr.span)
        value = self.expr(expr, want)
        shape = value.shape
        if spec.event_rank == 1:
            if not shape or shape[-1] != tshape[-1] or not broadcasts_to(shape[:-1], tshape[:-1]):
                raise dirichlet_event(d.target, tshape, shape, expr.span)
        elif param.event_rank == 1:
            if not shape:
                raise needs_vector(f"{spec.name}'s {param.name}", expr.span)
            if not broadcasts_to(shape[:-1], tshape):
                raise param_shape(spec, param.name, shape, d.target, tshape, expr.span)
        elif not broadcasts_to(shape, tshape):
            raise param_shape(spec, param.name, shape, d.target, tshape, expr.span)
        if isinstance(value.expr, ir.Lit):
            if not value_fits(value.expr.value, param.constraint):
                raise bad_literal(spec, param, value.expr.value, expr.span)
        elif param.constraint in ranges.RANGE_CONSTRAINTS and not value.range.fits(param.constraint):
            declare = self.declarations_to_type(expr, param.constraint)
            net = any(self.is_net_call(node) for node in walk_ast(expr))
            raise not_shown(spec, param, format_expr(expr), value.range, declare, net, expr.span)
        if param.constraint == "nonneg_int" and not value.is_int:
            raise count_not_int(spec, param, expr.span)
        return value

    def bind_packed(self, d: ast.Draw, spec: DistSpec, packed, tshape: Shape) -> "BoundDraw":
        call = d.dist.args[0]
        kind = self.netinfo[call.func].kind if call.func in self.netinfo else call.func
        if kind == "deconv":
            raise deconv_packed(spec, call.span)
        shapes = []
        for param in packed:
            want = self.param_want(spec, param, tshape, d.target, call.span)
            if want.shape is None:
                name = call.func if call.func in self.netinfo else self.anon_names[id(call)]
                raise net_size_unknown(name, want.why, call.span)
            shapes.append(want.shape)
        total = sum(flat_size(s) for s in shapes)
        value = self.net_call(call, Want((total,)))
        packed_params = tuple(ir.PackedParam(p.name, s, p.constraint) for p, s in zip(packed, shapes))
        draw = ir.Draw(d.target, spec.name, packed=value.expr, packed_params=packed_params, span=d.span)
        return BoundDraw(draw, {"__packed__": value}, None)

    def check_role(self, d: ast.Draw, spec: DistSpec, info: VarInfo, draw: "BoundDraw") -> None:
        """What a latent, global or data variable may not be drawn from."""
        role, decl = info.decl.role, info.decl
        fspan = head_span(d.dist.span, len(d.dist.func))
        moving = False  # the support moves with a random variable (reported)
        declared = decl.type
        actual = SUPPORT_TYPES[spec.support]
        if declared not in (None, "real", actual):
            self.report(declared_type_mismatch(d.target, declared, spec, actual, fspan))
        if role == "global":
            for value in draw.values.values():
                if value.local is not None:
                    dep_role = self.vars[value.local.name].decl.role
                    self.report(global_depends_on_local(d.target, value.local, dep_role))
                    break
        if role in ("latent", "global"):
            if spec.discrete and not spec.finite:
                self.report(unbounded_discrete(d.target, role, spec, fspan))
            elif spec.discrete and role == "global":
                self.report(discrete_global(d.target, spec, fspan))
            else:
                for param in spec.support_depends_on:
                    value = draw.values.get(param)
                    if value is None:
                        continue
                    if value.random is not None:
                        self.report(support_depends(d.target, spec, param, value.random, value.random.span))
                        moving = True
                        break
                    if spec.discrete and self.fixed_int(value) is None:
                        self.report(count_not_fixed(d.target, spec, value.expr.span))
                        break
            if spec.discrete and spec.finite and role == "latent" and info.shape:
                self.report(discrete_latent_vector(d.target, info.shape, decl.name_span or decl.span))
            if spec.discrete and info.family_span is not None:
                self.report(family_on_discrete(d.target, spec, info.family_span))
        if role == "data":
            given = argument_exprs(spec.param_names, d.dist)
            for param in spec.support_depends_on:
                dep = self.hidden_read(given[param]) if param in given else None
                if dep is not None:
                    dep_role = self.vars[dep.name].decl.role
                    self.report(data_support_depends(d.target, spec, param, dep, dep_role))
                    moving = True
                    break
        if spec.name == "Uniform" and not moving and "low" in draw.values and "high" in draw.values:
            self.check_bounds(d, draw)

    def hidden_read(self, expr: ast.Expr) -> Dep | None:
        """The first latent or global `expr` reads, directly or through lets (where: the
        reference in `expr`)."""
        queue: list[tuple[ast.Expr, str | None, object]] = [(expr, None, None)]
        seen: set[str] = set()
        while queue:
            root, via, via_span = queue.pop(0)
            for node in walk_ast(root):
                if not isinstance(node, ast.Name):
                    continue
                info = self.vars.get(node.name)
                if info is not None and info.decl.role in ("latent", "global"):
                    return Dep(node.name, via_span or node.span, via)
                if node.name in self.lets and node.name not in seen:
                    seen.add(node.name)
                    queue.append((self.lets[node.name].value, via or node.name, via_span or node.span))
        return None

    def undrawn(self) -> list[str]:
        """Random variables without a distribution, in declaration order."""
        return [
            name
            for name, info in self.vars.items()
            if info.decl.role in ir.RANDOM_ROLES and name not in self.draws
        ]

    def check_completeness(self) -> None:
        # A draw of an unknown name is most likely the missing draw, misspelled: one error.
        if not self.unknown_targets:
            for name in self.undrawn():
                self.report(no_distribution(self.vars[name].decl))
        for name, info in self.netinfo.items():
            if info.options is not None and not info.called:
                self.report(unused_net(name, name_span_in(info.definition.span, name)))
        for name, size, what, span in self.pending_bounds:
            bound = self.bounds.get(name)
            if bound is not None and bound > size:
                self.report(bound_out_of_range(name, bound, size, what, span))
