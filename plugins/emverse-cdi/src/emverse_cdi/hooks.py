"""Declares emverse-cdi's components (imports nothing heavy)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl

_P = "emverse_cdi.params:"


@hookimpl
def emverse_components():
    yield Component("prior", "cdi.transformer", "emverse_cdi.prior:CdiTransformerPrior",
                    _P + "TransformerPriorParams",
                    "CBED-conditioned DDPM over the 13 MgB2 parameters (ResNet encoder + transformer)")
    yield Component("prior", "cdi.regression", "emverse_cdi.prior:RegressionPrior",
                    _P + "RegressionParams",
                    "Regression baseline ResNet-10/18/34/50 (MSE), as a point-mass posterior")
    yield Component("forward_model", "cdi.toy_pattern", "emverse_cdi.toy:ToyPatternModel",
                    _P + "ToyPatternParams",
                    "Toy Gaussian-spot pattern from the 13 parameters (DW factors invisible by design)")
    yield Component("dataset", "cdi.patterns", "emverse_cdi.training:Patterns", _P + "PatternsParams",
                    "(pattern, parameters) pairs of a simulate-task Zarr store, for the core train task")
    yield Component("objective", "cdi.augmented", "emverse_cdi.training:AugmentedObjective",
                    _P + "AugmentedParams",
                    "Loss of cdi.transformer (eps-MSE) or cdi.regression (MSE) on augmented patterns")
    yield Component("task", "cdi.pipeline", "emverse_cdi.tasks:PipelineTask", _P + "PipelineOptions",
                    "Simulate, train CDI and regression, evaluate: one recipe end to end")
