"""Components of emverse-bloch (no torch imported here)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(
        kind="forward_model",
        name="bloch.cbed",
        impl="emverse_bloch.cbed:BlochCBED",
        params="emverse_bloch.params:CbedParams",
        summary="Bloch-wave CBED pattern (one solve per disc pixel) from the 13 MgB2 [010] parameters",
    )
    yield Component(
        kind="forward_model",
        name="bloch.ed3d",
        impl="emverse_bloch.ed3d:BlochED3D",
        params="emverse_bloch.params:Ed3dParams",
        summary="Bloch-wave 3D-ED integrated intensities (rocking/precession) at arbitrary orientation",
    )
    yield Component(
        kind="task",
        name="bloch.lacbed",
        impl="emverse_bloch.lacbed_task:LacbedRefineTask",
        params="emverse_bloch.params:LacbedParams",
        summary="Refine thickness, B and pattern geometry against measured D-LACBED discs (Felix workflow)",
    )
