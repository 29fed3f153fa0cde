"""Graph colourings for block Gibbs: units of one colour share no coupling, so they can be
updated together in one block while leaving the distribution invariant.

Colourings depend only on the sparsity pattern, are computed on the host with NumPy when the
distribution is built, and are stored as static data (so they survive ``jit``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_coloring", "greedy_coloring", "lattice_coloring", "sequential_coloring"]


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
