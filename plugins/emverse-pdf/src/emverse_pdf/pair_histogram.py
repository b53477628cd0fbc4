"""Pair-distance histogram of a batch of clusters, for the Debye sum on a distance grid.

Every pair i < j of real atoms (distance d, element pair t) is spread onto the nodes
r_n = (n - lead) h of a fine grid with the p-point Lagrange weights of its bin
k = floor(d / h), i.e. onto r_{k-lead} .. r_{k+p/2} (p = 4: cubic, lead 1; p = 6: quintic,
lead 2). Then, for any smooth kernel K(r), sum_pairs K(d) ~= sum_n H_n K(r_n), with the
error of p-point interpolation, ~ (Q h)^p for K = sinc(Q r) (see :mod:`emverse_pdf.debye`
for the spacing chosen per dtype).

The weights are polynomials of degree p - 1 in the bin fraction s = d/h - k, so each pair
only adds its moments 1, s, ..., s^(p-1) to its bin (p scatters, no per-pair weights), and
one p x p matrix turns the moments into node weights. Pairs are taken in blocks of rows i
against the columns j >= (first row of the block), so only the upper triangle is computed:
a block that is mostly its leading square keeps just its pairs j > i (packed); in the other
blocks the lower half of the leading square is sent to a discarded slot. Distances come
from one small matrix product per block, d^2 = |a|^2 + |b|^2 - 2 a.b, in float64 on centred
coordinates (rounding ~1e-14 Å for clusters of 100 Å), into buffers reused from block to
block (no large temporaries). The histogram is accumulated in float64.

Gradients with respect to positions are analytic (:class:`PairHistogram`): the backward
pass recomputes each block and needs only the histogram's incoming gradient, so memory
stays at a few blocks for any cluster size.
"""

from __future__ import annotations

import torch

__all__ = ["pair_histogram", "histogram_nodes", "lagrange_matrix", "first_node_offset"]

#: pairs computed at once (per block); small enough that a block's buffers stay in cache
BLOCK_PAIRS = 2**16

_LAGRANGE_MATRICES: dict = {}


def first_node_offset(points: int) -> int:
    """lead: node n of a ``points``-point histogram sits at r = (n - lead) step."""
    return points // 2 - 1


def lagrange_matrix(points: int) -> torch.Tensor:
    """(points, points) float64: row j holds the coefficients of 1, s, ..., s^(points-1) of
    the Lagrange basis polynomial of node offset j - lead on the nodes -lead .. points-1-lead,
    i.e. the weight that node gets from a pair at bin fraction s."""
    if points not in _LAGRANGE_MATRICES:
        offsets = [j - first_node_offset(points) for j in range(points)]
        rows = []
        for j, node in enumerate(offsets):
            coefficients = [1.0]  # lowest power first
            for other in offsets[:j] + offsets[j + 1 :]:
                # multiply by (s - other) / (node - other)
                scaled = [c / (node - other) for c in coefficients]
                coefficients = [-other * c for c in scaled] + [0.0]
                for m, c in enumerate(scaled):
                    coefficients[m + 1] += c
            rows.append(coefficients)
        _LAGRANGE_MATRICES[points] = torch.tensor(rows, dtype=torch.float64)
    return _LAGRANGE_MATRICES[points]


def histogram_nodes(max_distance: float, step: float) -> int:
    """Number of histogram bins for pair distances up to ``max_distance`` (Å) at spacing ``step`` (Å)."""
    return int(max_distance / step) + 5


class _Layout:
    """Where each pair's moments go: flat slot = bin + n_bins * (type + n_types * batch).

    Masked atoms get an offset beyond the table, so every pair with one is clamped
    onto the last (discarded) slot.
    """

    def __init__(self, mask: torch.Tensor, element_index: torch.Tensor, n_elements: int, n_bins: int):
        batch, n_atoms = mask.shape
        self.n_bins = n_bins
        self.n_types = n_elements * n_elements
        self.size = batch * self.n_types * n_bins
        self.trash = self.size  # one extra slot
        self.simple = batch == 1 and n_elements == 1 and bool(mask.all())
        if self.simple:
            return
        batch_offset = torch.arange(batch, device=mask.device)[:, None] * (self.n_types * n_bins)
        self.row_offset = batch_offset + element_index * (n_elements * n_bins)
        self.col_offset = element_index * n_bins
        beyond = self.size + 1
        self.row_offset = torch.where(mask, self.row_offset, beyond)
        self.col_offset = torch.where(mask, self.col_offset, beyond)


class _Blocks:
    """The blocks of rows [a, b) x columns [a, N), with reusable buffers."""

    def __init__(self, positions64: torch.Tensor, step: float, block_pairs: int):
        batch, n_atoms, _ = positions64.shape
        self.n_atoms = n_atoms
        self.rows = max(1, min(n_atoms, block_pairs // max(1, batch * n_atoms)))
        # d^2 / h^2 = [x, |x|^2, 1] . [-2 y, 1, |y|^2] / h^2 as one (batch) matrix product
        scale = 1.0 / (step * step)
        norm2 = (positions64 * positions64).sum(-1, keepdim=True)
        ones = torch.ones_like(norm2)
        self.row_factors = torch.cat([positions64, norm2, ones], -1) * scale
        self.col_factors = torch.cat([-2.0 * positions64, ones, norm2], -1).transpose(1, 2).contiguous()
        size = batch * self.rows * n_atoms
        device = positions64.device
        self.u, self.work, self.packed = torch.empty(3, size, dtype=torch.float64, device=device)
        self.index = torch.empty(size, dtype=torch.long, device=device)
        self._lower = None

    @property
    def lower(self) -> torch.Tensor:
        """(rows, rows) bool: j <= i in a block's leading square."""
        if self._lower is None:
            local = torch.arange(self.rows, device=self.u.device)
            self._lower = local[None, :] <= local[:, None]
        return self._lower

    def __iter__(self):
        for a in range(0, self.n_atoms - 1, self.rows):
            yield a, min(a + self.rows, self.n_atoms)

    def packs(self, a: int, b: int, layout: _Layout) -> bool:
        """Whether block [a, b) keeps only its pairs j > i (packed): worth it when the block
        is mostly its leading square (few, wide blocks); otherwise the lower half of the
        square goes to the discarded slot."""
        rows, cols = b - a, self.n_atoms - a
        return layout.simple and 4 * rows > cols

    def bins(self, a: int, b: int, layout: _Layout, keep_distance: bool = False):
        """Bin fraction s (in self.u) and flat slot (in self.index) of every pair in the block;
        with ``keep_distance`` also d / h (in self.work)."""
        batch = self.row_factors.shape[0]
        rows, cols = b - a, self.n_atoms - a
        n = batch * rows * cols
        u = self.u[:n].view(batch, rows, cols)
        torch.bmm(self.row_factors[:, a:b], self.col_factors[:, :, a:], out=u)
        values = u.view(-1)
        packed = self.packs(a, b, layout)
        if packed:
            upper = _upper_positions(rows, cols, values.device)
            n = upper.numel()
            values = torch.index_select(values, 0, upper, out=self.packed[:n])
        values.clamp_min_(0.0).sqrt_()  # u = d / h
        if keep_distance:
            self.work[:n].copy_(values)
        index = self.index[:n]
        index.copy_(values)  # truncation = floor, since u >= 0
        values.sub_(index)  # s = u - floor(u), exact (h is a power of two)
        if not packed:
            square = index.view(batch, rows, cols)
            if not layout.simple:
                square.add_(layout.row_offset[:, a:b, None]).add_(layout.col_offset[:, None, a:])
                square.clamp_(max=layout.trash)
            square[:, :, :rows].masked_fill_(self.lower[:rows, :rows], layout.trash)
        return values, index, n

    def unpack(self, a: int, b: int, layout: _Layout, values: torch.Tensor) -> torch.Tensor:
        """Per-pair values of block [a, b) as (batch, rows, cols), zeros where j <= i."""
        batch = self.row_factors.shape[0]
        rows, cols = b - a, self.n_atoms - a
        if not self.packs(a, b, layout):
            return values.view(batch, rows, cols)
        full = torch.zeros(batch * rows * cols, dtype=values.dtype, device=values.device)
        full[_upper_positions(rows, cols, values.device)] = values
        return full.view(batch, rows, cols)


_UPPER_CACHE: dict = {}


def _upper_positions(rows: int, cols: int, device) -> torch.Tensor:
    """Flat positions of the entries j > i of a (rows, cols) block whose column 0 is row 0's atom."""
    key = (rows, cols, str(device))
    hit = _UPPER_CACHE.get(key)
    if hit is None:
        if len(_UPPER_CACHE) >= 8:
            _UPPER_CACHE.pop(next(iter(_UPPER_CACHE)))
        row = torch.arange(rows, device=device)[:, None]
        col = torch.arange(cols, device=device)[None, :]
        hit = _UPPER_CACHE[key] = torch.nonzero((col > row).reshape(-1)).reshape(-1)
    return hit


def _centred(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 positions about the centroid of the real atoms (distances unchanged, rounding
    smaller); masked atoms (whatever they hold, NaN included) sit at the centroid."""
    positions64 = positions.detach().to(torch.float64)
    if bool(mask.all()):
        return positions64 - positions64.mean(1, keepdim=True)
    inside = mask[..., None]
    positions64 = torch.where(inside, positions64, 0.0)
    count = mask.sum(1).clamp_min(1)[:, None, None]
    centre = positions64.sum(1, keepdim=True) / count
    return torch.where(inside, positions64 - centre, 0.0)


def _moments(positions: torch.Tensor, mask: torch.Tensor, layout: _Layout, step: float,
             block_pairs: int, points: int) -> torch.Tensor:
    """Moment table (points, size + 1) in float64: sum over each slot's pairs of s^m."""
    positions64 = _centred(positions, mask)
    blocks = _Blocks(positions64, step, block_pairs)
    table = torch.zeros(points, layout.size + 1, dtype=torch.float64, device=positions.device)
    ones = torch.ones(blocks.u.numel(), dtype=torch.float64, device=positions.device)
    for a, b in blocks:
        s, index, n = blocks.bins(a, b, layout)
        power = blocks.work[:n]
        table[0].scatter_add_(0, index, ones[:n])
        table[1].scatter_add_(0, index, s)
        torch.mul(s, s, out=power)
        table[2].scatter_add_(0, index, power)
        for m in range(3, points):
            table[m].scatter_add_(0, index, power.mul_(s))
    return table


class PairHistogram(torch.autograd.Function):
    """positions (B, N, 3) Å -> node weights (B, n_types, n_bins + points - 1), float64,
    with an analytic backward pass."""

    @staticmethod
    def forward(ctx, positions, mask, element_index, n_elements, step, n_bins, block_pairs, points):
        layout = _Layout(mask, element_index, n_elements, n_bins)
        table = _moments(positions, mask, layout, step, block_pairs, points)
        lagrange = lagrange_matrix(points).to(positions.device)
        # (node offset j, batch x type, bin) from (moment, batch x type x bin)
        per_node = (lagrange @ table[:, : layout.size]).view(points, -1, n_bins)
        n_nodes = n_bins + points - 1
        nodes = torch.zeros(per_node.shape[1], n_nodes, dtype=torch.float64, device=positions.device)
        for j in range(points):  # bin k feeds nodes k .. k + points - 1
            nodes[:, j : j + n_bins] += per_node[j]
        ctx.save_for_backward(positions, mask, element_index)
        ctx.settings = (n_elements, step, n_bins, block_pairs, points)
        return nodes.reshape(mask.shape[0], n_elements * n_elements, n_nodes)

    @staticmethod
    def backward(ctx, grad_nodes):
        positions, mask, element_index = ctx.saved_tensors
        n_elements, step, n_bins, block_pairs, points = ctx.settings
        layout = _Layout(mask, element_index, n_elements, n_bins)
        grad_nodes = grad_nodes.to(torch.float64).reshape(-1, n_bins + points - 1)
        # dL/d(moment m of bin k) = sum_j L[j, m] dL/d(node k + j)
        windows = torch.stack([grad_nodes[:, j : j + n_bins] for j in range(points)], 1)  # (t, j, k)
        grad_moments = torch.einsum("jm,tjk->mtk", lagrange_matrix(points).to(positions.device), windows)
        # per pair: dL/ds = sum_{m >= 1} m s^(m-1) T_m, tables on the flat slots (discarded slot: 0)
        tables = torch.zeros(points - 1, layout.size + 1, dtype=torch.float64, device=positions.device)
        tables[:, : layout.size] = grad_moments[1:].reshape(points - 1, -1)
        tables *= torch.arange(1, points, dtype=torch.float64, device=positions.device)[:, None]
        positions64 = _centred(positions, mask)
        blocks = _Blocks(positions64, step, block_pairs)
        grad = torch.zeros_like(positions64)
        for a, b in blocks:
            s, index, n = blocks.bins(a, b, layout, keep_distance=True)
            d_ds = torch.take(tables[-1], index)
            for m in range(points - 3, -1, -1):  # Horner
                d_ds.mul_(s).add_(torch.take(tables[m], index))
            # ds/dd = 1/h and dd/dx_i = (x_i - x_j)/d: coefficient = dL/ds / (h^2 (d/h))
            coefficient = d_ds.div_(blocks.work[:n].clamp_min_(1e-6)).mul_(1.0 / (step * step))
            coefficient = blocks.unpack(a, b, layout, coefficient)
            x_rows, x_cols = positions64[:, a:b], positions64[:, a:]
            grad[:, a:b] += x_rows * coefficient.sum(2, keepdim=True) - torch.bmm(coefficient, x_cols)
            grad[:, a:] += x_cols * coefficient.sum(1)[..., None] - torch.bmm(coefficient.transpose(1, 2), x_rows)
        return grad.to(positions.dtype), None, None, None, None, None, None, None


def pair_histogram(
    positions: torch.Tensor,
    mask: torch.Tensor,
    element_index: torch.Tensor,
    n_elements: int,
    step: float,
    n_bins: int,
    block_pairs: int = BLOCK_PAIRS,
    points: int = 4,
) -> torch.Tensor:
    """Node weights H (B, n_elements^2, n_bins + points - 1), float64, of the nodes
    r_n = (n - lead) step (Å), lead = :func:`first_node_offset` (points).

    positions: (B, N, 3) Å (may require grad); mask: (B, N) bool; element_index: (B, N)
    long into the elements; type t = e_i * n_elements + e_j counts each unordered pair once
    (as (e_i, e_j) with i < j). ``step`` (Å) must be a power of two and every pair distance
    below (n_bins - 1) step. ``points``: 4 (cubic) or 6 (quintic) Lagrange weights.
    """
    if points not in (4, 6):
        raise ValueError(f"points must be 4 or 6 (cubic or quintic Lagrange weights), got {points!r}")
    return PairHistogram.apply(positions, mask, element_index, n_elements, step, n_bins, block_pairs, points)
