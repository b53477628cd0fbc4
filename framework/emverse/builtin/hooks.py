"""The core's own components: generic tasks, refiners and a metric."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component("task", "simulate", "emverse.builtin.tasks:SimulateTask",
                    "emverse.builtin.params:SimulateParams",
                    "Draw unknowns, simulate noisy observations, save them with figures")
    yield Component("task", "infer", "emverse.builtin.tasks:InferTask",
                    "emverse.builtin.params:InferParams",
                    "Posterior samples for simulated observations; metrics against the truth")
    yield Component("task", "refine", "emverse.builtin.tasks:RefineTask",
                    "emverse.builtin.params:RefineParams",
                    "Fit a forward model's parameter vector to a simulated observation")
    yield Component("refiner", "core.adam", "emverse.builtin.refiners:AdamRefiner",
                    "emverse.builtin.params:AdamParams", "Adam on every trainable parameter")
    yield Component("refiner", "core.lbfgs", "emverse.builtin.refiners:LBFGSRefiner",
                    "emverse.builtin.params:LBFGSParams", "L-BFGS (strong Wolfe) on every trainable parameter")
    yield Component("metric", "core.rmse", "emverse.builtin.metrics:RMSE", None,
                    "Root-mean-square error of a prediction (or posterior mean) per component")
