"""What `dgm check` accepts compiles and fits: the checker owns every rule about a model.

For a model the checker accepts, `compile` and one `fit` step on data drawn from the model
(`dgmlang.testing.simulate`, seeds 0-9) raise nothing; a `DGMDataError` is about the drawn
data, not a verdict on the model. The models are generated (`dgmlang.testing.models`),
mutated generated models (a type dropped, a softplus removed, a discrete latent made a
vector, a variable put where a scale or a probability goes, ...), and hand-written tricky
models whose verdict is fixed here (held-out style: the verdict of `check` is the verdict
of `compile` + `fit`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgmlang
from dgmlang.errors import DGMDataError, DGMError
from dgmlang.frontend import check_source
from dgmlang.testing import models, simulate

SEEDS = range(10)
POINTS = 8
LARGE = 1e4

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def checks(text: str) -> DGMError | None:
    """The checker's verdict: None when it accepts `text`, else its error."""
    try:
        check_source(text, "m.dgm")
    except DGMError as err:
        return err
    return None


def assert_compiles_and_fits(text: str) -> None:
    """`compile` and one `fit` step for data drawn from the model under each seed; only a
    DGMDataError about the drawn data is allowed."""
    prior = dgmlang.compile(text)
    for seed in SEEDS:
        try:
            draw = simulate(prior, POINTS, seed=seed)
        except DGMDataError:
            continue
        if not _moderate(draw):
            continue
        data = draw.data
        model = dgmlang.compile(text)
        try:
            model.fit(data, steps=1, batch_size=POINTS, seed=seed, progress=False)
        except DGMDataError:
            continue


def _moderate(draw) -> bool:
    """Whether every value drawn is finite and of moderate size: a chain of exponentials
    (LogNormal after LogNormal, through networks) can overflow float32 in the prior draw,
    which says nothing about the model's rules."""
    values = [*draw.data.values(), *draw.latents.values()]
    return all(bool(torch.isfinite(v.double()).all()) and (v.numel() == 0 or float(v.double().abs().max()) < LARGE)
               for v in values)


def verdict_agrees(text: str) -> None:
    if checks(text) is None:
        assert_compiles_and_fits(text)


# ---------------------------------------------------------------- generated models


@SETTINGS
@given(models(with_nets=True) | models())
def test_a_generated_model_the_checker_accepts_compiles_and_fits(m):
    assert checks(m.text) is None, "generated models are valid by construction"
    assert_compiles_and_fits(m.text)


# ---------------------------------------------------------------- mutants


def _declared(text: str) -> list[tuple[str, str]]:
    """(role, name) of every declared variable but consts."""
    return re.findall(r"^\s*(param|input|global|latent|data)\s+(\w+)", text, re.M)


_MUTATIONS = ("untype", "unsoftplus", "vector_discrete", "scale", "probs", "logits_as_probs",
              "log", "count", "concentration", "uniform")


@st.composite
def mutants(draw) -> str:
    """A generated model with one to three mistakes (or harmless changes) put in."""
    text = draw(models(with_nets=True) | models()).text
    for mutation in draw(st.lists(st.sampled_from(_MUTATIONS), min_size=1, max_size=3)):
        names = [name for _, name in _declared(text)]
        name = draw(st.sampled_from(names))
        if mutation == "untype":
            text = re.sub(r"(\b(?:param|input)\s+\w+(?:\[[^\]]*\])?) : (?:positive|unit|simplex)", r"\1", text,
                          count=1)
        elif mutation == "unsoftplus":
            text = text.replace("softplus(", "(", 1)
        elif mutation == "vector_discrete":
            discrete = re.findall(r"^\s*(\w+) ~ (?:Bernoulli|Binomial|Categorical)", text, re.M)
            latents = {n for role, n in _declared(text) if role == "latent"}
            for target in discrete:
                if target in latents:
                    text = re.sub(rf"(latent\s+{target})\b(?!\[)", r"\g<1>[2]", text, count=1)
                    break
        elif mutation == "scale":
            text = re.sub(r"(Normal\([^\n]*), 1\.0\)", rf"\1, {name})", text, count=1)
        elif mutation == "probs":
            text = text.replace("probs = 0.5", f"probs = {name}", 1)
        elif mutation == "logits_as_probs":
            text = text.replace("logits = ", "probs = ", 1)
        elif mutation == "log":
            text = re.sub(r"0\.5 \* (\w+)\b(?!\()", r"0.5 * log(\1)", text, count=1)
        elif mutation == "count":
            text = text.replace("Binomial(3,", f"Binomial({name},", 1)
        elif mutation == "concentration":
            text = re.sub(r"Dirichlet\([^\n]*\)$", f"Dirichlet({name})", text, count=1, flags=re.M)
        elif mutation == "uniform":
            text = re.sub(r"~ Normal\(([^\n]*), 1\.0\)$", rf"~ Uniform(0, {name})", text, count=1,
                          flags=re.M)
    return text


@settings(SETTINGS, max_examples=60)
@given(mutants())
def test_a_mutated_model_the_checker_accepts_compiles_and_fits(text):
    verdict_agrees(text)


# ---------------------------------------------------------------- held-out style cases

#: name -> (program, the start of the checker's message, or None when the model is fine)
CASES = {
    "vector_bernoulli_latent": ("""
        model m {
            data   x
            latent b[3]
            b ~ Bernoulli(0.3)
            x ~ Normal(sum(b), 1)
        }""", "discrete latent 'b' has shape [3]; only scalar discrete latents can be summed out"),
    "vector_categorical_latent": ("""
        model m {
            data   x[2]
            latent c[2]
            c ~ Categorical(logits = zeros(2, 3))
            x ~ Normal(c, 1)
        }""", "discrete latent 'c' has shape [2]"),
    "untyped_param_as_scale": ("""
        model m {
            data   x
            latent z
            param  sigma
            z ~ Normal(0, 1)
            x ~ Normal(z, sigma)
        }""", "Normal's scale must be positive, but 'sigma' can be any real number"),
    "untyped_param_as_scale_with_another_param": ("""
        model m {
            data   x
            param  mu
            param  sigma
            x ~ Normal(mu, sigma)
        }""", "Normal's scale must be positive"),
    "untyped_param_as_dirichlet_concentration": ("""
        model m {
            data  x[3]
            param a[3]
            x ~ Dirichlet(a)
        }""", "Dirichlet's concentration must be positive"),
    "untyped_param_as_probs": ("""
        model m {
            data  x
            param p
            x ~ Bernoulli(p)
        }""", "Bernoulli's probs must be between 0 and 1"),
    "positive_param_as_probs": ("""
        model m {
            data  x
            param p : positive
            x ~ Bernoulli(probs = p)
        }""", "Bernoulli's probs must be between 0 and 1, but 'p' can exceed 1"),
    "unit_param_as_class_probs": ("""
        model m {
            data  c
            param w[3] : unit
            c ~ Categorical(probs = w)
        }""", "Categorical's probs must be non-negative and sum to 1"),
    "discrete_global": ("""
        model m {
            data   x
            global g
            g ~ Bernoulli(0.5)
            x ~ Normal(g, 1)
        }""", "global 'g' cannot be discrete (Bernoulli)"),
    "net_output_as_binomial_count": ("""
        model m {
            data   x
            latent z
            z ~ Normal(0, 1)
            x ~ Binomial(mlp(z), probs = 0.5)
        }""", "a network cannot produce Binomial's total_count"),
    "net_output_as_binomial_count_through_a_let": ("""
        model m {
            data   x
            latent z
            let n = mlp(z)
            z ~ Normal(0, 1)
            x ~ Binomial(n, probs = 0.5)
        }""", "Binomial's total_count must be a non-negative integer"),
    "uniform_latent_bounds_depend_on_data": ("""
        model m {
            data   x
            data   y
            latent u
            x ~ Normal(0, 1)
            u ~ Uniform(0, exp(x))
            y ~ Normal(u, 1)
        }""", "the support of 'u' depends on the random variable 'x'"),
    "uniform_latent_bounds_depend_on_a_latent": ("""
        model m {
            data   y
            latent s
            latent u
            s ~ Normal(0, 1)
            u ~ Uniform(s, s + 1)
            y ~ Normal(u, 1)
        }""", "the support of 'u' depends on the random variable 's'"),
    "uniform_data_bounds_depend_on_a_latent": ("""
        model m {
            data   x
            data   y
            latent s
            s ~ Gamma(2, 2)
            y ~ Uniform(0, s)
            x ~ Normal(y, 1)
        }""", "the support of data variable 'y' depends on the latent 's'"),
    "binomial_data_count_is_a_summed_out_latent": ("""
        model m {
            data   x
            latent k
            k ~ Binomial(3, probs = 0.5)
            x ~ Binomial(k, probs = 0.5)
        }""", "the support of data variable 'x' depends on the latent 'k'"),
    "uniform_bounds_reversed": ("""
        model m {
            data   x
            latent u
            u ~ Uniform(2, 1)
            x ~ Normal(u, 1)
        }""", "Uniform's high must be above its low"),
    "latent_as_scale": ("""
        model m {
            data   x
            latent z
            z ~ Normal(0, 1)
            x ~ Normal(0, z)
        }""", "Normal's scale must be positive, but 'z' can be any real number"),
    "data_as_poisson_rate": ("""
        model m {
            data y
            data x
            y ~ Normal(0, 1)
            x ~ Poisson(y)
        }""", "Poisson's rate must be positive"),
    "untyped_input_as_scale": ("""
        model m {
            input s
            data  y
            y ~ Normal(0, s)
        }""", "Normal's scale must be positive"),
    "network_plus_constant_as_scale": ("""
        model m {
            data   x[2]
            latent z
            z ~ Normal(0, 1)
            x ~ Normal(0, mlp(z, hidden = [4]) + 1)
        }""", "Normal's scale must be positive, but 'mlp(z, hidden = [4]) + 1'"),
    "network_let_used_as_loc_then_scale": ("""
        model m {
            data   x
            data   y
            latent z
            let h = mlp(z, hidden = [4])
            z ~ Normal(0, 1)
            x ~ Normal(h, 1)
            y ~ Normal(0, h)
        }""", "Normal's scale must be positive, but 'h'"),
    "log_of_a_real_latent": ("""
        model m {
            data   x
            latent z
            z ~ Normal(0, 1)
            x ~ Normal(log(z), 1)
        }""", "log needs a positive argument"),
    "relu_as_scale": ("""
        model m {
            data   x
            latent z
            z ~ Normal(0, 1)
            x ~ Normal(0, relu(z))
        }""", "Normal's scale must be positive, but 'relu(z)' can be 0"),
    # accepted: each fits
    "typed_params": ("""
        model m {
            data  x
            data  b
            data  c
            param sigma : positive
            param p : unit
            param w[3] : simplex
            x ~ Normal(0, sigma)
            b ~ Bernoulli(p)
            c ~ Categorical(probs = w)
        }""", None),
    "mapped_values": ("""
        model m {
            data   x
            data   y
            global tau
            latent z
            param  s
            tau ~ Gamma(2, 2)
            z ~ Normal(0, 1 / sqrt(tau))
            x ~ Normal(z, softplus(s) + 0.01)
            y ~ Poisson(exp(z) + tau)
        }""", None),
    "network_alone_as_scale_and_probs": ("""
        model m {
            data   x[2]
            data   b
            latent z
            z ~ Normal(0, 1)
            x ~ Normal(mlp(z, hidden = [4]), mlp(z, hidden = [4]))
            b ~ Bernoulli(probs = mlp(z, hidden = [4]))
        }""", None),
    "uniform_latent_with_input_bound": ("""
        model m {
            input a
            data  y
            latent u
            u ~ Uniform(-1, exp(a))
            y ~ Normal(u, 1)
        }""", None),
    "uniform_data_with_data_bound": ("""
        model m {
            data  s
            data  y
            s ~ Gamma(2, 2)
            y ~ Uniform(0, s)
        }""", None),
    "uniform_latent_between_an_input_and_the_input_plus_one": ("""
        model m {
            input  a
            data   x
            latent s
            s ~ Uniform(a - 0.5, a + 0.5 * exp(a))
            x ~ Normal(s, 0.1)
        }""", None),
    "uniform_global_with_param_bound": ("""
        model m {
            data   y
            param  a : positive
            global u
            u ~ Uniform(0, a)
            y ~ Normal(u, 1)
        }""", None),
    "guide_families_on_constrained_latents": ("""
        model m {
            data   x[2]
            data   c
            latent s[2] guide(family = mvn)
            latent w[3] guide(family = flow)
            latent h guide(family = delta)
            s ~ Gamma(2, 2)
            w ~ Dirichlet(ones(3))
            h ~ HalfCauchy(1)
            x ~ Normal(0, s + h)
            c ~ Categorical(probs = w)
        }""", None),
    "uniform_latent_as_scale": ("""
        model m {
            data   y
            latent s
            s ~ Uniform(0.5, 2)
            y ~ Normal(0, s)
        }""", None),
    "beta_latent_as_probs": ("""
        model m {
            data   b
            latent q
            q ~ Beta(2, 2)
            b ~ Bernoulli(probs = q)
        }""", None),
    "dirichlet_global_as_class_probs": ("""
        model m {
            data   c
            global w[3]
            w ~ Dirichlet(ones(3))
            c ~ Categorical(probs = w)
        }""", None),
    "scalar_discrete_latents": ("""
        model m {
            data   x
            latent b1
            latent b2
            b1 ~ Bernoulli(0.3)
            b2 ~ Binomial(2, probs = 0.5)
            x ~ Normal(b1 + b2, 1)
        }""", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_check_verdict_is_the_compile_and_fit_verdict(name):
    text, refusal = CASES[name]
    error = checks(text)
    if refusal is None:
        assert error is None, str(error)
        assert_compiles_and_fits(text)
        return
    assert error is not None and refusal in error.message, str(error)
    with pytest.raises(DGMError) as compiled:
        dgmlang.compile(text)
    assert compiled.value.message == error.message


#: A refused model: the change its hint asks for (old text, new text, part of the hint); the
#: changed model is accepted and fits.
FIXES = {
    "untyped_param_as_scale": ("param  sigma\n", "param  sigma : positive\n", "`param sigma : positive`"),
    "untyped_param_as_dirichlet_concentration": ("param a[3]\n", "param a[3] : positive\n",
                                                 "`param a[3] : positive`"),
    "untyped_param_as_probs": ("param p\n", "param p : unit\n", "`param p : unit`"),
    "positive_param_as_probs": ("param p : positive\n", "param p : unit\n", "`param p : unit`"),
    "unit_param_as_class_probs": ("param w[3] : unit\n", "param w[3] : simplex\n", "`param w[3] : simplex`"),
    "untyped_input_as_scale": ("input s\n", "input s : positive\n", "`input s : positive`"),
    "latent_as_scale": ("Normal(0, z)", "Normal(0, softplus(z))", "softplus(z)"),
    "log_of_a_real_latent": ("log(z)", "log(softplus(z))", "softplus(z)"),
    "relu_as_scale": ("relu(z)", "softplus(z)", "softplus("),
}


@pytest.mark.parametrize("name", list(FIXES))
def test_the_hint_of_a_refusal_gives_a_model_that_fits(name):
    text, _ = CASES[name]
    old, new, hinted = FIXES[name]
    assert hinted in checks(text).hint
    fixed = text.replace(old, new)
    assert fixed != text and checks(fixed) is None, str(checks(fixed))
    assert_compiles_and_fits(fixed)


# ---------------------------------------------------------------- golden good programs and their mutants

PROGRAMS = Path(__file__).parent / "programs" / "good"
#: The small single-model programs (the image models take seconds to fit a step).
SMALL = sorted(p for p in PROGRAMS.glob("*.dgm")
               if "deconv" not in p.read_text() and "[64]" not in p.read_text()
               and p.read_text().count("model ") == 1)


def _good_mutants(text: str) -> list[str]:
    """The program with one type dropped from a param or input, or one positive-making
    function removed, each in turn."""
    out = []
    for match in re.finditer(r"\b(?:param|input)\s+\w+(?:\[[^\]]*\])?( : (?:positive|unit|simplex))", text):
        out.append(text[:match.start(1)] + text[match.end(1):])
    for match in re.finditer(r"\b(?:softplus|exp|sigmoid|softmax)\(", text):
        out.append(text[:match.start()] + text[match.end() - 1:])
    return out


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_a_golden_good_program_and_its_mutants_the_checker_accepts_fit(path):
    text = path.read_text(encoding="utf-8")
    assert checks(text) is None
    assert_compiles_and_fits(text)
    for mutant in _good_mutants(text):
        verdict_agrees(mutant)
