"""Do a recipe's components fit each other? Checked at validation, before any run directory.

Light: reads only class attributes of the components' parameter classes (no torch):

* a forward model's params may declare ``output`` (what it predicts: "intensity",
  "amplitude", "pdf", "any") and ``takes`` (what its unknown is: "parameter_vector",
  "structure", "volume" …);
* a likelihood's params declare ``expects`` ("any" or "intensity");
* a parametrization's params declare ``takes`` (what it produces for the forward model);
* a prior's params may declare ``network`` (the kind of trainable network: "diffusion",
  "cbed_pattern", "phase_volume" …) and a training objective's params ``trains`` (the kind it
  trains);
* a task's params may define ``incompatible_with(components)`` → ``[(path, message)]`` for its
  own rules across tables (e.g. an option that needs a forward-model setting).

A pair is refused only when both sides declare something and the two disagree, so a
third-party component that declares nothing is never refused.
"""

from __future__ import annotations

from typing import Any

#: which forward-model outputs each likelihood expectation accepts
_ACCEPTS = {
    "any": None,  # everything
    "intensity": {"intensity"},
}


def _declared(spec, attribute: str) -> str | None:
    params = getattr(spec, "params", None)
    if params is None:
        return None
    value = getattr(type(params), attribute, None)
    return value if isinstance(value, str) else None


#: training settings the core ``train`` task owns; a prior that also has one (for its plugin's own
#: pipeline) must not be given another value in a ``train`` recipe, where it would be ignored
TRAIN_OWNS = ("ema_decay",)


def _default(spec, name: str):
    import attrs

    params = getattr(spec, "params", None)
    if params is None or not attrs.has(type(params)):
        return None
    field = attrs.fields_dict(type(params)).get(name)
    return None if field is None or field.default is attrs.NOTHING else field.default


def problems(components: dict[str, Any], task=None, given: dict | None = None) -> list[tuple[str, str]]:
    """``(path, message)`` for each pair of recipe tables that do not fit. ``task`` is the task's
    spec and ``given`` the recipe as written (to tell a value given from a default)."""
    out: list[tuple[str, str]] = []
    prior_given = (given or {}).get("prior") if isinstance((given or {}).get("prior"), dict) else {}
    prior_spec = components.get("prior")
    if task is not None and task.type == "train" and task.params is not None and prior_spec is not None:
        for name in TRAIN_OWNS:
            # a value other than the prior's default (a resolved recipe, as stored in a run
            # directory, writes every default out)
            if (name in prior_given and hasattr(task.params, name)
                    and prior_given[name] != _default(prior_spec, name)
                    and prior_given[name] != getattr(task.params, name)):
                out.append((f"$.prior.{name}", (
                    f"= {prior_given[name]!r} is not used by the train task, which trains with "
                    f"options.{name} = {getattr(task.params, name)!r}; set options.{name} = "
                    f"{prior_given[name]!r} and leave it out of [prior]")))
    model = components.get("forward_model")
    likelihood = components.get("likelihood")
    parametrization = components.get("parametrization")
    output = _declared(model, "output") if model is not None else None
    if likelihood is not None and output is not None:
        expects = _declared(likelihood, "expects")
        accepted = _ACCEPTS.get(expects) if expects else None
        if accepted is not None and output not in accepted:
            out.append(("$.likelihood", (
                f"{likelihood.type!r} scores {expects} predictions, but [forward_model] "
                f"{model.type!r} predicts {output}; choose a likelihood for {output} "
                f"(e.g. core.gaussian or core.rw) or a forward model that predicts {expects}")))
    if parametrization is not None and model is not None:
        produces = _declared(parametrization, "takes")
        takes = _declared(model, "takes")
        if produces and takes and produces != takes:
            out.append(("$.parametrization", (
                f"{parametrization.type!r} produces a {produces}, but [forward_model] "
                f"{model.type!r} takes a {takes}; choose a parametrization that produces a {takes}")))
    objective = components.get("objective")
    prior = components.get("prior")
    if objective is not None and prior is not None:
        trains, network = _declared(objective, "trains"), _declared(prior, "network")
        if trains and network and trains != network:
            out.append(("$.objective", (
                f"{objective.type!r} trains {trains} networks, but [prior] {prior.type!r} is a {network} "
                f"network; choose an objective for {network} networks or a {trains} prior")))
    # a task's own rules across its tables: its params may define incompatible_with(components)
    task_rule = getattr(getattr(task, "params", None), "incompatible_with", None)
    if callable(task_rule):
        out.extend(task_rule(components))
    return out
