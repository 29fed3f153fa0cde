"""Constraints used by the energy-based families.

numpyro's constraint objects describe supports and parameter domains; the two added here
are the +/-1 spin support of Ising models and the symmetric, zero-diagonal coupling
matrices of Boltzmann machines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

__all__ = ["check_symmetric_zero_diagonal", "spin", "symmetric_zero_diagonal"]


class _Spin(constraints._SingletonConstraint):
    """Values in ``{-1, +1}``."""

    is_discrete = True

    def __call__(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.equal(x, -1) | xp.equal(x, 1)

    def feasible_like(self, prototype):
        return jnp.ones_like(prototype)


class _SymmetricZeroDiagonal(constraints._SingletonConstraint):
    """Square matrices ``J`` with ``J == J.T`` and ``diag(J) == 0`` (up to float tolerance)."""

    event_dim = 2

    def __call__(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        scale = xp.maximum(xp.max(xp.abs(x), axis=(-2, -1)), 1.0)
        tol = 1e-5 * scale
        sym = xp.max(xp.abs(x - xp.swapaxes(x, -2, -1)), axis=(-2, -1)) <= tol
        diag = xp.max(xp.abs(xp.diagonal(x, axis1=-2, axis2=-1)), axis=-1) <= tol
        return sym & diag

    def feasible_like(self, prototype):
        return jnp.zeros_like(prototype)


spin = _Spin()
symmetric_zero_diagonal = _SymmetricZeroDiagonal()


def check_symmetric_zero_diagonal(couplings, hint: str = "") -> None:
    """Raise ``ValueError`` naming ``couplings`` unless the concrete matrix (or batch of
    matrices) is symmetric with a zero diagonal, with the tolerance of
    :data:`symmetric_zero_diagonal`. ``hint`` explains what a diagonal would mean."""
    arr = np.asarray(couplings, dtype=np.float64)
    tol = 1e-5 * max(float(np.max(np.abs(arr), initial=0.0)), 1.0)
    asym = float(np.max(np.abs(arr - np.swapaxes(arr, -1, -2)), initial=0.0))
    if asym > tol:
        raise ValueError(
            f"couplings must be symmetric (J == J.T); got max |J - J.T| = {asym:.3g}. The "
            "energy only sees the symmetric part: use (J + J.T) / 2 (swapaxes(J, -1, -2) for "
            "a batch)."
        )
    diag = float(np.max(np.abs(np.diagonal(arr, axis1=-2, axis2=-1)), initial=0.0))
    if diag > tol:
        raise ValueError(
            f"couplings must have a zero diagonal; got max |J_ii| = {diag:.3g}. {hint}"
        )
