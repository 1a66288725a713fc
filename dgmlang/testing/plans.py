"""What the testing kit asks of a compiled model besides its Pyro callables: its guide plan,
its IR facts, and which latents the guide samples or the model sums out.

One home for these questions, so `compare`, `exact`, `guides` and `sbc` read the same answer.
Nothing here imports torch.

>>> from dgmlang.inverse import GuidePlan, GuideStep
>>> plan = GuidePlan((GuideStep("c", (), "enumerated_in_model"), GuideStep("z", ("x",), "amortized")))
>>> latent_kinds(plan), sampled_latents(plan), summed_out_latents(plan)
({'c': 'enumerated_in_model', 'z': 'amortized'}, ['z'], ['c'])
"""
from __future__ import annotations

from typing import Any

from dgmlang.facts import ModelFacts
from dgmlang.frontend import check_irs
from dgmlang.inverse import GuidePlan

#: The plan kinds of a finite discrete latent: drawn by the guide or summed out in the model.
DISCRETE_KINDS = ("enumerated_in_guide", "enumerated_in_model")


def plan_of(model: Any) -> GuidePlan:
    """The guide plan of a compiled model (its own, or derived again from its IR)."""
    plan = getattr(model, "plan", None)
    if plan is None:
        (checked,) = check_irs([model.ir])
        plan = checked.plan
    return plan


def facts_of(model: Any) -> ModelFacts:
    """The IR facts of a compiled model (its own, built once, or derived from its IR)."""
    facts = getattr(model, "facts", None)
    return facts if facts is not None else ModelFacts(model.ir)


def latent_kinds(plan: GuidePlan) -> dict[str, str]:
    """Each latent and global of the plan with its kind, in plan order."""
    return {step.latent: step.kind for step in plan.steps}


def sampled_latents(plan: GuidePlan) -> list[str]:
    """The latents and globals the guide draws (every one not summed out in the model)."""
    return [step.latent for step in plan.steps if step.kind != "enumerated_in_model"]


def summed_out_latents(plan: GuidePlan) -> list[str]:
    """The finite discrete latents summed out in the model (no guide site)."""
    return [step.latent for step in plan.steps if step.kind == "enumerated_in_model"]


__all__ = ["DISCRETE_KINDS", "plan_of", "facts_of", "latent_kinds", "sampled_latents",
           "summed_out_latents"]
