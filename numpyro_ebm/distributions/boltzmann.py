r"""Fully visible Boltzmann machines ({0,1} units) and Ising models (+/-1 spins).

Both families are pairwise binary models

.. math::

    E(x) = -\tfrac{1}{2} x^\top J x - h^\top x, \qquad x_i \in \{\mathrm{low}, \mathrm{high}\},

with a symmetric, zero-diagonal coupling matrix ``J``: ``{0, 1}`` for
:class:`BoltzmannMachine`, ``{-1, +1}`` for :class:`IsingModel`. They share one
implementation, parameterized by the two unit values. Given the other units, unit ``i`` is
``high`` with probability

.. math::

    p(x_i = \mathrm{high} \mid x_{-i}) = \sigma\big(\beta\,(\mathrm{high} - \mathrm{low})\,
    \ell_i\big), \qquad \ell = h + J x,

so units of one colour of a proper colouring of the coupling graph are updated together
(block Gibbs). :meth:`IsingModel.lattice` builds nearest-neighbour models on hypercubic
lattices that store the coupling structurally (no ``N x N`` matrix) and sweep with a
checkerboard.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.util import lazy_property

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    check_finite,
    is_concrete,
)
from numpyro_ebm.distributions.coloring import (
    coloring_for_couplings,
    lattice_coloring,
)
from numpyro_ebm.distributions.constraints import (
    check_symmetric_zero_diagonal,
    spin,
    symmetric_zero_diagonal,
)
from numpyro_ebm.distributions.rbm import (
    as_float,
    batch_shape_of,
    expand_beta,
    uniform,
    vector_param,
)

__all__ = ["BoltzmannMachine", "IsingLattice", "IsingModel"]

#: Colourings with at most this many colours (and blocks of two or more units on average)
#: are swept block by block, one matrix product per colour; otherwise the sweep is a
#: ``lax.scan`` over units with incremental local-field updates (``O(n^2)`` per sweep).
MAX_COLOR_BLOCKS = 16

#: :meth:`IsingLattice.to_boltzmann` and the dense views of a lattice refuse more sites.
MAX_DENSE_SITES = 4096

#: Relative tolerance of the symmetry and zero-diagonal checks on concrete couplings.
_COUPLING_RTOL = 1e-5


def _couplings_times(x: jax.Array, matrix: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """``x @ matrix`` per batch member: ``x`` is ``sample + batch + (n,)`` (or broadcasts to
    it), ``matrix`` is ``batch' + (n, m)`` with ``batch'`` broadcasting to ``batch``; returns
    ``sample + batch + (m,)``. The sample axes are folded into the rows of one batched product,
    so ``matrix`` is never copied per chain."""
    if matrix.ndim == 2:
        return x @ matrix
    nb = len(batch_shape)
    target = jnp.broadcast_shapes(x.shape[:-1], batch_shape) + x.shape[-1:]
    x = jnp.broadcast_to(x, target)
    lead = target[: len(target) - 1 - nb]
    matrix = jnp.broadcast_to(matrix, batch_shape + matrix.shape[-2:])
    flat = x.reshape((math.prod(lead), *batch_shape, *x.shape[-1:]))
    out = jnp.einsum("s...i,...ij->s...j", flat, matrix)
    return out.reshape(lead + batch_shape + matrix.shape[-1:])


_DIAGONAL_HINT = (
    "For {0,1} units x_i^2 = x_i, so move the diagonal into fields (fields + diag(J) / 2); "
    "for +/-1 spins s_i^2 = 1 and the diagonal only shifts the energy by a constant."
)


def _blocks_of(colors: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    arr = np.asarray(colors, dtype=np.int64)
    return tuple(np.flatnonzero(arr == c).astype(np.int32) for c in np.unique(arr))


class _PairwiseBinary(EnergyBasedDistribution):
    """Dense pairwise binary model with unit values ``support_values = (low, high)``."""

    arg_constraints: ClassVar[dict[str, Any]] = {
        "couplings": symmetric_zero_diagonal,
        "fields": constraints.real_vector,
    }
    pytree_aux_fields = ("_coloring",)

    def __init__(
        self,
        couplings: Any,
        fields: Any = None,
        *,
        coloring: Any = None,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        name = type(self).__name__
        couplings = as_float(couplings)
        if couplings.ndim < 2 or couplings.shape[-1] != couplings.shape[-2]:
            raise ValueError(
                f"couplings must have shape batch_shape + (n, n) (a square, symmetric matrix "
                f"per batch member); got shape {couplings.shape}."
            )
        num_units = couplings.shape[-1]
        self.couplings = couplings
        self.fields = vector_param("fields", fields, num_units, couplings.dtype, name)
        batch_shape = batch_shape_of(
            name, couplings=couplings.shape[:-2], fields=self.fields.shape[:-1]
        )
        if validate_args is not False:
            check_finite("couplings", couplings)
            check_finite("fields", self.fields)
            if is_concrete(couplings):
                check_symmetric_zero_diagonal(couplings, _DIAGONAL_HINT)
        self._coloring = coloring_for_couplings(couplings, coloring)
        super().__init__(
            batch_shape,
            (num_units,),
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    @classmethod
    def infer_shapes(cls, couplings=(), fields=None, **kwargs):
        batch = [tuple(couplings[:-2])]
        if fields is not None:
            batch.append(tuple(fields[:-1]))
        return jax.lax.broadcast_shapes(*batch), tuple(couplings[-1:])

    # ------------------------------------------------------------------ structure
    @property
    def num_units(self) -> int:
        return self.event_shape[0]

    @property
    def coloring(self) -> np.ndarray:
        """The colour of every unit (``int32``, shape ``(n,)``); coupled units differ."""
        return np.asarray(self._coloring, dtype=np.int32)

    @property
    def update_blocks(self) -> tuple[tuple[int, ...], ...]:
        """The blocks of units one :meth:`gibbs_sweep` updates, in order (the colour
        classes, by increasing colour); units of one block are conditionally independent."""
        return tuple(tuple(int(i) for i in b) for b in _blocks_of(self._coloring))

    def _effective_couplings(self) -> jax.Array:
        """The symmetric, zero-diagonal part of ``couplings`` (what the energy uses), so that
        traced parameters (never validated) still give a consistent energy and sampler."""
        j = self.couplings
        j = 0.5 * (j + jnp.swapaxes(j, -1, -2))
        return jnp.where(jnp.eye(self.num_units, dtype=bool), jnp.zeros((), j.dtype), j)

    # ------------------------------------------------------------------ energies
    def local_fields(self, value: jax.Array) -> jax.Array:
        """``h + J x``: shape ``sample_shape + batch_shape + (n,)``."""
        x = jnp.asarray(value).astype(self.chain_dtype)
        return self.fields + _couplings_times(x, self._effective_couplings(), self.batch_shape)

    def energy(self, value: jax.Array) -> jax.Array:
        """``E(x) = -(1/2) x.J.x - h.x``, shape ``sample_shape + batch_shape``."""
        x = jnp.asarray(value).astype(self.chain_dtype)
        jx = _couplings_times(x, self._effective_couplings(), self.batch_shape)
        return -jnp.sum(x * (0.5 * jx + self.fields), -1)

    def conditional_logits(self, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """For every unit, the log-odds of its ``high`` value given all the others at inverse
        temperature ``beta``: ``beta * (high - low) * (h + J x)``, shape of the local fields.
        These are the conditionals :meth:`gibbs_sweep` draws from."""
        low, high = self.support_values
        return expand_beta(beta) * (high - low) * self.local_fields(value)

    # ------------------------------------------------------------------ sampling
    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One block-Gibbs sweep over :attr:`update_blocks` at inverse temperature ``beta``.

        Few colours: one matrix product per colour. (Nearly) one unit per colour, e.g. dense
        couplings: a ``lax.scan`` over units that updates the local fields incrementally
        (``l += (x_i' - x_i) J[i]``), ``O(n^2)`` per sweep and chain.
        """
        dtype = self.chain_dtype
        low, high = (jnp.asarray(v, dtype) for v in self.support_values)
        x = jnp.asarray(value).astype(dtype)
        # Every chain (also one per inverse temperature) gets its own state and uniforms.
        target = (x.shape, self.batch_shape + self.event_shape, expand_beta(beta).shape)
        x = jnp.broadcast_to(x, jnp.broadcast_shapes(*target))
        u = uniform(rng_key, x.shape, dtype)  # two uniforms per threefry block in float32
        scale = expand_beta(jnp.asarray(beta, dtype)) * (high - low)
        coupling = self._effective_couplings().astype(dtype)
        fields = self.fields.astype(dtype)
        blocks = _blocks_of(self._coloring)
        n = self.num_units
        if len(blocks) <= min(MAX_COLOR_BLOCKS, n / 2):
            for idx in blocks:
                local = fields[..., idx] + _couplings_times(
                    x, coupling[..., :, idx], self.batch_shape
                )
                p = jax.nn.sigmoid(scale * local)
                x = x.at[..., idx].set(jnp.where(u[..., idx] < p, high, low))
            return x

        order = np.concatenate(blocks) if blocks else np.zeros((0,), np.int32)
        local = fields + _couplings_times(x, coupling, self.batch_shape)
        scale = jnp.broadcast_to(scale, jnp.broadcast_shapes(scale.shape, (*x.shape[:-1], 1)))
        rows = jnp.moveaxis(coupling, -2, 0)  # (n,) + batch + (n,): J[..., i, :]
        u_seq = jnp.moveaxis(u, -1, 0)
        if not np.array_equal(order, np.arange(n)):
            rows, u_seq = rows[order], u_seq[order]

        def step(carry, inputs):
            x, local = carry
            i, row, u_i = inputs
            old = lax.dynamic_index_in_dim(x, i, axis=-1, keepdims=False)
            l_i = lax.dynamic_index_in_dim(local, i, axis=-1, keepdims=False)
            new = jnp.where(u_i < jax.nn.sigmoid(scale[..., 0] * l_i), high, low)
            x = lax.dynamic_update_index_in_dim(x, new, i, axis=-1)
            local = local + (new - old)[..., None] * row
            return (x, local), None

        (x, _), _ = lax.scan(step, (x, local), (jnp.asarray(order), rows, u_seq))
        return x

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        dtype = self.chain_dtype
        low, high = self.support_values

        def decode(d):
            return (low + (high - low) * d).astype(dtype)

        def unit_probs(x):
            bits = ((x - low) / (high - low)).astype(jnp.int32)
            probs = jax.nn.one_hot(bits, 2, dtype=dtype)
            return jnp.broadcast_to(probs, probs.shape[:1] + self.batch_shape + probs.shape[-2:])

        return Enumeration(
            num_units=self.num_units,
            num_values=2,
            decode=decode,
            log_weight=lambda x: -self.energy(x),
            unit_probs=unit_probs,
        )

    def _converted(self, cls, couplings, fields, offset):
        log_partition = None
        if self._log_partition_value is not None:
            log_partition = self._log_partition_value + offset
        return cls(
            couplings,
            fields,
            coloring=self._coloring,
            log_partition=log_partition,
            num_sweeps=self.num_sweeps,
            validate_args=self._validate_args,
        )


class BoltzmannMachine(_PairwiseBinary):
    r"""Fully visible Boltzmann machine over binary ``{0, 1}`` units.

    .. math::

        E(x) = -\tfrac{1}{2} x^\top W x - a^\top x, \qquad p(x) = \frac{e^{-E(x)}}{Z},
        \qquad p(x_i = 1 \mid x_{-i}) = \sigma\big(a_i + (W x)_i\big).

    Parameters
    ----------
    couplings : ArrayLike
        ``W``, shape ``batch_shape + (n, n)``, symmetric with a zero diagonal (checked on
        concrete values; only the symmetric, off-diagonal part ever enters the model, so
        traced values inside ``jit`` or SVI stay consistent).
    fields : ArrayLike, optional
        ``a``, shape ``batch_shape + (n,)``; zeros by default.
    coloring : ArrayLike, optional
        An ``int`` colour per unit such that coupled units differ (block Gibbs updates one
        colour at a time), checked against the pattern of concrete ``couplings``. By default
        a greedy colouring of the non-zero pattern of the concrete ``couplings`` (all batch
        members); when ``couplings`` are traced (the model is built inside ``jit``), one
        colour per unit, which is always valid. The colouring is static data of the pytree:
        keep the sparsity pattern when replacing the couplings of a built model.
    log_partition : ArrayLike, optional
        A known ``log Z`` to normalize ``log_prob`` with.
    num_sweeps : int
        Gibbs sweeps per call of :meth:`sample` (default 1000).
    validate_args : bool, optional
        ``False`` skips the checks on concrete parameters and data.

    See Also
    --------
    IsingModel : the same family on ``{-1, +1}`` spins (:meth:`to_ising`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.boltzmann import BoltzmannMachine
    >>> W = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    >>> bm = BoltzmannMachine(W, jnp.array([0.5, 0.0, 0.5]))
    >>> bm.coloring.tolist(), bm.update_blocks  # units 0 and 2 are not coupled
    ([1, 0, 1], ((1,), (0, 2)))
    >>> float(bm.energy(jnp.array([1, 1, 0])))  # -W_01 - a_0
    -1.5
    >>> bm.sample(jax.random.key(0), (5,)).shape
    (5, 3)
    """

    support = constraints.independent(constraints.boolean, 1)
    support_values = (0, 1)

    def to_ising(self) -> IsingModel:
        r"""The same distribution on spins ``s = 2x - 1``.

        With ``x = (s + 1) / 2``: ``J = W / 4``, ``h = a / 2 + W 1 / 4``, and
        ``E_B(x) = E_I(s) - c`` with ``c = 1^\top W 1 / 8 + 1^\top a / 2``, so
        ``log Z_B = log Z_I + c`` and ``log_prob`` agrees under the map. An attached
        ``log_partition`` is carried over.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import BoltzmannMachine, all_states
        >>> bm = BoltzmannMachine(jnp.array([[0.0, 2.0], [2.0, 0.0]]), jnp.array([-1.0, -1.0]))
        >>> ising = bm.to_ising()
        >>> ising.couplings.tolist(), ising.fields.tolist()  # J = W / 4, h = a / 2 + W 1 / 4
        ([[0.0, 0.5], [0.5, 0.0]], [0.0, 0.0])
        >>> x = all_states(bm)
        >>> bool(jnp.allclose(bm.log_prob(x), ising.log_prob(2 * x - 1)))
        True
        """
        w = self._effective_couplings()
        a = self.fields
        couplings = w / 4
        fields = a / 2 + jnp.sum(w, -1) / 4
        offset = jnp.sum(w, (-2, -1)) / 8 + jnp.sum(a, -1) / 2
        return self._converted(IsingModel, couplings, fields, -offset)

    def _support_hint(self) -> str:
        return (
            "Binarize first, e.g. (data > threshold).astype('int32'); map +/-1 spins to "
            "{0, 1} with (s + 1) // 2."
        )


class IsingModel(_PairwiseBinary):
    r"""Ising model over spins ``s_i`` in ``{-1, +1}`` with general pairwise couplings.

    .. math::

        E(s) = -\tfrac{1}{2} s^\top J s - h^\top s, \qquad p(s) = \frac{e^{-E(s)}}{Z},
        \qquad p(s_i = +1 \mid s_{-i}) = \sigma\big(2 (h_i + (J s)_i)\big).

    Use :meth:`lattice` for nearest-neighbour models on hypercubic lattices (stored
    without a dense matrix). Data in ``{0, 1}`` map to spins with ``2 * x - 1``.

    numpyro's own discrete kernels (``DiscreteHMCGibbs``, ``MixedHMC``) propose values
    ``0..K-1`` and so assume the support ``{0, 1}``: to use them, convert with
    :meth:`to_boltzmann` (the same distribution over ``x = (s + 1) / 2``).

    Parameters
    ----------
    couplings : ArrayLike
        ``J``, shape ``batch_shape + (n, n)``, symmetric with a zero diagonal.
    fields : ArrayLike, optional
        ``h``, shape ``batch_shape + (n,)``; zeros by default.
    coloring, log_partition, num_sweeps, validate_args
        As in :class:`BoltzmannMachine`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.boltzmann import IsingModel
    >>> J = 0.5 * (jnp.ones((4, 4)) - jnp.eye(4))  # fully connected ferromagnet
    >>> ising = IsingModel(J)
    >>> float(ising.energy(jnp.ones(4)))  # -J summed over the 6 pairs
    -3.0
    >>> ising.sample(jax.random.key(0), (2,)).shape
    (2, 4)
    >>> bm = ising.to_boltzmann()  # {0,1} form, e.g. for numpyro's DiscreteHMCGibbs
    >>> bool(jnp.allclose(bm.log_prob(jnp.array([1, 0, 1, 1])),
    ...                   ising.log_prob(jnp.array([1, -1, 1, 1]))))
    True
    """

    support = constraints.independent(spin, 1)
    support_values = (-1, 1)

    def to_boltzmann(self) -> BoltzmannMachine:
        r"""The same distribution on ``{0, 1}`` units ``x = (s + 1) / 2``.

        ``W = 4 J``, ``a = 2 h - 2 J 1``, and ``E_I(s) = E_B(x) + c`` with
        ``c = 1^\top h - 1^\top J 1 / 2``, so ``log Z_B = log Z_I + c``. An attached
        ``log_partition`` is carried over.
        """
        j = self._effective_couplings()
        h = self.fields
        couplings = 4 * j
        fields = 2 * h - 2 * jnp.sum(j, -1)
        offset = jnp.sum(h, -1) - jnp.sum(j, (-2, -1)) / 2
        return self._converted(BoltzmannMachine, couplings, fields, offset)

    @classmethod
    def lattice(
        cls,
        shape: tuple[int, ...],
        coupling: Any,
        field: Any = 0.0,
        periodic: bool = True,
        *,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ) -> IsingLattice:
        """A nearest-neighbour Ising model on a hypercubic lattice; see :class:`IsingLattice`.

        Examples
        --------
        An array of couplings is a batch of lattices (here three temperatures), all swept by
        one program; chains are leading axes of the state:

        >>> import jax, jax.numpy as jnp
        >>> from numpyro_ebm import IsingModel
        >>> lattices = IsingModel.lattice((8, 8), coupling=jnp.array([0.25, 0.5, 0.75]))
        >>> lattices.batch_shape, lattices.event_shape
        ((3,), (8, 8))
        >>> lattices.energy(jnp.ones((8, 8))).tolist()  # 128 bonds, -K each
        [-32.0, -64.0, -96.0]
        >>> spins = jnp.ones((4, 3, 8, 8))  # 4 chains per coupling
        >>> jax.jit(lattices.gibbs_sweep)(jax.random.key(0), spins).shape
        (4, 3, 8, 8)
        """
        return IsingLattice(
            shape,
            coupling,
            field,
            periodic,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    def _support_hint(self) -> str:
        return "Map {0,1} data to spins with 2*x - 1."


# ---------------------------------------------------------------------- lattices
def _lattice_bonds(shape: tuple[int, ...], periodic: bool) -> np.ndarray:
    """Forward nearest-neighbour bonds ``(num_bonds, 2)`` of flat (C-order) site indices."""
    sites = np.arange(math.prod(shape)).reshape(shape)
    bonds = []
    for axis, size in enumerate(shape):
        if size == 1:
            continue
        neighbour = np.roll(sites, -1, axis)
        pairs = np.stack([sites.ravel(), neighbour.ravel()], -1)
        if not periodic:
            keep = (np.indices(shape)[axis] < size - 1).ravel()
            pairs = pairs[keep]
        bonds.append(pairs)
    return np.concatenate(bonds) if bonds else np.zeros((0, 2), np.int64)


@functools.lru_cache(maxsize=32)
def _lattice_color_codes(shape: tuple[int, ...], periodic: bool) -> tuple[int, ...]:
    """The raw codes (see :func:`_raw_color_code`) of the colours of
    :func:`~numpyro_ebm.distributions.coloring.lattice_coloring`, in colour order."""
    grids = np.indices(shape)
    raw = _raw_color_code(grids, shape, periodic)
    return tuple(int(c) for c in np.unique(raw))


def _raw_color_code(grids, shape: tuple[int, ...], periodic: bool):
    """``2 * seam + parity`` per site (NumPy or JAX ``grids``), the code that
    :func:`~numpyro_ebm.distributions.coloring.lattice_coloring` relabels to ``0..C-1``."""
    parity = sum(grids[a] for a in range(len(shape))) % 2
    seam = 0
    bit = 1
    for axis, size in enumerate(shape):
        if periodic and size % 2 == 1 and size > 1:
            seam = seam + bit * (grids[axis] == size - 1).astype(parity.dtype)
            bit *= 2
    return 2 * seam + parity


def _shift(x: jax.Array, axis: int, step: int, periodic: bool) -> jax.Array:
    """``y[..., i, ...] = x[..., i + step, ...]`` along ``axis`` (``step = +/-1``), wrapped
    (periodic) or zero-padded (open)."""
    if periodic:
        return jnp.roll(x, -step, axis)
    size = x.shape[axis]
    zero = jnp.zeros((), x.dtype)
    config = [(0, 0, 0)] * x.ndim
    if step > 0:
        config[axis] = (0, 1, 0)
        return lax.pad(lax.slice_in_dim(x, 1, size, axis=axis), zero, config)
    config[axis] = (1, 0, 0)
    return lax.pad(lax.slice_in_dim(x, 0, size - 1, axis=axis), zero, config)


class IsingLattice(IsingModel):
    r"""Nearest-neighbour Ising model on a hypercubic lattice (build with
    :meth:`IsingModel.lattice`).

    .. math::

        E(s) = -K \sum_{\langle ij \rangle} s_i s_j - \sum_i h_i s_i ,

    each bond counted once: the forward neighbour of every site along every axis, wrapping
    around on periodic lattices and stopping at the edge on open ones. On a periodic axis of
    length 2 the direct and the wrapping bond join the same pair (coupled by ``2 K``, as on a
    torus); axes of length 1 carry no bonds, so ``shape=(L, 1)`` is a chain. The critical
    coupling of the square lattice is ``sinh(2 K_c) = 1``.

    The coupling is stored structurally (``O(1)`` memory, no ``N x N`` matrix) and a sweep is
    a checkerboard block-Gibbs update (:func:`~numpyro_ebm.distributions.coloring.
    lattice_coloring`: 2 colours, more when a periodic side is odd). With 2 colours and an
    even last side the sweep keeps the colours as two half-size arrays, so each colour's
    update computes neighbour sums, conditionals and uniforms for its own sites only (a
    table of the few conditionals when the field is uniform); otherwise every colour
    computes the conditionals of the whole lattice (``jnp.roll`` or zero-padded shifts)
    and keeps its own sites'.

    Parameters
    ----------
    shape : tuple of int
        The lattice, at least 2-dimensional; ``event_shape == shape``.
    coupling : ArrayLike
        ``K``: a scalar or ``batch_shape``.
    field : ArrayLike
        ``h``: a scalar or ``batch_shape`` (uniform), or per site ``batch_shape + shape`` (a
        field whose trailing dimensions equal ``shape`` is read as per-site).
    periodic : bool
        Periodic (default) or open boundaries.
    log_partition, num_sweeps, validate_args
        As in :class:`BoltzmannMachine`.

    Notes
    -----
    :attr:`couplings`, :attr:`fields` and :meth:`to_boltzmann` build the dense equivalent
    over the flattened (C-order) sites: for small lattices only (at most
    :data:`MAX_DENSE_SITES` sites).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.boltzmann import IsingModel
    >>> lat = IsingModel.lattice((64, 64), coupling=0.25)
    >>> lat.event_shape, float(lat.energy(jnp.ones((64, 64))))  # 2 * 64 * 64 bonds
    ((64, 64), -2048.0)
    >>> s = lat.gibbs_sweep(jax.random.key(0), lat.random_state(jax.random.key(1), (8,)))
    >>> s.shape
    (8, 64, 64)
    """

    arg_constraints: ClassVar[dict[str, Any]] = {
        "coupling": constraints.real,
        "field": constraints.real,
    }
    pytree_aux_fields = ("periodic", "_field_per_site")

    def __init__(
        self,
        shape: tuple[int, ...],
        coupling: Any,
        field: Any = 0.0,
        periodic: bool = True,
        *,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        shape = self._check_shape(shape)
        coupling = as_float(coupling)
        dtype = jnp.result_type(coupling, field)  # a Python-scalar field keeps K's dtype
        field = as_float(jnp.asarray(field, dtype))
        coupling = coupling.astype(field.dtype)
        d = len(shape)
        per_site = field.ndim >= d and field.shape[field.ndim - d :] == shape
        self.coupling = coupling
        self.field = field
        self.periodic = bool(periodic)
        self._field_per_site = bool(per_site)
        field_batch = field.shape[: field.ndim - d] if per_site else field.shape
        batch_shape = batch_shape_of(
            type(self).__name__, coupling=coupling.shape, field=field_batch
        )
        if validate_args is not False:
            check_finite("coupling", coupling)
            check_finite("field", field)
        EnergyBasedDistribution.__init__(
            self,
            batch_shape,
            shape,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    @staticmethod
    def _check_shape(shape: Any) -> tuple[int, ...]:
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ValueError(f"shape must be a tuple of ints; got {shape!r}.") from None
        if len(shape) < 2:
            raise ValueError(
                f"shape must have at least 2 dimensions; got {shape}. For a chain of L spins "
                f"use shape (L, 1) (axes of length 1 carry no bonds), or IsingModel with a "
                f"tridiagonal coupling matrix."
            )
        if any(s < 1 for s in shape):
            raise ValueError(f"shape must hold positive side lengths; got {shape}.")
        return shape

    @classmethod
    def infer_shapes(cls, shape, coupling=(), field=(), **kwargs):
        shape = tuple(shape)
        d = len(shape)
        field = tuple(field)
        if len(field) >= d and field[len(field) - d :] == shape:
            field = field[: len(field) - d]
        return jax.lax.broadcast_shapes(tuple(coupling), field), shape

    @constraints.dependent_property(is_discrete=True)
    def support(self):
        return constraints.independent(spin, len(self.event_shape))

    # ------------------------------------------------------------------ structure
    @property
    def num_units(self) -> int:
        return math.prod(self.event_shape)

    def _site_param(self, param: jax.Array, per_site: bool) -> jax.Array:
        """``param`` shaped to broadcast against ``batch_shape + shape``."""
        return param if per_site else param.reshape(param.shape + (1,) * len(self.event_shape))

    @property
    def coloring(self) -> np.ndarray:
        """The checkerboard colouring of the sites, shape ``event_shape``."""
        return lattice_coloring(self.event_shape, self.periodic)

    @property
    def update_blocks(self) -> tuple[tuple[int, ...], ...]:
        """The colour classes as flat (C-order) site indices, in update order."""
        return tuple(tuple(int(i) for i in b) for b in _blocks_of(tuple(self.coloring.ravel())))

    def bonds(self) -> np.ndarray:
        """The nearest-neighbour bonds as pairs of flat site indices, ``(num_bonds, 2)``.

        Examples
        --------
        >>> from numpyro_ebm import IsingModel
        >>> IsingModel.lattice((2, 3), coupling=0.5, periodic=False).bonds().tolist()
        [[0, 3], [1, 4], [2, 5], [0, 1], [1, 2], [3, 4], [4, 5]]
        """
        return _lattice_bonds(self.event_shape, self.periodic)

    def _check_dense(self, what: str) -> None:
        if self.num_units > MAX_DENSE_SITES:
            raise ValueError(
                f"{what} of a lattice with {self.num_units} sites would be a dense "
                f"{self.num_units} x {self.num_units} matrix; it is meant for small lattices "
                f"(at most {MAX_DENSE_SITES} sites). Use coupling and field, which store the "
                f"lattice structurally."
            )

    @lazy_property
    def couplings(self) -> jax.Array:
        """The dense ``J`` over flattened sites, ``batch_shape + (N, N)`` (small lattices)."""
        self._check_dense("couplings")
        n = self.num_units
        adjacency = np.zeros((n, n))
        for i, j in self.bonds():
            adjacency[i, j] += 1
            adjacency[j, i] += 1
        k = self.coupling.reshape((*self.coupling.shape, 1, 1))
        return k * jnp.asarray(adjacency, self.coupling.dtype)

    @lazy_property
    def fields(self) -> jax.Array:
        """The per-site field over flattened sites, ``batch_shape + (N,)`` (small lattices)."""
        self._check_dense("fields")
        h = jnp.broadcast_to(
            self._site_param(self.field, self._field_per_site),
            self.batch_shape + self.event_shape,
        )
        return h.reshape((*self.batch_shape, self.num_units))

    def to_boltzmann(self) -> BoltzmannMachine:
        """The dense :class:`BoltzmannMachine` over flattened sites ``x = (s + 1) / 2``
        (small lattices only; see :meth:`IsingModel.to_boltzmann`).

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import IsingModel
        >>> lattice = IsingModel.lattice((2, 3), coupling=0.5, periodic=False)
        >>> bm = lattice.to_boltzmann()
        >>> type(bm).__name__, bm.event_shape
        ('BoltzmannMachine', (6,))
        >>> x = jnp.array([1, 0, 1, 1, 1, 0])
        >>> bool(jnp.allclose(bm.log_prob(x), lattice.log_prob((2 * x - 1).reshape(2, 3))))
        True
        """
        self._check_dense("to_boltzmann()")
        dense = IsingModel(
            self.couplings,
            self.fields,
            coloring=self.coloring.ravel(),
            log_partition=self._log_partition_value,
            num_sweeps=self.num_sweeps,
            validate_args=self._validate_args,
        )
        return dense.to_boltzmann()

    # ------------------------------------------------------------------ energies
    def _neighbour_sum(self, s: jax.Array) -> jax.Array:
        d = len(self.event_shape)
        total = jnp.zeros_like(s)
        for axis in range(s.ndim - d, s.ndim):
            if s.shape[axis] > 1:
                total = total + _shift(s, axis, 1, self.periodic)
                total = total + _shift(s, axis, -1, self.periodic)
        return total

    def local_fields(self, value: jax.Array) -> jax.Array:
        """``h_i + K * (sum of the neighbouring spins)``, shape of ``value`` (broadcast with
        ``batch_shape + shape``)."""
        s = jnp.asarray(value).astype(self.chain_dtype)
        k = self._site_param(self.coupling, False)
        return self._site_param(self.field, self._field_per_site) + k * self._neighbour_sum(s)

    def energy(self, value: jax.Array) -> jax.Array:
        """``E(s) = -K sum_<ij> s_i s_j - sum_i h_i s_i``, shape ``sample_shape + batch_shape``."""
        s = jnp.asarray(value).astype(self.chain_dtype)
        d = len(self.event_shape)
        axes = tuple(range(s.ndim - d, s.ndim))
        bond_sum = jnp.zeros(s.shape[: s.ndim - d], s.dtype)
        for axis in axes:
            if s.shape[axis] > 1:
                bond_sum = bond_sum + jnp.sum(s * _shift(s, axis, 1, self.periodic), axes)
        if self._field_per_site:
            field_term = jnp.sum(self.field * s, axes)
        else:
            field_term = self.field * jnp.sum(s, axes)
        return -self.coupling * bond_sum - field_term

    def conditional_logits(self, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """For every site, the log-odds of ``+1`` given its neighbours: ``2 beta l_i``."""
        return 2 * expand_beta(beta, len(self.event_shape)) * self.local_fields(value)

    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One checkerboard block-Gibbs sweep (colour by colour) at inverse temperature
        ``beta``.

        With two colours and an even last side (the usual case), the sweep works on the
        two colours stored as half-size arrays (:meth:`_sublattice_sweep`): each colour's
        update computes fields and draws for only the sites it updates. Otherwise (odd
        periodic sides, odd last side) each colour costs a few elementwise passes over the
        whole lattice."""
        dtype = self.chain_dtype
        shape = self.event_shape
        s = jnp.asarray(value).astype(dtype)
        # Every chain (also one per inverse temperature) gets its own uniforms.
        target = (s.shape, self.batch_shape + shape, expand_beta(beta, len(shape)).shape)
        s = jnp.broadcast_to(s, jnp.broadcast_shapes(*target))
        if shape[-1] % 2 == 0 and len(_lattice_color_codes(shape, self.periodic)) == 2:
            return self._sublattice_sweep(rng_key, s, beta)
        return self._masked_sweep(rng_key, s, beta)

    def _masked_sweep(self, rng_key: jax.Array, s: jax.Array, beta: Any) -> jax.Array:
        """The checkerboard sweep on the full lattice, any colouring: each colour computes
        the conditionals of every site and keeps those of its own sites."""
        dtype = self.chain_dtype
        shape = self.event_shape
        d = len(shape)
        u = uniform(rng_key, s.shape, dtype)  # two uniforms per threefry block in float32
        scale = 2 * expand_beta(jnp.asarray(beta, dtype), d)
        k = self._site_param(self.coupling.astype(dtype), False)
        h = self._site_param(self.field.astype(dtype), self._field_per_site)
        grids = [lax.broadcasted_iota(jnp.int32, shape, a) for a in range(d)]
        codes = _raw_color_code(grids, shape, self.periodic)
        one, minus_one = jnp.ones((), dtype), -jnp.ones((), dtype)
        for code in _lattice_color_codes(shape, self.periodic):
            p = jax.nn.sigmoid(scale * (h + k * self._neighbour_sum(s)))
            s = jnp.where(codes == code, jnp.where(u < p, one, minus_one), s)
        return s

    def _sublattice_sweep(self, rng_key: jax.Array, s: jax.Array, beta: Any) -> jax.Array:
        """The checkerboard sweep of a two-colour lattice with an even last side, on the
        colours stored apart.

        Pairs of sites ``(2k, 2k + 1)`` along the last axis hold one site of each colour:
        colour 0 (even coordinate sum) sits at ``2k + q``, with ``q`` the parity of the other
        coordinates. With each colour stored as an array ``(..., m / 2)``, a site's
        neighbours along the other axes are the other colour's entries at the same ``k`` in
        the neighbouring slices, and along the last axis its entry ``k`` and the entry
        ``k - 1`` (site at an even position) or ``k + 1`` (odd position). A colour's update
        computes conditionals and uses uniforms for its own sites only (those of both
        colours drawn in one call). With a uniform field the conditional is read off a
        table of the few values the neighbour sum takes (integers in ``[-2d, 2d]``),
        computed by the same formula as per site; the draw is ``uniform(...) < p`` either
        way, as in :meth:`_masked_sweep`."""
        dtype = self.chain_dtype
        shape = self.event_shape
        d = len(shape)
        last = s.ndim - 1
        half = shape[-1] // 2
        # odd: the parity q of the coordinates other than the last, shape shape[:-1] + (1,)
        grids = [lax.broadcasted_iota(jnp.int32, (*shape[:-1], 1), a) for a in range(d - 1)]
        odd = (sum(grids) % 2) == 1

        def split(x):  # (..., m) -> colour 0, colour 1, each (..., m / 2)
            pairs = x.reshape((*x.shape[:-1], half, 2))
            first, second = pairs[..., 0], pairs[..., 1]
            return lax.optimization_barrier(
                (jnp.where(odd, second, first), jnp.where(odd, first, second))
            )

        axes = [a for a in range(s.ndim - d, last) if s.shape[a] > 1] + [last]

        def neighbour_sum(other, at_odd):
            """The sum of the neighbours of one colour's sites (at odd positions of their
            pair where ``at_odd``) from the other colour's array, padded once by one slice
            at both ends of every axis (wrapped or zeros) and materialized, so that the
            neighbours are plain slices of it (``jnp.roll`` on each term costs more)."""
            padded = other
            for axis in axes:
                if self.periodic:
                    size = padded.shape[axis]
                    edges = (
                        lax.slice_in_dim(padded, size - 1, size, axis=axis),
                        padded,
                        lax.slice_in_dim(padded, 0, 1, axis=axis),
                    )
                    padded = jnp.concatenate(edges, axis)
                else:
                    config = [(0, 0, 0)] * padded.ndim
                    config[axis] = (1, 1, 0)
                    padded = lax.pad(padded, jnp.zeros((), padded.dtype), config)
            padded = lax.optimization_barrier(padded)

            def window(offsets):
                out = padded
                for axis in axes:
                    start = 1 + offsets.get(axis, 0)
                    out = lax.slice_in_dim(out, start, start + other.shape[axis], axis=axis)
                return out

            total = window({}) + jnp.where(at_odd, window({last: 1}), window({last: -1}))
            for axis in axes[:-1]:
                total = total + window({axis: 1}) + window({axis: -1})
            return total

        scale = 2 * expand_beta(jnp.asarray(beta, dtype), d)
        k = self._site_param(self.coupling.astype(dtype), False)
        field = self.field.astype(dtype)
        if self._field_per_site:
            fields = split(jnp.broadcast_to(field, field.shape[: field.ndim - d] + shape))
        # The values of the neighbour sum: 2 terms per axis with bonds (the same site twice
        # on a periodic side of 2), all of one parity on periodic lattices.
        reach = 2 * (len(axes))
        values = range(-reach, reach + 1, 2 if self.periodic else 1)
        colours = list(split(s))
        uniforms = uniform(rng_key, (2, *colours[0].shape), dtype)
        one, minus_one = jnp.ones((), dtype), -jnp.ones((), dtype)
        for colour in (0, 1):
            nb = neighbour_sum(colours[1 - colour], odd if colour == 0 else ~odd)
            if self._field_per_site:
                p = jax.nn.sigmoid(scale * (fields[colour] + k * nb))
            else:
                h = self._site_param(field, False)
                p = None
                for v in values:
                    p_v = jax.nn.sigmoid(scale * (h + k * v))
                    p = p_v if p is None else jnp.where(nb == v, p_v, p)
            colours[colour] = jnp.where(uniforms[colour] < p, one, minus_one)
        first = jnp.where(odd, colours[1], colours[0])
        second = jnp.where(odd, colours[0], colours[1])
        return jnp.stack([first, second], -1).reshape(s.shape)

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        dtype = self.chain_dtype
        shape = self.event_shape

        def decode(digits):
            return (2 * digits - 1).astype(dtype).reshape(digits.shape[:1] + shape)

        def unit_probs(s):
            probs = jax.nn.one_hot(((s + 1) // 2).astype(jnp.int32), 2, dtype=dtype)
            return jnp.broadcast_to(probs, probs.shape[:1] + self.batch_shape + shape + (2,))

        return Enumeration(
            num_units=self.num_units,
            num_values=2,
            decode=decode,
            log_weight=lambda s: -self.energy(s),
            unit_probs=unit_probs,
        )

    def __repr__(self) -> str:
        return (
            f"IsingLattice(shape={self.event_shape}, periodic={self.periodic}, "
            f"batch_shape={self.batch_shape})"
        )
