from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(
        kind="forward_model",
        name="pdf.debye",
        impl="emverse_pdf.model:DebyePDF",
        params="emverse_pdf.params:DebyeParams",
        summary="Debye scattering equation: atom positions (Å) -> X-ray G(r), F(Q), S(Q) or I(Q)",
    )
    yield Component(
        kind="metric",
        name="pdf.rwp",
        impl="emverse_pdf.metrics:RwpMetric",
        params="emverse_pdf.params:RwpParams",
        summary="Rwp of a computed G(r) against a measured one after a scale/offset fit",
    )
    yield Component(
        kind="refiner",
        name="pdf.fit",
        impl="emverse_pdf.fit:PDFFit",
        params="emverse_pdf.params:FitParams",
        summary="Adam refinement of positions, scale, qdamp and B against a G(r)",
    )
    yield Component(
        kind="task",
        name="pdf.fit_structure",
        impl="emverse_pdf.tasks:FitStructureTask",
        params="emverse_pdf.params:FitStructureParams",
        summary="Refine a starting nanoparticle structure against a .gr file (or its own simulated PDF)",
    )
    yield Component(
        kind="task",
        name="pdf.fit_crystal",
        impl="emverse_pdf.tasks:FitCrystalTask",
        params="emverse_pdf.params:FitCrystalParams",
        summary="Refine periodic crystals (and nanoparticle envelopes) against G(r): calibrant first, then samples",
    )
