"""Graph colourings for block Gibbs: units of one colour share no coupling, so they can be
updated together in one block while leaving the distribution invariant.

Colourings depend only on the sparsity pattern, are computed on the host with NumPy when the
distribution is built, and are stored as static data (so they survive ``jit``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_coloring",
    "coloring_for_couplings",
    "greedy_coloring",
    "lattice_coloring",
    "sequential_coloring",
]


def greedy_coloring(adjacency: np.ndarray) -> np.ndarray:
    """Colour the graph of a boolean ``(n, n)`` adjacency matrix greedily, largest degree
    first. Returns an ``int32`` array of colours ``0..num_colors-1``; adjacent units always
    differ. A dense graph gets ``n`` colours (one unit per block: sequential Gibbs)."""
    adjacency = np.asarray(adjacency, dtype=bool)
    n = adjacency.shape[0]
    if adjacency.shape != (n, n):
        raise ValueError(f"adjacency must be square; got shape {adjacency.shape}.")
    adjacency = (adjacency | adjacency.T) & ~np.eye(n, dtype=bool)
    order = np.argsort(-adjacency.sum(1), kind="stable")
    colors = np.full(n, -1, dtype=np.int32)
    for i in order:
        used = colors[adjacency[i] & (colors >= 0)]
        free = np.ones(len(used) + 1, dtype=bool)
        free[used[used <= len(used)]] = False
        colors[i] = int(np.argmax(free))
    return colors


def sequential_coloring(num_units: int) -> np.ndarray:
    """One colour per unit: valid for any coupling pattern (also traced couplings)."""
    return np.arange(num_units, dtype=np.int32)


def lattice_coloring(shape: tuple[int, ...], periodic: bool) -> np.ndarray:
    """A proper colouring of the nearest-neighbour graph of a hypercubic lattice.

    Even side lengths (or open boundaries) give the checkerboard (2 colours). A periodic axis
    of odd length makes the checkerboard improper across its seam, so sites on the last slice
    of such axes get colours of their own: ``2 * seam_mask + parity``, at most
    ``2 ** (1 + number of odd periodic axes)`` colours. Returns an ``int32`` array of ``shape``.
    """
    grids = np.indices(shape)
    parity = grids.sum(0) % 2
    seam = np.zeros(shape, dtype=np.int64)
    bit = 1
    for axis, size in enumerate(shape):
        if periodic and size % 2 == 1 and size > 1:
            seam += bit * (grids[axis] == size - 1)
            bit *= 2
    colors = 2 * seam + parity
    # Relabel to consecutive integers.
    _, colors = np.unique(colors, return_inverse=True)
    return colors.reshape(shape).astype(np.int32)


def check_coloring(adjacency: np.ndarray, colors: np.ndarray) -> bool:
    """True when no two adjacent units share a colour."""
    adjacency = np.asarray(adjacency, dtype=bool) & ~np.eye(len(colors), dtype=bool)
    same = colors[:, None] == colors[None, :]
    return not np.any(adjacency & same)


def coloring_for_couplings(couplings, coloring=None) -> tuple[int, ...]:
    """The static colouring of a dense model with ``couplings`` (``batch + (n, n)``).

    A user ``coloring`` is checked against the nonzero pattern (of any batch member) when the
    couplings are concrete; otherwise concrete couplings get :func:`greedy_coloring` of their
    pattern and traced ones (built inside ``jit``) :func:`sequential_coloring`, valid for any
    pattern. Returned as a hashable tuple, for a distribution's static pytree data.
    """
    from numpyro_ebm.distributions.base import is_concrete

    n = couplings.shape[-1]
    pattern = None
    if is_concrete(couplings):
        arr = np.asarray(couplings)
        pattern = np.any(arr != 0, axis=tuple(range(arr.ndim - 2)))
        pattern = (pattern | pattern.T) & ~np.eye(n, dtype=bool)
    if coloring is not None:
        colors = np.asarray(coloring)
        if (
            colors.shape != (n,)
            or not np.issubdtype(colors.dtype, np.integer)
            or np.any(colors < 0)
        ):
            raise ValueError(
                f"coloring must hold one non-negative integer colour per unit, shape ({n},); "
                f"got shape {colors.shape} and dtype {colors.dtype}."
            )
        if pattern is not None and not check_coloring(pattern, colors):
            i, j = np.argwhere(pattern & (colors[:, None] == colors[None, :]))[0]
            raise ValueError(
                f"coloring is not proper for these couplings: units {i} and {j} are coupled "
                f"but share colour {colors[i]}, so a block update would not leave the model "
                f"invariant. Omit coloring to get a greedy one, or use "
                f"numpyro_ebm.distributions.coloring.sequential_coloring({n})."
            )
    elif pattern is None:
        colors = sequential_coloring(n)
    else:
        colors = greedy_coloring(pattern)
    return tuple(int(c) for c in colors)
