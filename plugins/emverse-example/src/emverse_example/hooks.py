"""Declares the example plugin's components. Imports nothing heavy."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(
        kind="forward_model",
        name="example.linear_gaussian",
        impl="emverse_example.linear:LinearGaussian",
        params="emverse_example.params:LinearGaussianParams",
        summary="y = A x + Gaussian noise, A drawn once from a fixed seed",
    )
    yield Component(
        kind="prior",
        name="example.gaussian",
        impl="emverse_example.prior:GaussianPrior",
        params="emverse_example.params:GaussianPriorParams",
        summary="Isotropic Gaussian prior with the exact linear-Gaussian posterior",
    )
