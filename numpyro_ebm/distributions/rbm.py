"""Restricted Boltzmann machines with binary visible and hidden units."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import Bernoulli, constraints

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    check_finite,
    is_concrete,
    softplus,
)

__all__ = ["BernoulliRBM"]


def as_float(x: Any) -> jax.Array:
    """``x`` as a JAX array of a floating dtype (integers become the default float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.result_type(float))
    # A strongly typed copy: weakly typed parameters (from Python floats) would change the
    # dtype of compiled programs between calls and cause recompilation.
    return jnp.asarray(x, dtype=x.dtype)


def vector_param(name: str, value: Any, size: int, dtype, owner: str) -> jax.Array:
    """A ``batch + (size,)`` parameter, zeros when ``value`` is None."""
    if value is None:
        return jnp.zeros((size,), dtype)
    value = as_float(value)
    if value.ndim < 1 or value.shape[-1] != size:
        raise ValueError(
            f"{name} must have shape batch_shape + ({size},) to match the weights of this "
            f"{owner}; got shape {value.shape}."
        )
    return value


def batch_shape_of(owner: str, **shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return jax.lax.broadcast_shapes(*shapes.values())
    except ValueError:
        desc = ", ".join(f"{k}: {v}" for k, v in shapes.items())
        raise ValueError(
            f"the batch shapes of the parameters of {owner} do not broadcast ({desc})."
        ) from None


#: Random bits per float32 uniform of :func:`uniform`: uniforms on the grid ``k / 2**24``,
#: so an event ``U < p`` has probability ``ceil(2**24 p) / 2**24``, ``p`` rounded up by less
#: than ``2**-24`` (``random.uniform`` in float32 uses a grid of ``2**-23``).
UNIFORM_BITS = 24


#: Rotation distances of the Threefry-2x32 rounds (Salmon et al., "Parallel random numbers:
#: as easy as 1, 2, 3", SC 2011), four rounds per group, the two lists alternating.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: The key-schedule parity constant of Threefish/Threefry for 32-bit words.
_THREEFRY_PARITY = 0x1BD11BDA


def threefry2x32(key0: jax.Array, key1: jax.Array, x0: jax.Array, x1: jax.Array):
    """The Threefry-2x32 hash with 20 rounds, elementwise: the same function, bit for bit, as
    JAX's ``threefry2x32`` primitive behind ``jax.random`` (a test checks it).

    The primitive's CPU lowering runs its five groups of rounds in a rolled loop, which
    writes both words to memory and reads them back after every group; written out as one
    elementwise expression, XLA fuses the whole hash into the operation that consumes its
    words (one pass over memory), which makes the samplers' random numbers cheaper
    (``benchmarks/sampler_throughput.py``).
    """
    keys = (key0, key1, key0 ^ key1 ^ jnp.uint32(_THREEFRY_PARITY))
    x0 = x0 + keys[0]
    x1 = x1 + keys[1]
    for group in range(5):
        for distance in _THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(distance)) | (x1 >> jnp.uint32(32 - distance))
            x1 = x0 ^ x1
        # Key injection after every group of four rounds.
        x0 = x0 + keys[(group + 1) % 3]
        x1 = x1 + keys[(group + 2) % 3] + jnp.uint32(group + 1)
    return x0, x1


def _threefry_blocks(rng_key: jax.Array, shape: tuple[int, ...]):
    """The two output words of threefry blocks ``0 .. prod(shape) - 1`` (row-major over
    ``shape``; the counter's high word 0), as two ``uint32`` arrays of ``shape``, or None
    where this does not apply (a non-threefry or batched key, ``2**32`` blocks or more).
    These are the blocks ``jax.random.bits`` hashes for ``shape`` (partitionable threefry,
    JAX's default), hashed by :func:`threefry2x32`."""
    key_ndim = 0 if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else 1
    if rng_key.ndim != key_ndim or random.key_impl(rng_key) != "threefry2x32":
        return None
    if math.prod(shape) >= 2**32:
        return None
    count = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        count = count + jnp.uint32(stride) * lax.broadcasted_iota(jnp.uint32, shape, axis)
        stride *= shape[axis]
    data = random.key_data(rng_key)
    return threefry2x32(data[0], data[1], jnp.zeros_like(count), count)


def _threefry_pairs(rng_key: jax.Array, shape: tuple[int, ...]) -> jax.Array | None:
    """``shape`` random ``uint32`` words, two per threefry block (both output words of block
    ``(..., j)``, counted over ``shape[:-1] + (ceil(m / 2),)``), or None where this does
    not apply (see :func:`_threefry_blocks`).

    ``random.uniform`` (partitionable threefry, JAX's default) spends a whole block, two
    words XORed into one, per float32 number; using both words halves the generator's
    work. The two words of block ``(..., j)`` go to units ``j`` and ``j + ceil(m / 2)`` of
    the last axis, so the leading (chain) axes stay independent: the words do not depend on
    how those axes are sharded across devices."""
    m = shape[-1]
    blocks = _threefry_blocks(rng_key, shape[:-1] + ((m + 1) // 2,))
    if blocks is None:
        return None
    return jnp.concatenate(blocks, -1)[..., :m]


def uniform(rng_key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Independent uniforms on [0, 1), shape ``shape``: what the samplers compare with
    conditional probabilities.

    In float32 (with a threefry key) they lie on the grid ``k / 2**24``, built from the top
    :data:`UNIFORM_BITS` bits of the words of :func:`_threefry_pairs`, two per threefry
    block: a Bernoulli draw ``U < p`` then has probability ``ceil(2**24 p) / 2**24``, ``p``
    rounded up by less than ``2**-24`` = 6e-8 in absolute terms (the size of the float32
    rounding error of ``p`` near 1; half the grid spacing of ``random.uniform``'s float32
    uniforms). In float64 they are ``random.uniform``'s, bit for bit (one block of 64 bits
    per number, 52 of them used), with the hash fused into the consumer. Other dtypes and
    keys: ``random.uniform``.

    >>> import jax
    >>> from numpyro_ebm.distributions.rbm import uniform
    >>> u = uniform(jax.random.key(0), (3, 5), "float32")
    >>> u.shape, bool((u >= 0).all() & (u < 1).all())
    ((3, 5), True)
    """
    shape = tuple(shape)
    dtype = jnp.dtype(dtype)
    if shape and math.prod(shape) > 0:
        if dtype == jnp.float32:
            words = _threefry_pairs(rng_key, shape)
            if words is not None:
                scale = jnp.float32(2.0**-UNIFORM_BITS)  # exact: integers below 2**24
                return (words >> (32 - UNIFORM_BITS)).astype(jnp.float32) * scale
        elif dtype == jnp.float64 and jax.config.jax_enable_x64:
            blocks = _threefry_blocks(rng_key, shape)
            if blocks is not None:
                high, low = (w.astype(jnp.uint64) for w in blocks)
                bits = (high << jnp.uint64(32)) | low
                # 52 random mantissa bits under the exponent of 1.0: a float in [1, 2).
                one = jnp.uint64(np.array(1.0, np.float64).view(np.uint64))
                floats = lax.bitcast_convert_type((bits >> jnp.uint64(12)) | one, jnp.float64)
                return floats - 1.0
    return random.uniform(rng_key, shape, dtype)


def bernoulli_draw(rng_key: jax.Array, logits: jax.Array) -> jax.Array:
    """A {0,1} draw with ``P(1) = sigmoid(logits)``, in the dtype of ``logits`` (uniforms
    from :func:`uniform`)."""
    u = uniform(rng_key, logits.shape, logits.dtype)
    return (u < jax.nn.sigmoid(logits)).astype(logits.dtype)


def expand_beta(beta: Any, ndim: int = 1) -> jax.Array:
    """``beta`` with ``ndim`` trailing unit axes, to broadcast against per-unit arrays."""
    beta = jnp.asarray(beta)
    return beta.reshape(beta.shape + (1,) * ndim)


class BernoulliRBM(EnergyBasedDistribution):
    r"""Restricted Boltzmann machine over binary visible vectors, hidden units summed out.

    .. math::

        E(v, h) = -v^\top W h - b^\top v - c^\top h, \qquad
        p(v) = \frac{1}{Z} \sum_h e^{-E(v, h)} = \frac{e^{-F(v)}}{Z},\qquad
        F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + (v^\top W)_j).

    Parameters
    ----------
    weights : ArrayLike
        ``W``, shape ``batch_shape + (num_visible, num_hidden)``.
    visible_bias, hidden_bias : ArrayLike, optional
        ``b`` (``batch_shape + (num_visible,)``) and ``c`` (``batch_shape + (num_hidden,)``);
        zeros by default.
    log_partition : ArrayLike, optional
        A known ``log Z`` to normalize ``log_prob`` with (see
        :class:`~numpyro_ebm.distributions.base.EnergyBasedDistribution`).
    num_sweeps : int
        Block-Gibbs sweeps (``v -> h -> v``) per call of :meth:`sample`, from uniformly
        random starting states (default 1000).
    validate_args : bool, optional
        ``False`` skips the value checks on concrete parameters and data.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((6, 3)), jnp.zeros(6), jnp.zeros(3))
    >>> rbm.event_shape, rbm.sample(jax.random.key(0), (4,)).shape
    ((6,), (4, 6))
    >>> bool(rbm.is_normalized)  # 2**3 hidden states: log Z is exact
    True
    """

    arg_constraints = {
        "weights": constraints.independent(constraints.real, 2),
        "visible_bias": constraints.real_vector,
        "hidden_bias": constraints.real_vector,
    }
    support = constraints.independent(constraints.boolean, 1)

    def __init__(
        self,
        weights: Any,
        visible_bias: Any = None,
        hidden_bias: Any = None,
        *,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        name = type(self).__name__
        weights = as_float(weights)
        if weights.ndim < 2:
            raise ValueError(
                f"weights must have shape batch_shape + (num_visible, num_hidden); got "
                f"shape {weights.shape}."
            )
        num_visible, num_hidden = weights.shape[-2:]
        self.weights = weights
        self.visible_bias = vector_param(
            "visible_bias", visible_bias, num_visible, weights.dtype, name
        )
        self.hidden_bias = vector_param("hidden_bias", hidden_bias, num_hidden, weights.dtype, name)
        batch_shape = batch_shape_of(
            name,
            weights=weights.shape[:-2],
            visible_bias=self.visible_bias.shape[:-1],
            hidden_bias=self.hidden_bias.shape[:-1],
        )
        if validate_args is not False and is_concrete(weights, self.visible_bias, self.hidden_bias):
            for key in ("weights", "visible_bias", "hidden_bias"):
                check_finite(key, getattr(self, key))
        super().__init__(
            batch_shape,
            (num_visible,),
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    @classmethod
    def infer_shapes(cls, weights=(), visible_bias=None, hidden_bias=None, **kwargs):
        batch = [tuple(weights[:-2])]
        if visible_bias is not None:
            batch.append(tuple(visible_bias[:-1]))
        if hidden_bias is not None:
            batch.append(tuple(hidden_bias[:-1]))
        return jax.lax.broadcast_shapes(*batch), tuple(weights[-2:-1])

    @property
    def num_visible(self) -> int:
        return self.weights.shape[-2]

    @property
    def num_hidden(self) -> int:
        return self.weights.shape[-1]

    # ------------------------------------------------------------------ linear maps
    def visible_to_hidden(self, v: jax.Array) -> jax.Array:
        """``c + v W``: hidden pre-activations, shape ``v.shape[:-1] + (num_hidden,)``."""
        v = v.astype(self.weights.dtype)
        if self.weights.ndim == 2:
            return self.hidden_bias + v @ self.weights
        return self.hidden_bias + jnp.matmul(v[..., None, :], self.weights)[..., 0, :]

    def hidden_to_visible(self, h: jax.Array) -> jax.Array:
        """``b + W h``: visible pre-activations, shape ``h.shape[:-1] + (num_visible,)``."""
        h = h.astype(self.weights.dtype)
        if self.weights.ndim == 2:
            return self.visible_bias + h @ self.weights.T
        return (
            self.visible_bias
            + jnp.matmul(h[..., None, :], jnp.swapaxes(self.weights, -1, -2))[..., 0, :]
        )

    # ------------------------------------------------------------------ energies
    def free_energy(self, value: jax.Array) -> jax.Array:
        """``F(v)``, the energy of ``v`` with the hidden layer summed out."""
        v = jnp.asarray(value).astype(self.weights.dtype)
        return -jnp.sum(v * self.visible_bias, -1) - jnp.sum(
            softplus(self.visible_to_hidden(v)), -1
        )

    def energy(self, value: jax.Array) -> jax.Array:
        """The energy of the visible marginal: the free energy ``F(v)``."""
        return self.free_energy(value)

    def tempered_energy(self, value: jax.Array, beta: Any) -> jax.Array:
        """``-log sum_h exp(-beta E(v, h)) = -beta b.v - sum_j softplus(beta (c + v W)_j)``:
        the visible marginal of the tempered joint, left invariant by ``gibbs_sweep``."""
        v = jnp.asarray(value).astype(self.weights.dtype)
        beta = jnp.asarray(beta, self.weights.dtype)
        return -beta * jnp.sum(v * self.visible_bias, -1) - jnp.sum(
            softplus(expand_beta(beta) * self.visible_to_hidden(v)), -1
        )

    def joint_energy(self, visible: jax.Array, hidden: jax.Array) -> jax.Array:
        """``E(v, h)``."""
        v = jnp.asarray(visible).astype(self.weights.dtype)
        h = jnp.asarray(hidden).astype(self.weights.dtype)
        pre = self.visible_to_hidden(v)  # c + vW
        return -jnp.sum(h * pre, -1) - jnp.sum(v * self.visible_bias, -1)

    # ------------------------------------------------------------------ conditionals
    def hidden_conditional(self, visible: jax.Array) -> Bernoulli:
        """``p(h | v)`` as a numpyro distribution with ``event_shape == (num_hidden,)``."""
        return Bernoulli(logits=self.visible_to_hidden(jnp.asarray(visible))).to_event(1)

    def visible_conditional(self, hidden: jax.Array) -> Bernoulli:
        """``p(v | h)`` as a numpyro distribution with ``event_shape == (num_visible,)``."""
        return Bernoulli(logits=self.hidden_to_visible(jnp.asarray(hidden))).to_event(1)

    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One block-Gibbs sweep ``v -> h ~ p(h | v) -> v ~ p(v | h)`` of the joint tempered
        to ``exp(-beta E(v, h))``; it leaves ``exp(-tempered_energy(v, beta))`` invariant."""
        key_h, key_v = random.split(rng_key)
        beta = expand_beta(beta)
        h = bernoulli_draw(key_h, beta * self.visible_to_hidden(value))
        return bernoulli_draw(key_v, beta * self.hidden_to_visible(h))

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        dtype = self.weights.dtype
        if self.num_hidden <= self.num_visible:

            def log_weight(h):
                return jnp.sum(h * self.hidden_bias, -1) + jnp.sum(
                    softplus(self.hidden_to_visible(h)), -1
                )

            def unit_probs(h):
                p = jax.nn.sigmoid(self.hidden_to_visible(h))
                return jnp.stack([1 - p, p], -1)

            num_units = self.num_hidden
        else:

            def log_weight(v):
                return -self.free_energy(v)

            def unit_probs(v):
                return jax.nn.one_hot(v, 2, dtype=dtype)

            num_units = self.num_visible
        return Enumeration(
            num_units=num_units,
            num_values=2,
            decode=lambda d: d.astype(dtype),
            log_weight=log_weight,
            unit_probs=unit_probs,
        )
