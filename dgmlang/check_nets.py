"""The checker's part for networks: their options at a definition or a call, the sizes
they read and produce, and the limits on their width and weights. `NetChecker` is a part of
`dgmlang.check.ModelChecker` (it reads the checker's symbols, reports and values).
"""
from __future__ import annotations

from dgmlang import ast
from dgmlang import ir
from dgmlang.check_constraints import NET_RANGES
from dgmlang import check_limits
from dgmlang import limits
from dgmlang.check_shape_errors import (
    deconv_not_image, net_definition_not_network, net_inputs_at_definition, net_size_unknown,
    net_sizes_disagree, net_without_inputs, options_at_call, unknown_activation,
    unknown_net_option,
)
from dgmlang.check_shapes import flat_size, fmt_shape
from dgmlang.check_spans import head_span, source_text
from dgmlang.check_values import Skip, Value, Want, merge_deps
from dgmlang.distributions import ACTIVATIONS, NETWORKS
from dgmlang.errors import DGMError, DGMShapeError


class NetChecker:
    """Networks: `net_call` checks a call (named or inline) and records the `ir.Net` it
    needs; `check_net_definition` a `net name = mlp(...)` statement."""

    def net_options(self, call: ast.Call, kind: str) -> dict:
        options = dict(NETWORKS[kind])
        failed = False
        for kw in call.kwargs:
            name_span = head_span(kw.span, len(kw.name))
            try:
                if kw.name not in options:
                    raise unknown_net_option(kind, kw.name, name_span)
                if kind == "gru" and kw.name == "hidden":  # one size: the state's
                    size = self.const_int(kw.value, "a gru's hidden size", positive=True)
                    check_limits.check_width(size, "hidden", kw.value.span)
                    options["hidden"] = (size,)
                elif kw.name in ("hidden", "channels"):
                    options[kw.name] = self.size_list(kw.value, kw.name, kw.name == "hidden")
                elif kw.name == "activation":
                    if not isinstance(kw.value, ast.Name):
                        raise unknown_activation(source_text(kw.value), kw.value.span)
                    if kw.value.name not in ACTIVATIONS:
                        raise unknown_activation(kw.value.name, kw.value.span)
                    options["activation"] = kw.value.name
            except DGMError as err:
                self.report(err)
                failed = True
        if failed:
            raise Skip
        return options

    def check_net_definition(self, definition: ast.NetDef) -> None:
        info = self.netinfo[definition.name]
        call = definition.call
        if call.func not in NETWORKS:
            raise net_definition_not_network(definition.name, call.func, head_span(call.span, len(call.func)))
        if call.args:
            self.report(net_inputs_at_definition(definition.name, call.args[0].span))
            self.attempt(self.net_options, call, call.func)
            raise Skip
        info.options = self.net_options(call, call.func)

    def net_call(self, call: ast.Call, want: Want) -> Value:
        """An anonymous `mlp(...)`/`deconv(...)` or a call of a named network."""
        named = self.netinfo.get(call.func)
        if named is not None:
            named.called = True
            if named.options is None:
                raise Skip
            if call.kwargs:
                raise options_at_call(call.func, call.kwargs[0].span)
            kind, options, name = named.kind, named.options, call.func
        else:
            kind, name = call.func, self.anon_names[id(call)]
            options = self.net_options(call, kind)
        if not call.args:
            raise net_without_inputs(call.func, named is not None, call.span)
        args = [self.expr(arg, Want(None, why="it is a network's input")) for arg in call.args]
        sizes = tuple(flat_size(a.shape) for a in args)
        shape = want.shape
        if kind == "gru":
            shape = self.gru_shape(name, options, call, args, want)
        if named is not None and named.output_shape is not None:
            if shape is None:
                shape = named.output_shape
            elif shape != named.output_shape:
                raise net_sizes_disagree(
                    name, "must produce shape", fmt_shape(named.output_shape), fmt_shape(shape),
                    named.first_call, call.span,
                )
            if sizes != named.input_sizes:
                raise net_sizes_disagree(
                    name, "gets inputs of sizes", list(named.input_sizes), list(sizes),
                    named.first_call, call.span,
                )
        if shape is None:
            raise net_size_unknown(name, want.why, call.span)
        if kind == "deconv" and len(shape) != 3:
            raise deconv_not_image(shape, call.span)
        self.check_net_size(name, kind, options, sizes, shape, call.span)
        if named is not None:
            if named.output_shape is None:
                named.output_shape, named.input_sizes, named.first_call = shape, sizes, call.span
                self.nets.append(self.make_net(name, kind, options, sizes, shape, named.definition.span, False))
        elif name in self.anon_nets:
            # The same call node used twice (the Python front end can share one): one network.
            net = self.anon_nets[name]
            if net.output_shape != shape or net.input_sizes != sizes:
                raise net_sizes_disagree(
                    name, "must produce shape", fmt_shape(net.output_shape), fmt_shape(shape), net.span, call.span
                )
        else:
            net = self.make_net(name, kind, options, sizes, shape, call.span, True)
            self.anon_nets[name] = net
            self.nets.append(net)
        local = random = None
        for a in args:
            local, random = merge_deps(local, a.local), merge_deps(random, a.random)
        expr = ir.NetCall(name, tuple(a.expr for a in args), shape, want.constraint, span=call.span)
        return Value(expr, local=local, random=random, range=NET_RANGES[want.constraint])

    def check_net_size(self, name, kind, options, sizes, shape, span) -> None:
        """A network's weights within `limits.MAX_PARAMETERS`, and a deconv's layer
        outputs within `limits.MAX_ELEMENTS` (values it computes per data point)."""
        hidden = tuple(options.get("hidden", ()))
        if kind == "gru":  # torch's GRUCell: three gates, input and hidden weights and biases
            state = flat_size(shape)
            count = 3 * state * (sum(sizes) + 2)
        elif kind == "deconv":
            channels = tuple(options.get("channels", ()))
            count, widest = check_limits.deconv_parameters(sum(sizes), hidden, channels, shape)
            check_limits.check_elements((widest,), f"a layer of network '{name}'", span)
        else:
            count = check_limits.mlp_parameters((sum(sizes), *hidden, flat_size(shape)))
        check_limits.check_network(name, count, span)
        self.net_weights[name] = count

    @staticmethod
    def make_net(name, kind, options, sizes, shape, span, anonymous) -> ir.Net:
        return ir.Net(
            name,
            kind,
            sizes,
            flat_size(shape),
            shape,
            hidden=tuple(options.get("hidden", ())) or ((flat_size(shape),) if kind == "gru" else ()),
            activation=options.get("activation", "tanh"),
            channels=tuple(options.get("channels", ())),
            anonymous=anonymous,
            span=span,
        )

    def gru_shape(self, name: str, options: dict, call: ast.Call, args: list[Value], want: Want) -> tuple:
        """A gru's call `cell(state, input)` gives the new state: shaped like `state`, whose
        size is the gru's hidden size."""
        if len(args) != 2:
            raise DGMShapeError(
                f"gru '{name}' takes 2 arguments, the state and the input, but {len(args)} "
                f"{'is' if len(args) == 1 else 'are'} given", call.span,
                hint=f"call it as `{call.func}(h[t - 1], input)`: it returns the new state, "
                     "shaped like the old one")
        state = args[0]
        size = flat_size(state.shape)
        hidden = options.get("hidden") or ()
        if hidden and hidden[0] != size:
            raise DGMShapeError(
                f"gru '{name}' has hidden = {hidden[0]}, but its state "
                f"'{source_text(call.args[0])}' has {size} values", call.args[0].span,
                hint=f"the state is the gru's hidden vector: give it {hidden[0]} values, "
                     f"e.g. `let h[0] = zeros({hidden[0]})`")
        if want.shape is not None and want.shape != state.shape:
            raise DGMShapeError(
                f"gru '{name}' returns its new state, shaped {fmt_shape(state.shape)}, but "
                f"{fmt_shape(want.shape)} is needed here", call.span,
                hint="read the state with a network of its own, e.g. `out(h[t])`")
        return state.shape
