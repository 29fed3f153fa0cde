"""Potts models: ``q``-state units with pairwise "same state" couplings and per-state fields.

Units take the integer values ``0..q-1``. Two forms share one class:

- :class:`PottsModel` takes a dense, symmetric coupling matrix (any graph);
- :meth:`PottsModel.lattice` builds a :class:`PottsLattice`, a hypercubic nearest-neighbour
  lattice stored structurally (one coupling constant, never an ``N x N`` matrix), so a
  ``1024 x 1024`` lattice costs ``O(N q)`` per sweep.

Both sample by block Gibbs over the colour classes of a proper graph colouring (units of
one colour share no coupling, so their conditionals are independent and they are drawn
together), one uniform per unit per sweep, by inverse CDF.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.distributions import constraints

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    check_finite,
    is_concrete,
)
from numpyro_ebm.distributions.coloring import coloring_for_couplings, lattice_coloring
from numpyro_ebm.distributions.constraints import (
    check_symmetric_zero_diagonal,
    symmetric_zero_diagonal,
)
from numpyro_ebm.distributions.rbm import as_float, batch_shape_of, expand_beta, uniform

__all__ = ["PottsLattice", "PottsModel", "categorical_draw", "one_hot"]

#: Colourings with at most this many colours are swept block by block in straight-line code;
#: more colours (up to one unit per colour: sequential Gibbs) run as a ``lax.scan`` over
#: blocks of at most ``ceil(n / num_colors)`` units, so a sweep costs ``O(n^2 q)``.
MAX_UNROLLED_COLORS = 8

# Inverse-CDF draws unroll the cumulative sum up to this many states.
_MAX_UNROLLED_STATES = 32

# Einsum letters for batch and sample axes (``i``, ``n``, ``k`` are taken).
_AXIS_LETTERS = "abcdefghjlmoprstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def one_hot(value: Any, num_states: int, dtype) -> jax.Array:
    """``[value == k]`` for ``k = 0..num_states-1``: shape ``value.shape + (num_states,)``.

    Works for integer and float-coded values alike (chain states are floats).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm.distributions.potts import one_hot
    >>> one_hot(jnp.array([0.0, 2.0]), 3, jnp.int32).tolist()
    [[1, 0, 0], [0, 0, 1]]
    """
    value = jnp.asarray(value)
    return (value[..., None] == jnp.arange(num_states, dtype=value.dtype)).astype(dtype)


def categorical_draw(uniform: jax.Array, logits: jax.Array) -> jax.Array:
    """Draw ``k`` with probability ``softmax(logits)[k]`` by inverse CDF, from one uniform
    in ``[0, 1)`` per draw. ``uniform`` has shape ``logits.shape[:-1]``; the result has that
    shape and the dtype of ``logits``.

    Examples
    --------
    With probabilities ``(0.2, 0.3, 0.5)`` the cumulative thresholds are 0.2 and 0.5:

    >>> import jax.numpy as jnp
    >>> from numpyro_ebm.distributions.potts import categorical_draw
    >>> logits = jnp.log(jnp.array([[0.2, 0.3, 0.5]] * 4))
    >>> categorical_draw(jnp.array([0.1, 0.25, 0.6, 0.99]), logits).tolist()
    [0.0, 1.0, 2.0, 2.0]
    """
    q = logits.shape[-1]
    if q <= _MAX_UNROLLED_STATES:
        return _draw_from_parts(uniform, [logits[..., k] for k in range(q)])
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    cdf = jnp.cumsum(weights, axis=-1)
    threshold = uniform[..., None] * cdf[..., -1:]
    return jnp.sum(cdf[..., :-1] <= threshold, axis=-1).astype(logits.dtype)


def _draw_from_parts(uniform: jax.Array, parts: list[jax.Array]) -> jax.Array:
    """:func:`categorical_draw` with the logits of each state given as a separate array:
    one elementwise pass per state (XLA's cumsum over a short last axis is slow on CPU)."""
    top = functools.reduce(jnp.maximum, parts)
    cdf = list(itertools.accumulate(jnp.exp(part - top) for part in parts))
    threshold = uniform * cdf[-1]
    dtype = jnp.result_type(*parts)
    return sum((c <= threshold).astype(dtype) for c in cdf[:-1])


def _couple(rows: jax.Array, onehot: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """``sum_j rows[..., i, j] * onehot[..., j, k]``: shape ``lead + (len(i), q)``.

    ``rows`` is ``batch + (B, n)`` (or ``(B, n)``), ``onehot`` is ``lead + (n, q)`` with
    ``lead`` ending in ``batch_shape``. Written as one ``dot_general`` per batch member, so
    the couplings are never copied once per chain."""
    if rows.ndim == 2:
        return jnp.einsum("in,...nk->...ik", rows, onehot)
    nb = len(batch_shape)
    lead = jnp.broadcast_shapes(onehot.shape[:-2], batch_shape)
    rows = jnp.broadcast_to(rows, batch_shape + rows.shape[-2:])
    onehot = jnp.broadcast_to(onehot, lead + onehot.shape[-2:])
    b = _AXIS_LETTERS[:nb]
    s = _AXIS_LETTERS[nb : len(lead)]
    return jnp.einsum(f"{b}in,{s}{b}nk->{s}{b}ik", rows, onehot)


def _blocks_from_colors(colors: np.ndarray) -> tuple[tuple[int, ...], ...]:
    colors = np.asarray(colors).reshape(-1)
    return tuple(tuple(int(i) for i in np.flatnonzero(colors == c)) for c in np.unique(colors))


def _padded_chunks(blocks: tuple[tuple[int, ...], ...], num_units: int) -> np.ndarray:
    """Split colour blocks into chunks of at most ``ceil(n / num_colors)`` units, padded with
    the out-of-range index ``n``: at most ``2 * num_colors`` chunks, so padding at most
    doubles the work. Units of one colour are conditionally independent, so updating a
    colour in several chunks is the same kernel as updating it at once."""
    size = max(1, math.ceil(num_units / len(blocks)))
    chunks = [block[i : i + size] for block in blocks for i in range(0, len(block), size)]
    out = np.full((len(chunks), size), num_units, dtype=np.int32)
    for row, chunk in enumerate(chunks):
        out[row, : len(chunk)] = chunk
    return out


class PottsModel(EnergyBasedDistribution):
    r"""Potts model with dense pairwise couplings: ``q``-state units coded ``0..q-1``.

    .. math::

        E(x) = -\sum_{i<j} J_{ij}\,[x_i = x_j] - \sum_i h_{i, x_i}
             = -\tfrac12 \sum_{i,j} J_{ij}\,[x_i = x_j] - \sum_i h_{i, x_i},
        \qquad p(x) = \frac{e^{-E(x)}}{Z}.

    One sweep of :meth:`gibbs_sweep` updates the colour classes of :attr:`coloring` in
    order, each unit drawn from

    .. math::

        p_\beta(x_i = k \mid x_{-i}) \propto
        \exp\Big(\beta\,\big(h_{ik} + \textstyle\sum_j J_{ij}\,[x_j = k]\big)\Big)

    (the logits are :meth:`conditional_logits`; the blocks, in order, are
    :attr:`update_blocks`). A sweep costs ``O(n^2 q)`` per chain for any colouring. For
    ``q = 2`` this is an Ising model with couplings ``J / 2`` on the spins ``s = 2x - 1``, up
    to a constant.

    Couplings that are not validated (traced, or ``validate_args=False``) are used through
    their symmetric, zero-diagonal part, so the energy and the sampler always agree.

    Parameters
    ----------
    couplings : ArrayLike
        ``J``, shape ``batch_shape + (n, n)``: symmetric with a zero diagonal.
    fields : ArrayLike, optional
        ``h``, shape ``batch_shape + (n, q)``: ``h[..., i, k]`` favours state ``k`` of unit
        ``i``. The number of states ``q`` is read from the last axis. Omit it (zeros) only
        together with ``num_states``.
    num_states : int, optional
        ``q``; needed only when ``fields`` is omitted (must match ``fields`` otherwise).
    coloring : ArrayLike, optional
        One non-negative integer colour per unit (shape ``(n,)``); units sharing a colour
        must not be coupled in any batch member, which is checked when ``couplings`` is
        concrete. Default: a greedy colouring of the nonzero pattern of concrete couplings,
        or one colour per unit (sequential Gibbs, always valid) for traced couplings. The
        colouring is static data: it survives ``jit``, ``vmap`` and ``scan``.
    log_partition : ArrayLike, optional
        A known ``log Z`` (see :class:`~numpyro_ebm.distributions.base.EnergyBasedDistribution`).
    num_sweeps : int
        Gibbs sweeps per call of :meth:`sample`, from uniformly random states (default 1000).
    validate_args : bool, optional
        ``False`` skips the checks on concrete parameters and data.

    See Also
    --------
    PottsModel.lattice : nearest-neighbour lattices, stored without a coupling matrix.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.potts import PottsModel
    >>> ring = jnp.roll(jnp.eye(6), 1, axis=1)
    >>> potts = PottsModel(0.5 * (ring + ring.T), jnp.zeros((6, 3)))
    >>> potts.event_shape, potts.num_states, potts.num_colors
    ((6,), 3, 2)
    >>> potts.sample(jax.random.key(0), (4,)).shape
    (4, 6)
    >>> float(potts.energy(jnp.zeros(6, dtype=jnp.int32)))  # 6 bonds, all satisfied
    -3.0
    """

    arg_constraints: ClassVar[dict[str, Any]] = {
        "couplings": symmetric_zero_diagonal,
        "fields": constraints.independent(constraints.real, 2),
    }
    pytree_data_fields = ("couplings", "fields")
    pytree_aux_fields = ("num_states", "_coloring")

    def __init__(
        self,
        couplings: Any,
        fields: Any = None,
        *,
        num_states: int | None = None,
        coloring: Any = None,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        name = type(self).__name__
        couplings = as_float(couplings)
        if couplings.ndim < 2 or couplings.shape[-1] != couplings.shape[-2]:
            raise ValueError(
                f"couplings must be square, shape batch_shape + (n, n); got shape "
                f"{couplings.shape}."
            )
        n = couplings.shape[-1]
        if fields is None:
            if num_states is None:
                raise ValueError(
                    f"{name} needs the number of states: pass fields of shape batch_shape + "
                    f"({n}, num_states), or num_states=q for zero fields."
                )
            fields = np.zeros((n, _check_num_states(num_states)), couplings.dtype)
        fields = as_float(fields)
        if fields.ndim < 2 or fields.shape[-2] != n or fields.shape[-1] < 2:
            raise ValueError(
                f"fields must have shape batch_shape + ({n}, q) with q >= 2 states, one row "
                f"per unit of the {n} x {n} couplings; got shape {fields.shape}."
            )
        q = fields.shape[-1]
        if num_states is not None and _check_num_states(num_states) != q:
            raise ValueError(
                f"num_states={num_states} does not match fields, whose last axis has {q} "
                "states; drop num_states or fix the fields."
            )
        dtype = jnp.result_type(couplings, fields)
        self.couplings = _as_dtype(couplings, dtype)
        self.fields = _as_dtype(fields, dtype)
        self.num_states = int(q)
        batch_shape = batch_shape_of(name, couplings=couplings.shape[:-2], fields=fields.shape[:-2])
        self._coloring = coloring_for_couplings(couplings, coloring)
        super().__init__(
            batch_shape,
            (n,),
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )
        if validate_args is not False and not self._validate_args:
            self.validate_args(strict=False)  # numpyro did not call it: validation is off

    def validate_args(self, strict: bool = True) -> None:
        """Check concrete parameters (finite; couplings symmetric with a zero diagonal),
        raising ``ValueError``. Runs on the host with NumPy, so construction compiles
        nothing; numpyro calls it on construction when its validation is enabled."""
        if not is_concrete(self.couplings, self.fields):
            if strict:
                raise RuntimeError("Cannot validate arguments inside jitted code.")
            return
        check_finite("couplings", self.couplings)
        check_finite("fields", self.fields)
        check_symmetric_zero_diagonal(
            self.couplings,
            "A self coupling [x_i == x_i] is a constant: zero it, e.g. J * (1 - jnp.eye(n)).",
        )

    @classmethod
    def lattice(
        cls,
        shape: tuple[int, ...],
        num_states: int,
        coupling: Any,
        fields: Any = None,
        *,
        periodic: bool = True,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ) -> PottsLattice:
        """A nearest-neighbour Potts model on a hypercubic lattice: see :class:`PottsLattice`.

        Examples
        --------
        A batch of two couplings (two lattices swept by one program):

        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import PottsModel
        >>> potts = PottsModel.lattice((8, 8), num_states=3, coupling=jnp.array([0.25, 1.0]))
        >>> potts.batch_shape, potts.event_shape
        ((2,), (8, 8))
        >>> potts.energy(jnp.zeros((8, 8))).tolist()  # 128 satisfied bonds, -K each
        [-32.0, -128.0]
        """
        return PottsLattice(
            shape,
            num_states,
            coupling,
            fields,
            periodic=periodic,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    @classmethod
    def infer_shapes(cls, couplings=(), fields=None, **kwargs):
        batch = [tuple(couplings[:-2])]
        if fields is not None:
            batch.append(tuple(fields[:-2]))
        return jax.lax.broadcast_shapes(*batch), tuple(couplings[-1:])

    # ------------------------------------------------------------------ structure
    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(
            constraints.integer_interval(0, self.num_states - 1), len(self.event_shape)
        )

    @property
    def support_values(self) -> tuple[int, ...]:
        return tuple(range(self.num_states))

    @property
    def num_units(self) -> int:
        """Number of units ``n`` (sites, for lattices)."""
        return math.prod(self.event_shape)

    @property
    def coloring(self) -> np.ndarray:
        """The colour of every unit (shape ``event_shape``), as used by :meth:`gibbs_sweep`."""
        return np.asarray(self._coloring, dtype=np.int32)

    @property
    def num_colors(self) -> int:
        return len(np.unique(self.coloring))

    @property
    def update_blocks(self) -> tuple[tuple[int, ...], ...]:
        """Flat unit indices of each colour class, in the order one sweep updates them."""
        return _blocks_from_colors(self.coloring)

    def _effective_couplings(self) -> jax.Array:
        """The symmetric, zero-diagonal part of ``couplings``: what the energy and the sampler
        use, so that traced (never validated) couplings still give a consistent pair."""
        j = self.couplings
        j = 0.5 * (j + jnp.swapaxes(j, -1, -2))
        return jnp.where(jnp.eye(j.shape[-1], dtype=bool), jnp.zeros((), j.dtype), j)

    # ------------------------------------------------------------------ energies
    def energy(self, value: jax.Array) -> jax.Array:
        """``E(x)``, shape ``sample_shape + batch_shape``; costs ``O(n^2 q)`` per state."""
        dtype = self.couplings.dtype
        onehot = one_hot(value, self.num_states, dtype)
        local = _couple(self._effective_couplings(), onehot, self.batch_shape)
        return -jnp.sum(onehot * (0.5 * local + self.fields), axis=(-2, -1))

    def conditional_logits(self, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """Logits of every unit's conditional at inverse temperature ``beta``,
        ``beta * (h[i, k] + sum_j J[i, j] [x_j = k])``; shape
        ``sample_shape + batch_shape + event_shape + (q,)``. A sweep draws each colour class
        from these, evaluated at the current state."""
        dtype = self.couplings.dtype
        onehot = one_hot(value, self.num_states, dtype)
        local = _couple(self._effective_couplings(), onehot, self.batch_shape)
        return expand_beta(jnp.asarray(beta, dtype), 2) * (self.fields + local)

    # ------------------------------------------------------------------ sampling
    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One block-Gibbs sweep over the colour classes at inverse temperature ``beta``;
        leaves ``p_beta(x) ∝ exp(-beta E(x))`` invariant. Returns the new state in
        :attr:`chain_dtype`, shape ``sample_shape + batch_shape + event_shape``.

        Costs ``O(n^2 q)`` per chain whatever the colouring: a block of ``B`` units costs
        one ``(B, n) @ (n, chains * q)`` product."""
        dtype = self.chain_dtype
        q = self.num_states
        n = self.num_units
        beta = jnp.asarray(beta, dtype)
        x = jnp.asarray(value).astype(dtype)
        lead = jnp.broadcast_shapes(x.shape[:-1], self.batch_shape, beta.shape)
        # Units first: a block's local fields are then one plain matrix product, and its
        # update one contiguous scatter.
        x = jnp.moveaxis(jnp.broadcast_to(x, (*lead, n)), -1, 0)
        onehot = one_hot(x, q, dtype)  # (n,) + lead + (q,)
        beta = expand_beta(beta, 1)
        couplings = self._effective_couplings()
        blocks = self.update_blocks
        if len(blocks) <= MAX_UNROLLED_COLORS:
            # Units last when drawn, so that uniform pairs the two words of a threefry
            # block within a chain (chains stay independent of how they are sharded).
            u = jnp.moveaxis(uniform(rng_key, (*lead, n), dtype), -1, 0)
            for block in blocks:
                idx = np.asarray(block, dtype=np.int32)
                onehot = self._block_update(couplings, onehot, idx, u[idx], beta, lead)
        else:
            chunks = _padded_chunks(blocks, n)
            u = uniform(rng_key, lead + chunks.shape, dtype)
            u = jnp.moveaxis(u, (len(lead), len(lead) + 1), (0, 1))

            def body(onehot, inputs):
                idx, u_chunk = inputs
                return self._block_update(couplings, onehot, idx, u_chunk, beta, lead), None

            onehot, _ = lax.scan(body, onehot, (jnp.asarray(chunks), u))
        return jnp.moveaxis(onehot @ jnp.arange(q, dtype=dtype), 0, -1)

    def _block_update(self, couplings, onehot, idx, uniform, beta, lead):
        """Redraw the units ``idx`` (no two coupled; indices ``>= n`` are padding, dropped)
        of the units-first one-hot state ``(n,) + lead + (q,)``."""
        q = self.num_states
        rows = jnp.take(couplings, idx, axis=-2, mode="clip")  # jb + (B, n)
        fields = jnp.take(self.fields, idx, axis=-2, mode="clip")  # hb + (B, q)
        if rows.ndim == 2:
            local = (rows @ onehot.reshape(onehot.shape[0], -1)).reshape((len(idx), *lead, q))
        else:
            nb = len(self.batch_shape)
            rows = jnp.broadcast_to(rows, self.batch_shape + rows.shape[-2:])
            b = _AXIS_LETTERS[:nb]
            s = _AXIS_LETTERS[nb : len(lead)]
            local = jnp.einsum(f"{b}in,n{s}{b}k->i{s}{b}k", rows, onehot)
        fields = jnp.moveaxis(fields, -2, 0)
        fields = fields.reshape(
            fields.shape[:1] + (1,) * (len(lead) + 2 - fields.ndim) + fields.shape[1:]
        )
        new = categorical_draw(uniform, beta * (fields + local))
        return onehot.at[idx].set(one_hot(new, q, onehot.dtype), mode="drop")

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        dtype = self.chain_dtype
        event_shape = self.event_shape
        q = self.num_states
        return Enumeration(
            num_units=self.num_units,
            num_values=q,
            decode=lambda d: d.reshape(d.shape[:-1] + event_shape).astype(dtype),
            log_weight=lambda x: -self.energy(x),
            unit_probs=lambda x: one_hot(x, q, dtype),
        )

    def _support_hint(self) -> str:
        return (
            f"Potts values must be integers 0..{self.num_states - 1}; encode categories "
            "first, e.g. jnp.searchsorted(categories, data)."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_states={self.num_states}, batch_shape="
            f"{self.batch_shape}, event_shape={self.event_shape})"
        )


class PottsLattice(PottsModel):
    r"""Nearest-neighbour Potts model on a hypercubic lattice, stored without a coupling matrix.

    .. math::

        E(x) = -K \sum_{\langle ij \rangle} [x_i = x_j] - \sum_i h_{i, x_i},

    where every nearest-neighbour bond is counted once: the bonds of site ``i`` are to its
    forward neighbour ``i + e_a`` along each axis ``a`` (wrapping around with periodic
    boundaries; with open boundaries the last slice has no forward bond). With periodic
    boundaries a side of length 2 therefore couples each pair twice (its forward bond and
    its wrapped bond), as the usual ``roll`` convention does. Block Gibbs sweeps the classes
    of :func:`~numpyro_ebm.distributions.coloring.lattice_coloring` (the checkerboard when
    every periodic side is even). Build it with :meth:`PottsModel.lattice`.

    Parameters
    ----------
    shape : tuple of int
        The lattice, at least 2 axes, each side at least 2; ``event_shape == shape``.
    num_states : int
        ``q >= 2``.
    coupling : ArrayLike
        ``K``, shape ``batch_shape`` (a scalar for an unbatched model); ``K > 0`` is
        ferromagnetic.
    fields : ArrayLike, optional
        Per-state fields: shape ``(q,)`` (the same at every site, unbatched),
        ``batch_shape + (1,) * len(shape) + (q,)`` (the same at every site, batched), or
        ``batch_shape + shape + (q,)`` (per site). Zeros by default. A scalar is refused: it
        would shift every state equally; ``h * jnp.eye(q)[k]`` favours state ``k``.
    periodic : bool
        Periodic (default) or open boundaries.
    log_partition, num_sweeps, validate_args
        As for :class:`PottsModel`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.potts import PottsModel
    >>> lat = PottsModel.lattice((4, 4), num_states=3, coupling=0.5)
    >>> lat.event_shape, lat.num_colors
    ((4, 4), 2)
    >>> float(lat.energy(jnp.zeros((4, 4), dtype=jnp.int32)))  # 32 bonds, all satisfied
    -16.0
    >>> lat.sample(jax.random.key(0), (2,)).shape
    (2, 4, 4)
    """

    arg_constraints: ClassVar[dict[str, Any]] = {
        "coupling": constraints.real,
        "fields": constraints.real,
    }
    pytree_data_fields = ("coupling", "fields")
    pytree_aux_fields = ("periodic",)

    def __init__(
        self,
        shape: tuple[int, ...],
        num_states: int,
        coupling: Any,
        fields: Any = None,
        *,
        periodic: bool = True,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        name = type(self).__name__
        shape = _check_lattice_shape(shape)
        d = len(shape)
        q = _check_num_states(num_states)
        coupling = as_float(coupling)
        if fields is None:
            fields = np.zeros((q,), coupling.dtype)
        fields = as_float(fields)
        fields = _lattice_fields(fields, shape, q)
        dtype = jnp.result_type(coupling, fields)
        self.coupling = _as_dtype(coupling, dtype)
        self.fields = _as_dtype(fields, dtype)
        self.num_states = q
        self.periodic = bool(periodic)
        self._coloring = None
        batch_shape = batch_shape_of(name, coupling=coupling.shape, fields=fields.shape[: -1 - d])
        EnergyBasedDistribution.__init__(
            self,
            batch_shape,
            shape,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )
        if validate_args is not False and not self._validate_args:
            self.validate_args(strict=False)  # numpyro did not call it: validation is off

    def validate_args(self, strict: bool = True) -> None:
        """Check that concrete ``coupling`` and ``fields`` are finite (on the host, with
        NumPy), raising ``ValueError``."""
        if not is_concrete(self.coupling, self.fields):
            if strict:
                raise RuntimeError("Cannot validate arguments inside jitted code.")
            return
        check_finite("coupling", self.coupling)
        check_finite("fields", self.fields)

    @classmethod
    def infer_shapes(cls, shape=(), num_states=None, coupling=(), fields=None, **kwargs):
        """``shape`` is the lattice shape itself (a static argument, not an array's shape);
        ``coupling`` and ``fields`` are array shapes."""
        d = len(shape)
        batch = [tuple(coupling)]
        if fields is not None and len(fields) > d:
            batch.append(tuple(fields[: -1 - d]))
        return jax.lax.broadcast_shapes(*batch), tuple(shape)

    @constraints.dependent_property(is_discrete=True)
    def support(self):
        return constraints.independent(
            constraints.integer_interval(0, self.num_states - 1), len(self.event_shape)
        )

    @property
    def coloring(self) -> np.ndarray:
        """The colour of every site (shape ``event_shape``), as used by :meth:`gibbs_sweep`."""
        return lattice_coloring(self.event_shape, self.periodic)

    @property
    def num_colors(self) -> int:
        return len(_lattice_color_codes(self.event_shape, self.periodic))

    def _raw_color_codes(self) -> jax.Array:
        """``2 * seam_mask + parity`` of every site, computed in the program from iotas (no
        ``N``-sized constant); colour ``c`` is the ``c``-th of :func:`_lattice_color_codes`."""
        shape = self.event_shape
        grids = [lax.broadcasted_iota(jnp.int32, shape, a) for a in range(len(shape))]
        raw = sum(grids) % 2
        bit = 2
        for axis, size in enumerate(shape):
            if self.periodic and size % 2 == 1:
                raw = raw + bit * (grids[axis] == size - 1)
                bit *= 2
        return raw

    def _color_map(self) -> jax.Array:
        """:attr:`coloring` as the sweep computes it."""
        raw = self._raw_color_codes()
        codes = _lattice_color_codes(self.event_shape, self.periodic)
        return sum((raw > code).astype(jnp.int32) for code in codes)

    # ------------------------------------------------------------------ energies
    def _lattice_axes(self, ndim: int) -> tuple[int, ...]:
        d = len(self.event_shape)
        return tuple(range(ndim - d, ndim))

    def energy(self, value: jax.Array) -> jax.Array:
        """``E(x)``, shape ``sample_shape + batch_shape``; costs ``O(N (d + q))``."""
        dtype = self.coupling.dtype
        x = jnp.asarray(value)
        axes = self._lattice_axes(x.ndim)
        same = jnp.zeros(x.shape[: x.ndim - len(axes)], dtype)
        for axis in axes:
            size = x.shape[axis]
            if self.periodic:
                equal = x == jnp.roll(x, -1, axis)
            else:
                equal = lax.slice_in_dim(x, 0, size - 1, axis=axis) == lax.slice_in_dim(
                    x, 1, size, axis=axis
                )
            same = same + jnp.sum(equal, axis=axes, dtype=dtype)
        onehot = one_hot(x, self.num_states, dtype)
        field_term = jnp.sum(onehot * self.fields, axis=(*axes, x.ndim))
        return -self.coupling * same - field_term

    def _neighbors(self, x: jax.Array) -> list[jax.Array]:
        """The state of each site's neighbour in each of the ``2 d`` directions (``-1``, no
        state, beyond an open boundary)."""
        out = []
        for axis in self._lattice_axes(x.ndim):
            if self.periodic:
                out += [jnp.roll(x, 1, axis), jnp.roll(x, -1, axis)]
            else:
                size = x.shape[axis]
                pad = [(0, 0)] * x.ndim
                pad[axis] = (1, 1)
                padded = jnp.pad(x, pad, constant_values=-1)
                out += [
                    lax.slice_in_dim(padded, 0, size, axis=axis),
                    lax.slice_in_dim(padded, 2, size + 2, axis=axis),
                ]
        return out

    def neighbor_counts(self, value: jax.Array) -> jax.Array:
        """How many nearest neighbours of each site are in each state: shape
        ``value.shape + (q,)`` (a bond along a periodic side of length 2 counts twice).

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import PottsModel
        >>> potts = PottsModel.lattice((3, 3), num_states=3, coupling=1.0)
        >>> x = jnp.array([[0, 1, 2], [0, 0, 0], [2, 2, 2]])
        >>> potts.neighbor_counts(x)[1, 1].tolist()  # neighbours 1 (up), 2 (down), 0, 0
        [2.0, 1.0, 1.0]
        """
        dtype = self.coupling.dtype
        return sum(one_hot(nb, self.num_states, dtype) for nb in self._neighbors(value))

    def _logit_parts(self, x: jax.Array, beta: jax.Array) -> list[jax.Array]:
        """:meth:`conditional_logits` as one array per state (no trailing ``q`` axis)."""
        dtype = self.coupling.dtype
        d = len(self.event_shape)
        neighbors = self._neighbors(x)
        coupling = self.coupling.reshape(self.coupling.shape + (1,) * d)
        beta = expand_beta(beta, d)
        return [
            beta
            * (coupling * sum((nb == k).astype(dtype) for nb in neighbors) + self.fields[..., k])
            for k in range(self.num_states)
        ]

    def conditional_logits(self, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """``beta * (h[i, k] + K * #{neighbours j of i with x_j = k})``, shape
        ``sample_shape + batch_shape + event_shape + (q,)``."""
        dtype = self.coupling.dtype
        beta = jnp.asarray(beta, dtype)
        if self.num_states <= _MAX_UNROLLED_STATES:
            return jnp.stack(self._logit_parts(jnp.asarray(value), beta), axis=-1)
        d = len(self.event_shape)
        coupling = self.coupling.reshape(self.coupling.shape + (1,) * (d + 1))
        logits = coupling * self.neighbor_counts(value) + self.fields
        return expand_beta(beta, d + 1) * logits

    # ------------------------------------------------------------------ sampling
    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One block-Gibbs sweep over the lattice colour classes at inverse temperature
        ``beta``; costs ``O(num_colors * N * q * d)``."""
        dtype = self.chain_dtype
        d = len(self.event_shape)
        beta = jnp.asarray(beta, dtype)
        x = jnp.asarray(value).astype(dtype)
        lead = jnp.broadcast_shapes(x.shape[: x.ndim - d], self.batch_shape, beta.shape)
        x = jnp.broadcast_to(x, lead + self.event_shape)
        u = uniform(rng_key, x.shape, dtype)  # two uniforms per threefry block in float32
        raw = self._raw_color_codes()
        for code in _lattice_color_codes(self.event_shape, self.periodic):  # colour order
            if self.num_states <= _MAX_UNROLLED_STATES:
                new = _draw_from_parts(u, self._logit_parts(x, beta))
            else:
                new = categorical_draw(u, self.conditional_logits(x, beta))
            x = jnp.where(raw == code, new, x)
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_states={self.num_states}, periodic={self.periodic}, "
            f"batch_shape={self.batch_shape}, event_shape={self.event_shape})"
        )


# ---------------------------------------------------------------------- validation helpers
def _as_dtype(x: jax.Array, dtype) -> jax.Array:
    return x if x.dtype == dtype else x.astype(dtype)


def _check_num_states(num_states: Any) -> int:
    if int(num_states) != num_states or int(num_states) < 2:
        raise ValueError(f"num_states must be an integer >= 2; got {num_states}.")
    return int(num_states)


def _check_lattice_shape(shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(
            f"shape must be a tuple of side lengths, e.g. (16, 16); got {shape!r}."
        ) from None
    if len(shape) < 2:
        raise ValueError(
            f"shape must have at least 2 axes (a hypercubic lattice of dimension >= 2); got "
            f"{shape}. For a chain, pass its couplings to the dense PottsModel."
        )
    if min(shape) < 2:
        raise ValueError(f"every side of the lattice shape must be >= 2; got {shape}.")
    return shape


def _lattice_fields(fields: jax.Array, shape: tuple[int, ...], q: int) -> jax.Array:
    d = len(shape)
    want = (
        f"(q,) = ({q},) for the same fields at every site, batch_shape + {(1,) * d + (q,)} "
        f"for batched site-independent fields, or batch_shape + {(*shape, q)} per site"
    )
    if fields.ndim == 0:
        raise ValueError(
            f"fields must have shape {want}; got a scalar, which would shift every state "
            f"equally. To favour state k by h, pass h * jnp.eye({q})[k]."
        )
    if fields.shape[-1] != q:
        raise ValueError(f"fields must have shape {want}; got shape {fields.shape}.")
    if fields.ndim == 1:
        return fields.reshape((1,) * d + (q,))
    sites = fields.shape[-1 - d : -1]
    if fields.ndim < d + 1 or any(s not in (1, size) for s, size in zip(sites, shape, strict=True)):
        raise ValueError(f"fields must have shape {want}; got shape {fields.shape}.")
    return fields


@functools.lru_cache(maxsize=64)
def _lattice_color_codes(shape: tuple[int, ...], periodic: bool) -> tuple[int, ...]:
    """The raw codes ``2 * seam_mask + parity`` that occur on the lattice, sorted: colour
    ``c`` of :func:`lattice_coloring` is the ``c``-th of them."""
    odd = [a for a, size in enumerate(shape) if periodic and size % 2 == 1]
    codes = set()
    for mask in itertools.product((0, 1), repeat=len(odd)):
        seam = sum(bit << k for k, bit in enumerate(mask))
        if len(odd) == len(shape) and all(mask):
            # Only the corner site is on every seam: its parity is fixed.
            codes.add(2 * seam + sum(size - 1 for size in shape) % 2)
        else:
            codes.update((2 * seam, 2 * seam + 1))
    return tuple(sorted(codes))
