"""``pdf.debye``: the Debye-scattering PDF forward model as an emverse ForwardModel."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse.noise import GaussianNoise, NoNoise

from emverse_pdf.debye import debye_scattering, effective_qstep, fq_to_gr, q_grid, r_grid
from emverse_pdf.params import DebyeParams
from emverse_pdf.structures import StructureBatch

__all__ = ["DebyePDF"]


class DebyePDF(ForwardModel):
    """Atom positions (Å) -> G(r) (Å⁻²), F(Q) (Å⁻¹), S(Q) or I(Q) (e², whole particle).

    The unknown ``x`` is either

    * a tensor of positions (B, N, 3) in Å; the elements (one symbol, or N
      symbols) and an optional per-atom ``mask`` (N,) were given at construction;
      ``forward(x, mask=..., elements=..., biso=...)`` overrides them per call; or
    * a :class:`~emverse_pdf.structures.StructureBatch` (padded positions, mask
      and per-structure element lists): a batch of particles with different atom counts.

    Nuisance parameters ``biso`` (Å²) and ``qdamp`` (Å⁻¹) can also be given per
    call as tensors (they may require grad; this is how :class:`~emverse_pdf.fit.PDFFit`
    refines them). The grids are the buffers :attr:`q` (Å⁻¹) and :attr:`r` (Å).
    """

    def __init__(
        self,
        elements: str | Sequence[str] = "Au",
        qmin: float = 0.7,
        qmax: float = 25.0,
        qstep: float | None = None,
        qdamp: float = 0.04,
        qbroad: float = 0.0,
        delta1: float = 0.0,
        delta2: float = 2.0,
        biso: float = 0.3,
        rmin: float = 0.0,
        rmax: float = 30.0,
        rstep: float = 0.01,
        output: str = "gr",
        noise_sigma: float = 0.0,
        max_chunk_elements: int = 2**22,
        pair_sum: str = "auto",
        mask: torch.Tensor | None = None,
        n_example_atoms: int = 13,
    ):
        noise = GaussianNoise(noise_sigma) if noise_sigma > 0 else NoNoise()
        super().__init__(noise=noise)
        if isinstance(elements, str) and len(elements.split()) > 1:
            elements = tuple(elements.split())
        if not isinstance(elements, str):
            elements = tuple(elements)
        try:
            self.settings = DebyeParams(
                elements=elements if isinstance(elements, str) else " ".join(elements),
                qmin=qmin,
                qmax=qmax,
                qstep=qstep,
                qdamp=qdamp,
                qbroad=qbroad,
                delta1=delta1,
                delta2=delta2,
                biso=biso,
                rmin=rmin,
                rmax=rmax,
                rstep=rstep,
                output=output,
                noise_sigma=noise_sigma,
                max_chunk_elements=max_chunk_elements,
                pair_sum=pair_sum,
            )
        except ValueError as exc:
            raise EmverseError(f"pdf.debye: {exc}") from exc
        self.elements = elements
        self.output = output
        self.n_example_atoms = int(n_example_atoms)
        self.register_buffer("q", q_grid(self.settings), persistent=False)
        self.register_buffer("r", r_grid(self.settings), persistent=False)
        self.register_buffer(
            "mask", None if mask is None else torch.as_tensor(mask, dtype=torch.bool), persistent=False
        )

    @classmethod
    def from_params(cls, params, ctx=None):
        return cls(**attrs.asdict(params, recurse=False))

    @property
    def qstep(self) -> float:
        """Q grid step in Å⁻¹."""
        return effective_qstep(self.settings)

    @property
    def axis(self) -> torch.Tensor:
        """The abscissa of :meth:`forward`'s output: r (Å) for G(r), Q (Å⁻¹) otherwise."""
        return self.r if self.output == "gr" else self.q

    def scattering(
        self,
        x,
        *,
        mask: torch.Tensor | None = None,
        elements=None,
        biso: torch.Tensor | float | None = None,
        qdamp: torch.Tensor | float | None = None,
        r: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every quantity at once: ``{"q", "iq", "sq", "fq", "r", "gr", "n_atoms"}``.

        ``r`` (Å) evaluates G on another grid (e.g. a measured file's).
        """
        positions, mask, elements, biso = self._unpack(x, mask, elements, biso)
        dtype = positions.dtype
        q = self.q.to(dtype=dtype, device=positions.device)
        out = debye_scattering(
            positions, elements, mask, self.settings, biso=biso, q=q
        )
        grid = self.r.to(dtype=dtype, device=positions.device) if r is None else torch.as_tensor(
            r, dtype=dtype, device=positions.device
        )
        damping = self.settings.qdamp if qdamp is None else qdamp
        out["r"] = grid
        out["gr"] = fq_to_gr(out["fq"], q, grid, self.qstep, damping)
        return out

    def forward(self, x, *, mask=None, elements=None, biso=None, qdamp=None, r=None) -> torch.Tensor:
        """(B, n_r) G(r) in Å⁻², or (B, n_q) F/S/I(Q) per :attr:`output`."""
        if self.output == "gr":
            positions, mask, elements, biso = self._unpack(x, mask, elements, biso)
            out = debye_scattering(
                positions, elements, mask, self.settings, biso=biso,
                q=self.q.to(dtype=positions.dtype, device=positions.device),
            )
            grid = self.r if r is None else torch.as_tensor(r)
            grid = grid.to(dtype=positions.dtype, device=positions.device)
            damping = self.settings.qdamp if qdamp is None else qdamp
            return fq_to_gr(out["fq"], out["q"], grid, self.qstep, damping)
        return self.scattering(x, mask=mask, elements=elements, biso=biso)[self.output]

    def _unpack(self, x, mask, elements, biso):
        if isinstance(x, StructureBatch):
            positions = x.positions
            mask = x.mask if mask is None else mask
            elements = x.elements if elements is None else elements
            biso = x.biso if biso is None else biso
        else:
            positions = torch.as_tensor(x)
            if positions.dim() != 3 or positions.shape[-1] != 3:
                raise EmverseError(
                    f"pdf.debye expects positions of shape (batch, n_atoms, 3) in Å, got {tuple(positions.shape)}"
                )
            if mask is None and self.mask is not None:
                if self.mask.shape[-1] != positions.shape[1]:
                    raise EmverseError(
                        f"the model's mask has {self.mask.shape[-1]} atoms but positions has {positions.shape[1]}"
                    )
                mask = self.mask.to(positions.device)
            if elements is None:
                elements = self.elements
        return positions, mask, elements, biso

    def example_input(self, batch: int, generator: torch.Generator | None = None, dtype=torch.float64):
        """A batch of small jittered FCC fragments (``n_example_atoms`` atoms, Au-like spacing), Å."""
        base = torch.tensor(
            [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=torch.float64
        )
        cells = torch.tensor(
            [[i, j, k] for i in range(3) for j in range(3) for k in range(3)], dtype=torch.float64
        )
        lattice = (base[None] + cells[:, None]).reshape(-1, 3) * 4.08
        lattice = lattice - lattice.mean(0)
        order = torch.argsort(lattice.norm(dim=1))
        n = self.n_example_atoms
        if not isinstance(self.elements, str):
            n = len(self.elements)
        if n > order.numel():
            raise EmverseError(f"n_example_atoms {n} exceeds the {order.numel()} atoms of the example fragment")
        core = lattice[order[:n]]
        jitter = 0.1 * torch.randn(batch, n, 3, generator=generator, dtype=torch.float64)
        return (core[None] + jitter).to(dtype)
