"""Crystal structures: asymmetric unit, space-group expansion, site symmetry.

A :class:`Crystal` holds what a refinement needs to know about a structure:

* the lattice (``lattice``: rows are the Cartesian a, b, c vectors in Å, ASE's
  convention: a along x, b in the xy plane) and its reciprocal
  (``reciprocal_lattice``: rows a*, b*, c* in Å⁻¹, *without* 2π);
* the asymmetric unit (:class:`Site`: element, fractional position, occupancy,
  displacement tensor ``u_cif`` in Å² in the CIF convention U_ij along the
  reciprocal axes, i.e. DW = exp(-2π² Σ_ij h_i h_j a*_i a*_j U_ij));
* the space group as a list of :class:`SymmetryOperation` (x' = R x + t, fractional);
* the expansion to the unit cell, *keeping for every atom the site it came from
  and the operation that made it* (``atom_site``, ``atom_rotation``,
  ``atom_translation``), so positions and displacement tensors of the expanded
  atoms are differentiable functions of the asymmetric unit
  (x_atom = R x_site + t, U_atom = R U_site Rᵀ in fractional-displacement form);
* site symmetry: :meth:`Crystal.site_symmetry` lists the operations that map a
  site onto itself; :meth:`Crystal.position_basis` and :meth:`Crystal.adp_basis`
  give the linear subspaces of allowed positions and U tensors (special-position
  constraints for a refinement).

Build one from a CIF (:meth:`Crystal.from_cif`, read with ASE's CIF parser) or
in code (:meth:`Crystal.from_sites`).

This is the project's one crystal model: every plugin that needs a unit cell,
symmetry or an asymmetric unit uses it (ase is needed to read CIFs and resolve
space-group symbols: ``pip install emverse[crystal]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from emverse.errors import EmverseError

#: fractional tolerance for "the same position" (site symmetry, de-duplication)
POSITION_TOLERANCE = 1e-4


def _known_elements() -> tuple[str, ...]:
    from ase.data import chemical_symbols

    return tuple(chemical_symbols[1:])


def normalise_element(symbol: str) -> str:
    """'Mg2+' -> 'Mg', 'O1-' -> 'O', 'si' -> 'Si'; raises for an unknown element."""
    match = re.match(r"\s*([A-Za-z]{1,2})", str(symbol))
    candidate = ""
    if match:
        letters = match.group(1)
        known = _known_elements()
        for trial in (letters[:1].upper() + letters[1:].lower(), letters[:1].upper()):
            if trial in known:
                candidate = trial
                break
    if not candidate:
        raise EmverseError(
            f"element {symbol!r} is unknown; give a chemical symbol such as 'Mg', 'B' or 'Si'"
        )
    return candidate


@dataclass(frozen=True)
class SymmetryOperation:
    """x' = rotation @ x + translation, in fractional coordinates."""

    rotation: np.ndarray  # (3, 3) integer matrix
    translation: np.ndarray  # (3,) in [0, 1)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.rotation @ np.asarray(x, dtype=float) + self.translation

    @classmethod
    def from_xyz(cls, text: str) -> SymmetryOperation:
        """Parse a CIF operation such as ``'-y,x-y,z+2/3'``."""
        parts = [p.strip().lower().replace(" ", "") for p in str(text).split(",")]
        if len(parts) != 3:
            raise EmverseError(
                f"symmetry operation {text!r} does not have three components; "
                "write it as in a CIF, e.g. '-y,x-y,z+2/3'"
            )
        rotation = np.zeros((3, 3))
        translation = np.zeros(3)
        for row, expr in enumerate(parts):
            for sign, coeff, var in re.findall(r"([+-]?)(\d*\.?\d*(?:/\d+)?)\*?([xyz]?)", expr):
                if not coeff and not var:
                    continue
                value = 1.0
                if coeff:
                    if "/" in coeff:
                        num, den = coeff.split("/")
                        value = float(num) / float(den)
                    else:
                        value = float(coeff)
                if sign == "-":
                    value = -value
                if var:
                    rotation[row, "xyz".index(var)] += value
                else:
                    translation[row] += value
        return cls(np.rint(rotation).astype(int), np.mod(translation, 1.0))


@dataclass(frozen=True)
class Site:
    """One atom of the asymmetric unit.

    ``position``: fractional coordinates. ``u_cif``: 3×3 displacement tensor in
    Å² (CIF convention, U_ij on the reciprocal axes); an isotropic site has
    ``u_cif = U_iso · G*_ij / (a*_i a*_j)`` (see :meth:`Crystal.isotropic_u_cif`).
    ``occupancy`` in [0, 1].
    """

    label: str
    element: str
    position: np.ndarray
    u_cif: np.ndarray
    occupancy: float = 1.0
    anisotropic: bool = False


@dataclass
class Crystal:
    """A crystal structure with its symmetry (see the module docstring)."""

    cell_lengths: tuple[float, float, float]  # Å
    cell_angles: tuple[float, float, float]  # degrees
    sites: tuple[Site, ...]
    operations: tuple[SymmetryOperation, ...]
    name: str = "crystal"
    spacegroup: str = ""
    lattice: np.ndarray = field(init=False)
    reciprocal_lattice: np.ndarray = field(init=False)
    atom_site: np.ndarray = field(init=False)
    atom_operation: np.ndarray = field(init=False)
    atom_rotation: np.ndarray = field(init=False)
    atom_translation: np.ndarray = field(init=False)

    def __post_init__(self):
        a, b, c = (float(v) for v in self.cell_lengths)
        alpha, beta, gamma = (float(v) for v in self.cell_angles)
        for name, value in zip(("a", "b", "c"), (a, b, c), strict=True):
            if not (math.isfinite(value) and value > 0):
                raise EmverseError(
                    f"cell length {name} = {value!r} Å is not positive; give the cell in Å"
                )
        from ase.geometry import cellpar_to_cell

        self.lattice = np.asarray(cellpar_to_cell([a, b, c, alpha, beta, gamma]), dtype=float)
        if abs(np.linalg.det(self.lattice)) < 1e-6:
            raise EmverseError(
                f"cell angles {self.cell_angles} give a degenerate cell; check the CIF's "
                "_cell_angle_* values (degrees)"
            )
        self.reciprocal_lattice = np.linalg.inv(self.lattice).T
        if not self.sites:
            raise EmverseError("the crystal has no atom sites; give at least one site")
        if not self.operations:
            self.operations = (SymmetryOperation(np.eye(3, dtype=int), np.zeros(3)),)
        self._expand()

    # ------------------------------------------------------------------ build
    @classmethod
    def from_sites(
        cls,
        cell_lengths: Sequence[float],
        cell_angles: Sequence[float],
        sites: Sequence[dict | Site],
        spacegroup: int | str | Sequence[str] = 1,
        name: str = "crystal",
    ) -> Crystal:
        """Build a crystal in code.

        ``sites``: dicts with ``element``, ``position`` (fractional), optional
        ``label``, ``occupancy``, and either ``u_iso`` (Å²), ``b_iso`` (Å²) or
        ``u_aniso`` (U11, U22, U33, U12, U13, U23 in Å², CIF convention).
        ``spacegroup``: an International Tables number, a Hermann–Mauguin symbol,
        or a list of operations as CIF strings (``['x,y,z', '-x,-y,-z']``).
        """
        operations = _operations_for(spacegroup)
        recip = _reciprocal_lengths(cell_lengths, cell_angles)
        built = []
        for i, s in enumerate(sites):
            if isinstance(s, Site):
                built.append(s)
                continue
            element = normalise_element(s.get("element", s.get("label", "")))
            label = s.get("label", f"{element}{i + 1}")
            position = np.asarray(s["position"], dtype=float)
            if position.shape != (3,):
                raise EmverseError(
                    f"site {label!r} position {s['position']!r} must be three fractional coordinates"
                )
            occupancy = float(s.get("occupancy", 1.0))
            if not 0.0 <= occupancy <= 1.0:
                raise EmverseError(
                    f"site {label!r} occupancy {occupancy} is outside [0, 1]; give a fraction"
                )
            if "u_aniso" in s:
                u = _u6_to_matrix(s["u_aniso"])
                anisotropic = True
            else:
                if "b_iso" in s:
                    u_iso = float(s["b_iso"]) / (8 * math.pi**2)
                else:
                    u_iso = float(s.get("u_iso", 0.0))
                if u_iso < 0:
                    raise EmverseError(
                        f"site {label!r} U_iso {u_iso} Å² is negative; give U_iso >= 0 Å²"
                    )
                u = isotropic_u_cif(u_iso, cell_lengths, cell_angles, recip)
                anisotropic = False
            built.append(Site(label, element, _snap(position), u, occupancy, anisotropic))
        return cls(
            tuple(float(v) for v in cell_lengths),
            tuple(float(v) for v in cell_angles),
            tuple(built),
            operations,
            name=name,
            spacegroup=str(spacegroup) if not isinstance(spacegroup, (list, tuple)) else "",
        )

    @classmethod
    def from_cif(cls, path: str | Path) -> Crystal:
        """Read the first data block of a CIF (ASE's parser; symmetry from the
        operation loop, else from the space-group number or symbol)."""
        path = Path(path)
        if not path.is_file():
            raise EmverseError(f"CIF file {str(path)!r} does not exist; check the path")
        raw = path.read_bytes()
        if b"\0" in raw:
            raise EmverseError(f"CIF file {str(path)!r} contains NUL bytes; it is damaged or not a text CIF")
        if raw and not raw.endswith((b"\n", b"\r")):
            # every CIF writer ends its last line; a file cut inside a line may end mid-number
            raise EmverseError(f"CIF file {str(path)!r} ends inside a line, so it looks truncated; "
                               "copy the complete file (or end its last line with a newline)")
        try:
            blocks = [b for b in parse_cif_blocks(path) if b.has_structure()]
        except EmverseError:
            raise
        except Exception as err:  # the parser raises many types
            raise EmverseError(
                f"CIF file {str(path)!r} could not be parsed ({_one_line(err)}); check that it is a valid CIF"
            ) from err
        if not blocks:
            raise EmverseError(
                f"CIF file {str(path)!r} has no data block with a cell and atom sites; "
                "it needs _cell_length_*, _cell_angle_* and an _atom_site_fract_* loop"
            )
        tags = {k.lower(): v for k, v in blocks[0].items()}
        try:
            crystal = cls._from_cif_tags(path, tags)
        except EmverseError:
            raise
        except KeyError as err:
            raise EmverseError(f"CIF file {str(path)!r} lacks {err} or has it damaged; "
                               "check that the file is complete") from err
        except (ValueError, TypeError, IndexError) as err:
            raise EmverseError(f"CIF file {str(path)!r}: {_one_line(err)}; "
                               "check that the file is complete and its numbers are valid") from err
        bad = [s.label for s in crystal.sites if not (np.isfinite(s.position).all() and np.isfinite(s.u_cif).all())]
        if bad or not np.isfinite([*crystal.cell_lengths, *crystal.cell_angles]).all():
            raise EmverseError(f"CIF file {str(path)!r} holds a non-finite number (NaN or inf) in "
                               f"{'site ' + bad[0] if bad else 'the cell'}; repair that value")
        return crystal

    @classmethod
    def _from_cif_tags(cls, path: Path, tags: dict) -> Crystal:
        """Build the crystal from the lower-cased tags of one CIF data block."""

        def number(key, default=None):
            value = tags.get(key, default)
            if value is None:
                raise EmverseError(f"CIF file {str(path)!r} lacks {key}; add it")
            return float(value)

        lengths = [number(f"_cell_length_{x}") for x in "abc"]
        angles = [number(f"_cell_angle_{x}", 90.0) for x in ("alpha", "beta", "gamma")]

        ops = None
        for key in ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz"):
            if key in tags:
                ops = list(tags[key])
                break
        if ops is None:
            sg = tags.get("_space_group_it_number", tags.get("_symmetry_int_tables_number"))
            if sg is None:
                sg = tags.get(
                    "_space_group_name_h-m_alt", tags.get("_symmetry_space_group_name_h-m", 1)
                )
            ops = sg

        labels = list(tags.get("_atom_site_label", []))
        n = len(tags["_atom_site_fract_x"])
        if not labels:
            labels = [f"site{i + 1}" for i in range(n)]
        symbols = list(tags.get("_atom_site_type_symbol", labels))
        xs, ys, zs = (tags[f"_atom_site_fract_{a}"] for a in "xyz")
        occupancies = list(tags.get("_atom_site_occupancy", [1.0] * n))
        u_iso = tags.get("_atom_site_u_iso_or_equiv")
        b_iso = tags.get("_atom_site_b_iso_or_equiv")
        aniso = {}
        if "_atom_site_aniso_label" in tags:
            keys = ("11", "22", "33", "12", "13", "23")
            if "_atom_site_aniso_u_11" in tags:
                cols = [tags[f"_atom_site_aniso_u_{k}"] for k in keys]
                scale = 1.0
            else:
                cols = [tags[f"_atom_site_aniso_b_{k}"] for k in keys]
                scale = 1.0 / (8 * math.pi**2)
            for j, label in enumerate(tags["_atom_site_aniso_label"]):
                aniso[str(label)] = [float(c[j]) * scale for c in cols]
        adp_types = list(tags.get("_atom_site_adp_type", tags.get("_atom_site_thermal_displace_type", ["?"] * n)))
        sites = []
        for i in range(n):
            entry = {
                "label": str(labels[i]),
                "element": symbols[i],
                "position": [float(xs[i]), float(ys[i]), float(zs[i])],
                "occupancy": _as_float(occupancies[i], 1.0),
            }
            if str(labels[i]) in aniso:
                entry["u_aniso"] = aniso[str(labels[i])]
            elif str(adp_types[i]).lower() in ("uani", "bani"):
                raise EmverseError(
                    f"CIF file {str(path)!r}: site {labels[i]} is {adp_types[i]} but has no row in the "
                    "_atom_site_aniso_ loop; the file looks truncated or the loop is incomplete")
            elif u_iso is not None:
                entry["u_iso"] = _as_float(u_iso[i], 0.0)
            elif b_iso is not None:
                entry["b_iso"] = _as_float(b_iso[i], 0.0)
            sites.append(entry)
        name = path.stem
        return cls.from_sites(lengths, angles, sites, spacegroup=ops, name=name)

    # -------------------------------------------------------------- expansion
    def _expand(self):
        atom_site, atom_op, rotations, translations, positions = [], [], [], [], []
        for s_index, site in enumerate(self.sites):
            mine: list[np.ndarray] = []
            for o_index, op in enumerate(self.operations):
                raw = op.apply(site.position)
                wrapped = np.mod(raw, 1.0)
                wrapped[np.isclose(wrapped, 1.0, atol=1e-9)] = 0.0
                if any(_same_position(wrapped, p) for p in mine):
                    continue
                mine.append(wrapped)
                atom_site.append(s_index)
                atom_op.append(o_index)
                rotations.append(op.rotation.astype(float))
                # keep the lattice shift so that x_atom = R x_site + t exactly
                translations.append(op.translation + (wrapped - raw))
                positions.append(wrapped)
        self.atom_site = np.asarray(atom_site, dtype=np.int64)
        self.atom_operation = np.asarray(atom_op, dtype=np.int64)
        self.atom_rotation = np.asarray(rotations, dtype=float)
        self.atom_translation = np.asarray(translations, dtype=float)
        self._atom_positions = np.asarray(positions, dtype=float)

    # ------------------------------------------------------------ properties
    @property
    def volume(self) -> float:
        """Cell volume Ω in Å³."""
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def n_atoms(self) -> int:
        return len(self.atom_site)

    @property
    def atom_positions(self) -> np.ndarray:
        """(n_atoms, 3) fractional positions in [0, 1)."""
        return self._atom_positions.copy()

    @property
    def atom_elements(self) -> tuple[str, ...]:
        return tuple(self.sites[i].element for i in self.atom_site)

    @property
    def elements(self) -> tuple[str, ...]:
        """Distinct elements in order of first appearance."""
        seen: list[str] = []
        for s in self.sites:
            if s.element not in seen:
                seen.append(s.element)
        return tuple(seen)

    @property
    def reciprocal_metric(self) -> np.ndarray:
        """G* (Å⁻²): |g|² = hᵀ G* h."""
        return self.reciprocal_lattice @ self.reciprocal_lattice.T

    @property
    def centring_translations(self) -> np.ndarray:
        """Pure translations of the space group (including 0), shape (n, 3)."""
        out = [np.zeros(3)]
        for op in self.operations:
            if np.array_equal(op.rotation, np.eye(3, dtype=int)) and np.linalg.norm(
                np.mod(op.translation + 0.5, 1.0) - 0.5
            ) > POSITION_TOLERANCE:
                out.append(op.translation)
        return np.asarray(out)

    @property
    def is_centrosymmetric(self) -> bool:
        return any(np.array_equal(op.rotation, -np.eye(3, dtype=int)) for op in self.operations)

    def g_vectors(self, hkl) -> np.ndarray:
        """Cartesian reciprocal vectors (Å⁻¹, no 2π) of Miller indices (…, 3)."""
        return np.asarray(hkl, dtype=float) @ self.reciprocal_lattice

    def direction_vector(self, uvw) -> np.ndarray:
        """Cartesian vector (Å) of the real-space direction [uvw]."""
        return np.asarray(uvw, dtype=float) @ self.lattice

    def lattice_absent(self, hkl) -> np.ndarray:
        """True where a reflection is absent because of lattice centring (any order)."""
        hkl = np.atleast_2d(np.asarray(hkl, dtype=float))
        phases = np.exp(2j * np.pi * hkl @ self.centring_translations.T)
        return np.abs(phases.sum(axis=1)) < 1e-6

    def equivalent_reflections(self, hkl) -> list[tuple[tuple[int, int, int], complex]]:
        """Reflections equivalent to ``hkl`` with the phase factor p such that
        F(h') = p · F(h) (p = exp(-2πi h·t) for h' = h R), plus Friedel mates
        (F(-h) = conj F(h) for a real potential, marked with p = None)."""
        h = np.asarray(hkl, dtype=float)
        out: dict[tuple[int, int, int], complex | None] = {}
        for op in self.operations:
            h_new = tuple(int(v) for v in np.rint(h @ op.rotation))
            if h_new not in out:
                out[h_new] = complex(np.exp(-2j * np.pi * h @ op.translation))
        for h_new in list(out):
            mate = tuple(-v for v in h_new)
            if mate not in out:
                out[mate] = None
        return list(out.items())

    # --------------------------------------------------------- site symmetry
    def site_symmetry(self, site: int) -> list[int]:
        """Indices of the operations that map site ``site`` onto itself (mod lattice)."""
        x = self.sites[site].position
        return [
            i
            for i, op in enumerate(self.operations)
            if _same_position(np.mod(op.apply(x), 1.0), np.mod(x, 1.0))
        ]

    def multiplicity(self, site: int) -> int:
        return int(np.sum(self.atom_site == site))

    def position_basis(self, site: int) -> tuple[np.ndarray, np.ndarray]:
        """(x0, P): allowed positions of ``site`` are x0 + P p, P of shape (3, d).

        d = 0 for a fixed special position (e.g. MgB2 Mg 1a), 3 for a general one.
        """
        x0 = np.asarray(self.sites[site].position, dtype=float)
        rows = [self.operations[i].rotation - np.eye(3) for i in self.site_symmetry(site)]
        return x0, _null_space(np.concatenate(rows, axis=0))

    def adp_basis(self, site: int) -> np.ndarray:
        """(6, d) basis of allowed U_cif vectors (U11, U22, U33, U12, U13, U23).

        Site symmetry requires R Σ Rᵀ = Σ for the fractional displacement
        covariance Σ = D U D (D = diag(a*, b*, c*)).
        """
        d = np.diag(np.linalg.norm(self.reciprocal_lattice, axis=1))
        basis = np.eye(6)
        constraints = []
        for i in self.site_symmetry(site):
            r = self.operations[i].rotation.astype(float)
            block = []
            for k in range(6):
                u = _u6_to_matrix(basis[k])
                sigma = d @ u @ d
                diff = r @ sigma @ r.T - sigma
                block.append(diff.reshape(-1))
            constraints.append(np.asarray(block).T)  # (9, 6)
        return _null_space(np.concatenate(constraints, axis=0))

    # ---------------------------------------------------- derived structures
    def with_sites(self, positions=None, u_cif=None, name: str | None = None) -> Crystal:
        """The same cell and symmetry with new asymmetric-unit positions (S, 3)
        (fractional) and/or displacement tensors (S, 3, 3) (Å², CIF convention)."""
        sites = []
        for i, site in enumerate(self.sites):
            pos = site.position if positions is None else np.asarray(positions[i], dtype=float)
            u = site.u_cif if u_cif is None else np.asarray(u_cif[i], dtype=float)
            sites.append(replace(site, position=pos, u_cif=u))
        return Crystal(self.cell_lengths, self.cell_angles, tuple(sites), self.operations,
                       name=name or self.name, spacegroup=self.spacegroup)

    def inverted(self, name: str | None = None) -> Crystal:
        """The enantiomorph: every position x -> −x and every operation (R, t) -> (R, −t)
        (the inversion-conjugate group, e.g. P3₂21 -> P3₁21). U tensors are unchanged
        (inversion leaves a displacement covariance as it is)."""
        operations = tuple(
            SymmetryOperation(op.rotation.copy(), np.mod(-op.translation, 1.0)) for op in self.operations
        )
        sites = [replace(site, position=np.mod(-np.asarray(site.position, dtype=float), 1.0))
                 for site in self.sites]
        return Crystal(self.cell_lengths, self.cell_angles, tuple(sites), operations,
                       name=name or f"{self.name}-inverted", spacegroup="")

    @property
    def u_cartesian_basis(self) -> np.ndarray:
        """N (3, 3) with U_cart = N U_cif Nᵀ: N = Aᵀ diag(|a*|, |b*|, |c*|), A = ``lattice``."""
        return self.lattice.T @ np.diag(np.linalg.norm(self.reciprocal_lattice, axis=1))

    def u_cartesian(self, u_cif) -> np.ndarray:
        """CIF U tensors (..., 3, 3) -> Cartesian U (..., 3, 3) in Å² (frame of ``lattice``)."""
        n = self.u_cartesian_basis
        return n @ np.asarray(u_cif, dtype=float) @ n.T

    def u_cif(self, u_cartesian) -> np.ndarray:
        """Inverse of :meth:`u_cartesian` (Å²)."""
        n_inv = np.linalg.inv(self.u_cartesian_basis)
        return n_inv @ np.asarray(u_cartesian, dtype=float) @ n_inv.T

    def to_cif(self, path: str | Path | None = None, *, title: str = "",
               u_iso: dict[str, float] | None = None, u_iso_su: dict[str, float] | None = None,
               extra: dict[str, str] | None = None) -> str:
        """The structure as CIF text (cell, symmetry operations, sites with occupancies and
        U_iso/U_ij in Å²); written to ``path`` when given. Readable by :meth:`from_cif`, ase
        and gemmi: the project's one CIF writer.

        ``u_iso`` replaces a site's U_iso (by label, Å²) and ``u_iso_su`` gives its standard
        uncertainty, written in the crystallographic ``0.0081(4)`` notation; ``extra``
        adds data items (name without the leading underscore -> text), e.g. a refined
        thickness, so the file records what the refinement found.
        """
        u_iso, u_iso_su = u_iso or {}, u_iso_su or {}
        lines = [f"data_{re.sub(r'[^A-Za-z0-9_-]', '_', self.name) or 'crystal'}"]
        if title:
            lines.append(f"_publ_section_title '{title}'")
        for key, value in zip(("a", "b", "c"), self.cell_lengths, strict=True):
            lines.append(f"_cell_length_{key} {value:.6f}")
        for key, value in zip(("alpha", "beta", "gamma"), self.cell_angles, strict=True):
            lines.append(f"_cell_angle_{key} {value:.6f}")
        symbol, number = _space_group_type(self)
        if not symbol and self.spacegroup and not str(self.spacegroup).strip().isdigit():
            symbol = self.spacegroup
        if symbol:  # ASE's reader needs a symbol; the operations below define the group
            lines.append(f"_space_group_name_H-M_alt '{symbol}'")
        if number:
            lines.append(f"_space_group_IT_number {number}")
        lines += ["", "loop_", "_space_group_symop_operation_xyz"]
        lines += [f"'{_xyz(op)}'" for op in self.operations]
        lines += ["", "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
                  "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy",
                  "_atom_site_U_iso_or_equiv"]
        for site in self.sites:
            u_eq = u_iso.get(site.label, float(np.trace(self.u_cartesian(site.u_cif)) / 3))
            x, y, z = site.position
            lines.append(f"{site.label} {site.element} {x:.8f} {y:.8f} {z:.8f} {site.occupancy:.6f} "
                         f"{with_uncertainty(u_eq, u_iso_su.get(site.label))}")
        aniso = [s for s in self.sites if s.anisotropic and s.label not in u_iso]
        if aniso:
            lines += ["", "loop_", "_atom_site_aniso_label"]
            lines += [f"_atom_site_aniso_U_{k}" for k in ("11", "22", "33", "12", "13", "23")]
            for site in aniso:
                u = site.u_cif
                lines.append(f"{site.label} " + " ".join(
                    f"{v:.8f}" for v in (u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2])))
        if extra:
            lines.append("")
            lines += [f"_{key} {value}" for key, value in extra.items()]
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_ase(self):
        """The expanded unit cell as ``ase.Atoms`` (for peer codes such as abTEM)."""
        from ase import Atoms

        return Atoms(
            symbols=list(self.atom_elements),
            scaled_positions=self.atom_positions,
            cell=self.lattice,
            pbc=True,
        )


# ---------------------------------------------------------------- helpers
def parse_cif_blocks(path: str | Path) -> list:
    """The data blocks of a CIF through ASE's parser (the project's one CIF parser), with the
    rows ASE would drop with a warning (a loop row with the wrong number of values) refused:
    a damaged row must not silently vanish from a structure or a reflection list."""
    import warnings

    from ase.io.cif import parse_cif

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blocks = list(parse_cif(str(path)))
    for warning in caught:
        text = str(warning.message)
        if text.startswith("Wrong number"):
            first = text.split(":", 1)[0]
            raise EmverseError(f"{path}: a loop row has the wrong number of values ({first.lower()}); "
                               "the file is damaged (a value or a loop column name is missing): fix it")
    return blocks


def isotropic_u_cif(u_iso, cell_lengths, cell_angles, recip_lengths=None) -> np.ndarray:
    """U_cif tensor (Å²) of an isotropic displacement U_iso (Å²)."""
    from ase.geometry import cellpar_to_cell

    lattice = cellpar_to_cell([*cell_lengths, *cell_angles])
    recip = np.linalg.inv(lattice).T
    metric = recip @ recip.T
    lengths = np.sqrt(np.diag(metric))
    return float(u_iso) * metric / np.outer(lengths, lengths)


def _reciprocal_lengths(cell_lengths, cell_angles) -> np.ndarray:
    from ase.geometry import cellpar_to_cell

    lattice = cellpar_to_cell([*cell_lengths, *cell_angles])
    return np.linalg.norm(np.linalg.inv(lattice).T, axis=1)


def with_uncertainty(value: float, su: float | None) -> str:
    """``0.253(12)`` style: the su in units of the last written digit, two digits when it
    starts with 1, else one (the usual crystallographic rule); plain when no su is known."""
    if su is None or not math.isfinite(su) or su <= 0:
        return f"{value:.8f}"
    decimals = -int(math.floor(math.log10(su)))
    if su * 10**decimals < 2:
        decimals += 1
    decimals = max(0, decimals)
    digits = round(su * 10**decimals)
    return f"{value:.{decimals}f}({digits})"


def _space_group_type(crystal: Crystal) -> tuple[str, int | None]:
    """(Hermann–Mauguin symbol, number) of the crystal's operations by spglib, or ('', None)
    when spglib is not installed or does not recognise them."""
    try:
        import spglib
    except ImportError:
        return "", None
    rotations = np.array([op.rotation for op in crystal.operations], dtype=np.intc)
    translations = np.array([op.translation for op in crystal.operations], dtype=float)
    try:
        found = spglib.get_spacegroup_type_from_symmetry(rotations, translations, crystal.lattice)
    except Exception:  # spglib raises or returns None for sets that are not a group
        return "", None
    if found is None:
        return "", None
    return str(found.international_full), int(found.number)


def _xyz(op: SymmetryOperation) -> str:
    """An operation as CIF text, e.g. '-y,x-y,z+2/3'."""
    from fractions import Fraction

    rows = []
    for r, t in zip(op.rotation, op.translation, strict=True):
        terms = ""
        for coeff, var in zip(r, "xyz", strict=True):
            if coeff:
                sign = "-" if coeff < 0 else "+"
                mag = "" if abs(coeff) == 1 else f"{abs(int(coeff))}*"
                terms += f"{sign}{mag}{var}"
        frac = Fraction(float(t)).limit_denominator(24)
        if frac:
            terms += f"+{frac}"
        rows.append(terms.lstrip("+"))
    return ",".join(rows)


def _u6_to_matrix(u6) -> np.ndarray:
    u11, u22, u33, u12, u13, u23 = (float(v) for v in u6)
    return np.array([[u11, u12, u13], [u12, u22, u23], [u13, u23, u33]])


def _null_space(matrix: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    _, s, vt = np.linalg.svd(matrix)
    rank = int(np.sum(s > tol))
    return vt[rank:].T.copy()


def _same_position(a: np.ndarray, b: np.ndarray) -> bool:
    d = np.mod(np.asarray(a) - np.asarray(b) + 0.5, 1.0) - 0.5
    return bool(np.all(np.abs(d) < POSITION_TOLERANCE))


def _snap(position: np.ndarray) -> np.ndarray:
    """Snap coordinates within 1e-6 of a multiple of 1/24 (CIFs write 1/3 as 0.333333)."""
    snapped = np.rint(position * 24) / 24
    return np.where(np.abs(snapped - position) < 1e-6, snapped, position)


def _as_float(value, default: float) -> float:
    """A CIF number; ``?`` (unknown) and ``.`` (inapplicable) give ``default``, anything
    else that is not a number is an error (never silently the default)."""
    if value is None or (isinstance(value, str) and value.strip() in ("?", ".")):
        return default
    return float(value)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _operations_for(spacegroup) -> tuple[SymmetryOperation, ...]:
    if isinstance(spacegroup, (list, tuple)) and spacegroup and isinstance(spacegroup[0], str):
        return tuple(SymmetryOperation.from_xyz(s) for s in spacegroup)
    if isinstance(spacegroup, (list, tuple)):
        return tuple(spacegroup)
    from ase.spacegroup import Spacegroup

    key = spacegroup
    if isinstance(key, str):
        key = key.strip().strip("'\"")
        if key.isdigit():
            key = int(key)
    try:
        sg = Spacegroup(key)
    except Exception as err:
        raise EmverseError(
            f"space group {spacegroup!r} is unknown ({err}); give an International Tables "
            "number (1-230), a Hermann-Mauguin symbol such as 'P 6/m m m', or the operations"
        ) from err
    rotations, translations = sg.get_op()
    return tuple(
        SymmetryOperation(np.asarray(r, dtype=int), np.mod(np.asarray(t, dtype=float), 1.0))
        for r, t in zip(rotations, translations, strict=True)
    )
