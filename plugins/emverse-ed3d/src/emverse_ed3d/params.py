"""Parameters of the emverse-ed3d components (attrs only; no torch here)."""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import greater_than, in_range, non_negative, one_of, path_field, positive


@attrs.frozen
class RefineParams:
    """Options of ``ed3d.refine``: a dynamical refinement of a structure against 3D-ED data.

    Data: ``data`` is a PETS2 ``.cif_pets`` file. With ``synthetic = true`` only its frame
    geometry is used and the intensities are simulated from ``structure`` with the
    thickness profile below (dynamic range, drop < 1 count, Poisson, σ = √I).
    Start model: ``start_structure`` if given, else ``structure`` perturbed by up to
    ``perturbation_angstrom`` (symmetry-aware); ``enantiomer`` (a name, e.g. "P3121")
    inverts the structure into the other hand (x -> −x, operations (R, t) -> (R, −t)) before refining.
    Units: Å, Å⁻¹, degrees. The physics (selection rules, rocking curve, absorption, solver) is
    the recipe's ``[forward_model]`` (``ed3d.dynamical``).
    """

    requires: ClassVar[tuple[str, ...]] = ("refiner", "forward_model")

    data: str = path_field("file", default="shared:ed3d_pets/quartz/quartz_exp.cif_pets")
    structure: str = path_field("cif", default="shared:ed3d_pets/quartz/quartz_refined_P3221.cif")
    start_structure: str = path_field("cif", default="")
    # a finished ed3d.refine run directory: start from its refined.cif, its thickness profile (the
    # network is first fitted to it), its per-frame orientation corrections (matched by frame id) and
    # its absorption κ (where forward_model.absorption > 0)
    continue_from: str = path_field("directory", default="")
    evaluate_only: bool = False  # no epochs: report the start model's R values (e.g. under other rules)
    # with continue_from: "same" keeps the run's refined reflections (its reflections.csv) when the
    # selection rules (g_max, rsg_max) are the run's, so evaluate_only reproduces its R values; "select"
    # (or other rules) selects them anew with the run's refined orientations
    continue_reflections: str = attrs.field(default="same", validator=one_of("same", "select"))
    enantiomer: str = ""  # non-empty: refine the inverted structure (the other hand), named so
    # frame selection: every ``frame_stride``-th frame, at most ``max_frames`` (0 = all)
    frame_stride: int = attrs.field(default=1, validator=positive)
    max_frames: int = attrs.field(default=0, validator=non_negative)
    # synthetic data
    synthetic: bool = False
    thickness_profile: str = attrs.field(default="sinusoidal",
                                         validator=one_of("constant", "sinusoidal", "smooth_random"))
    profile_mean_angstrom: float = attrs.field(default=600.0, validator=positive)
    profile_amplitude_angstrom: float = attrs.field(default=200.0, validator=non_negative)
    dynamic_range: float = attrs.field(default=1e6, validator=positive)
    # start model
    perturbation_angstrom: float = attrs.field(default=0.2, validator=in_range(0.0, 1.0))
    start_u_iso_angstrom2: float = attrs.field(default=0.0, validator=non_negative)
    adp: str = attrs.field(default="auto", validator=one_of("auto", "iso", "aniso"))
    # "free": H atoms refined like every other atom (the paper: no constraints beyond symmetry);
    # "riding": H rides on its nearest non-H atom (fixed X–H vector, U_iso(H) = 1.2/1.5 × U_eq(parent))
    hydrogens: str = attrs.field(default="free", validator=one_of("free", "riding"))
    riding_adp: bool = True  # with "riding": false keeps each H's own (refined) U_iso instead of k·U_eq(parent)
    # thickness model
    thickness_model: str = attrs.field(default="nn", validator=one_of("nn", "single", "kinematical"))
    t_min_angstrom: float = attrs.field(default=50.0, validator=positive)
    t_max_angstrom: float = attrs.field(default=2000.0, validator=[positive, greater_than("t_min_angstrom")])
    t_init_angstrom: float = attrs.field(default=500.0, validator=positive)
    quadratic_prior: bool = False
    # refinement
    epochs: int = attrs.field(default=0, validator=non_negative)  # 0: the refiner's own default
    refine_orientation: bool = False
    orientation_max_iter: int = attrs.field(default=40, validator=positive)
    # per-frame orientation angles refined by the gradient together with everything else (lr: the
    # refiner's lr_orientation); after reselect_after_epochs (0 = never) the reflections are selected
    # again (rsg_max) with the refined orientations, and the remaining epochs run on the new set
    refine_orientation_gradient: bool = False
    reselect_after_epochs: int = attrs.field(default=0, validator=non_negative)
    # at the end: wR with 2n − 1 sub-orientations and ΔS·t at the refined thickness (warns when under-sampled)
    rocking_check: bool = True
    # at the end: the refined structure inverted (other hand) on the same thickness/orientations/scales-fit,
    # a z-score of the per-reflection weighted residual differences and its bootstrap (over frames) spread
    absolute_structure: bool = False
    metrics_every: int = attrs.field(default=1, validator=positive)
    # epochs between resume checkpoints (<run>/refine<stage>-resume.safetensors; 0: only at the end)
    checkpoint_every: int = attrs.field(default=10, validator=non_negative)
    # where the parameters' gradients flow: positions, ADPs, thickness model
    refine_positions: bool = True
    refine_adp: bool = True
    # the proportional absorption κ refined by the gradient (as log κ, lr: the refiner's lr_absorption),
    # starting from forward_model.absorption (> 0); reported as absorption_kappa
    refine_absorption: bool = False

    def incompatible_with(self, components) -> list[tuple[str, str]]:
        """Rules across tables, checked at recipe validation (before any run directory)."""
        model = components.get("forward_model")
        kappa = getattr(getattr(model, "params", None), "absorption", None)
        if self.refine_absorption and kappa is not None and kappa <= 0:
            return [("$.options.refine_absorption", (
                f"= true needs a start value for κ, but forward_model.absorption = {kappa!r}; set "
                "forward_model.absorption = 0.1 (JANA's usual start) or refine_absorption = false"))]
        return []


@attrs.frozen
class DynamicalParams:
    """``[forward_model] type = "ed3d.dynamical"``: the Bloch-wave physics of a 3D-ED refinement.

    The beams of each frame are the reflections with |g| ≤ ``g_max`` (Å⁻¹) and excitation error
    |s_g| ≤ ``sg_max`` (Å⁻¹); the refined reflections are those with Rsg ≤ ``rsg_max`` (0 = no
    cut; synthetic data keep all); each frame's intensities are integrated over ``n_tilts``
    sub-orientations of its rocking range (``rocking_semi_angle_deg``, 0 = the data's). The task
    binds it to the data's frames and the refined structure.
    """

    output: ClassVar[str] = "intensity"

    # proportional absorption: U' = κ U (the optical potential (1 + iκ) U); with method "eig" it is taken
    # to first order in κ through the Hermitian eigen-solve ("eig_absorptive"), "expm" is exact; 0 = none
    absorption: float = attrs.field(default=0.0, validator=non_negative)
    method: str = attrs.field(default="eig", validator=one_of("eig", "expm", "eig_absorptive"))
    g_max: float = attrs.field(default=1.4, validator=positive)
    sg_max: float = attrs.field(default=0.01, validator=positive)
    rsg_max: float = attrs.field(default=0.66, validator=non_negative)
    # sub-orientations per virtual frame (rocking-curve samples); 0 = automatic: the smallest odd n with
    # ΔS·t ≤ rocking_target (ΔS the step in excitation error of the largest |g⊥|, t = rocking_thickness_angstrom,
    # 0 = options.t_init_angstrom; for synthetic data the profile's maximum). Synthetic data are generated with
    # 2n − 1 (finer than the fit). A check at the end compares n with 2n − 1 and warns.
    n_tilts: int = attrs.field(default=0, validator=non_negative)
    rocking_target: float = attrs.field(default=0.5, validator=positive)
    rocking_thickness_angstrom: float = attrs.field(default=0.0, validator=non_negative)
    rocking_semi_angle_deg: float = attrs.field(default=0.0, validator=non_negative)
    # how each frame is integrated: "data" = the PETS2 header's geometry; "rocking" (continuous rotation,
    # ± the frame's angle about the rotation axis) or "precession" (a cone of the frame's angle about the
    # beam) overrides a header that says otherwise (the paracetamol file says continuous rotation; its
    # paper and its intensities say precession)
    integration: str = attrs.field(default="data", validator=one_of("data", "rocking", "precession"))
    # emverse-bloch engine: 0 = all frames in one batch padded to the largest beam set; > 1 = one
    # batch per group of frames whose beam counts differ by ≤ this factor (same numbers, faster)
    bucket_ratio: float = attrs.field(default=0.0, validator=non_negative)
    # > 0 (Å⁻¹): at each sub-orientation only the direct beam, the frame's refined reflections and the
    # beams with |S_g| ≤ bethe_sg are solved exactly; the others are folded in by Bethe potentials
    # (approximate, second order in U/(2K S_g); with absorption too, to first order in κ). 0 = every beam exactly
    bethe_sg: float = attrs.field(default=0.0, validator=non_negative)
    # the eigensolves in "float64" (complex128) or "float32" (complex64, 1.8x faster on quartz); the
    # intensities, the loss and the parameters stay in the recipe's dtype
    solve_precision: str = attrs.field(default="float64", validator=one_of("float64", "float32"))


@attrs.frozen
class AdamParams:
    """Adam over all parameters (paper: lr 1e-3, 200 epochs, full batch)."""

    epochs: int = attrs.field(default=200, validator=positive)
    lr: float = attrs.field(default=1e-3, validator=positive)
    lr_thickness: float = attrs.field(default=0.0, validator=non_negative)  # 0: same as lr
    target_wr: float = attrs.field(default=0.0, validator=non_negative)  # stop early below this wR
    lr_orientation: float = attrs.field(default=2e-4, validator=positive)  # rad, per-frame orientation angles
    lr_absorption: float = attrs.field(default=1e-2, validator=positive)  # on log κ (options.refine_absorption)


@attrs.frozen
class LBFGSParams:
    """L-BFGS with strong-Wolfe line search (comparison refiner)."""

    epochs: int = attrs.field(default=50, validator=positive)
    lr: float = attrs.field(default=1.0, validator=positive)
    max_iter: int = attrs.field(default=5, validator=positive)
    history_size: int = attrs.field(default=20, validator=positive)
    target_wr: float = attrs.field(default=0.0, validator=non_negative)


@attrs.frozen
class WRParams:
    """wR(all)/R(obs): instability factor u of the weights w = 1/sqrt(σ(F)² + (uF)²)."""

    instability: float = attrs.field(default=0.01, validator=non_negative)
