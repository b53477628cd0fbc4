"""emverse-ed3d's components (imports nothing heavy)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(kind="task", name="ed3d.refine", impl="emverse_ed3d.task:Ed3dRefineTask",
                    params="emverse_ed3d.params:RefineParams",
                    summary="Hybrid physics-ML dynamical refinement of 3D-ED data (ThicknessNN + Bloch waves)")
    yield Component(kind="forward_model", name="ed3d.dynamical", impl="emverse_ed3d.model:Ed3dForwardModel",
                    params="emverse_ed3d.params:DynamicalParams",
                    summary="Bloch-wave 3D-ED intensities per frame (selection rules, rocking curve, absorption)")
    yield Component(kind="refiner", name="ed3d.adam", impl="emverse_ed3d.refiners:Ed3dAdam",
                    params="emverse_ed3d.params:AdamParams",
                    summary="Adam over positions, ADPs and thickness model jointly, full batch over frames")
    yield Component(kind="refiner", name="ed3d.lbfgs", impl="emverse_ed3d.refiners:Ed3dLBFGS",
                    params="emverse_ed3d.params:LBFGSParams",
                    summary="L-BFGS (strong Wolfe) over the same parameters, for comparison")
    yield Component(kind="metric", name="ed3d.wr_all", impl="emverse_ed3d.metrics:WRAll",
                    params="emverse_ed3d.params:WRParams",
                    summary="wR(all) and R(obs) on amplitudes with the Jana/Klar weights (u = 0.01)")
    yield Component(kind="metric", name="ed3d.asu_rmsd", impl="emverse_ed3d.metrics:AsuRMSD",
                    summary="RMSD (Å) of the asymmetric unit to a reference, symmetry- and origin-aware")
    yield Component(kind="metric", name="ed3d.adp_error", impl="emverse_ed3d.metrics:AdpError",
                    summary="Frobenius norm of the ADP difference (Å², Cartesian tensors)")
    yield Component(kind="metric", name="ed3d.thickness_error", impl="emverse_ed3d.metrics:ThicknessProfileError",
                    summary="RMS error (Å) of a recovered thickness profile t(θ)")
