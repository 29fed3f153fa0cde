"""Exact normalizers and marginals by enumeration, for small models.

Every discrete family (and the Gaussian-Bernoulli RBM, whose visible units integrate out in
closed form) describes through ``_enumeration()`` which units to enumerate; this module sums
over all ``num_values ** num_units`` states in chunks inside one ``lax.scan``, so memory stays
bounded (one chunk at a time, also when differentiating) however many states there are.
RBMs enumerate their smaller layer, so a 784 x 20 RBM costs ``2**20`` states.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from numpyro_ebm.distributions.base import EnergyBasedDistribution, digits

__all__ = ["all_states", "exact_log_partition", "exact_marginals"]

#: Refuse enumerations beyond this many states unless ``max_states`` is raised.
DEFAULT_MAX_STATES = 2**27


def _plan(spec, chunk_size: int | None, max_states: int) -> tuple[int, int]:
    num_states = spec.num_values**spec.num_units
    if num_states > max_states:
        raise ValueError(
            f"exact enumeration needs {spec.num_values}**{spec.num_units} = {num_states:.3g} "
            f"states, more than max_states={max_states:.3g}; use annealed importance "
            f"sampling for models this large, or raise max_states if you mean it."
        )
    if chunk_size is None:
        chunk_size = 2**14
    # The chunk is a power of num_values so that it divides the number of states.
    chunk = 1
    while chunk * spec.num_values <= chunk_size and chunk < num_states:
        chunk *= spec.num_values
    return chunk, num_states // chunk


def _chunk_states(spec, distribution, index, chunk):
    codes = index * chunk + jnp.arange(chunk, dtype=jnp.int32)
    states = spec.decode(digits(codes, spec.num_units, spec.num_values))
    nb = len(distribution.batch_shape)
    return states.reshape(states.shape[:1] + (1,) * nb + states.shape[1:])


def exact_log_partition(
    distribution: EnergyBasedDistribution,
    *,
    chunk_size: int | None = None,
    max_states: int = DEFAULT_MAX_STATES,
) -> jax.Array:
    """Exact ``log Z`` by enumeration, shape ``batch_shape``; differentiable.

    Parameters
    ----------
    distribution : EnergyBasedDistribution
        Any family with an enumeration (all discrete families and GB-RBMs); RBMs are summed
        over their smaller layer.
    chunk_size : int, optional
        States evaluated at once (default ``2**14``); memory is proportional to it.
    max_states : int
        Guard against accidental enormous enumerations.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM, exact_log_partition
    >>> rbm = BernoulliRBM(jnp.zeros((3, 2)))
    >>> round(float(exact_log_partition(rbm)), 4)  # log(2**3 * 2**2): all energies are 0
    3.4657
    """
    return _exact_log_partition(distribution, chunk_size, max_states)


@partial(jax.jit, static_argnums=(1, 2))
def _exact_log_partition(distribution, chunk_size, max_states):
    # Compiled once per distribution structure, not at every eager call.
    spec = distribution._enumeration()
    chunk, num_chunks = _plan(spec, chunk_size, max_states)

    @jax.checkpoint
    def body(carry, index):
        log_w = spec.log_weight(_chunk_states(spec, distribution, index, chunk))
        log_w = jnp.broadcast_to(log_w, (chunk,) + distribution.batch_shape)
        return jnp.logaddexp(carry, jax.nn.logsumexp(log_w, axis=0)), None

    dtype = distribution.chain_dtype
    init = jnp.full(distribution.batch_shape, -jnp.inf, dtype=dtype)
    log_z, _ = lax.scan(body, init, jnp.arange(num_chunks))
    return log_z


def exact_marginals(
    distribution: EnergyBasedDistribution,
    *,
    chunk_size: int | None = None,
    max_states: int = DEFAULT_MAX_STATES,
) -> jax.Array:
    """Exact one-unit marginals ``P(x_i = support_values[k])``.

    Returns an array of shape ``batch_shape + event_shape + (len(support_values),)``; for
    {0,1} models ``[..., 1]`` is ``P(x_i = 1)``, for Ising models ``[..., 1]`` is
    ``P(s_i = +1)``.

    Examples
    --------
    Two independent units, the second with field ``log 3`` (so ``P(x_1 = 1) = 3 / 4``):

    >>> import math
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import BoltzmannMachine, exact_marginals
    >>> bm = BoltzmannMachine(jnp.zeros((2, 2)), jnp.array([0.0, math.log(3.0)]))
    >>> jnp.round(exact_marginals(bm), 4).tolist()
    [[0.5, 0.5], [0.25, 0.75]]
    """
    return _exact_marginals(distribution, chunk_size, max_states)


@partial(jax.jit, static_argnums=(1, 2))
def _exact_marginals(distribution, chunk_size, max_states):
    spec = distribution._enumeration()
    if spec.unit_probs is None:
        raise ValueError(f"{type(distribution).__name__} has continuous units: no marginals.")
    chunk, num_chunks = _plan(spec, chunk_size, max_states)
    batch_shape = distribution.batch_shape
    out_shape = batch_shape + distribution.event_shape + (len(distribution.support_values),)
    extra = len(out_shape) - len(batch_shape)

    def body(carry, index):
        log_max, total, acc = carry
        states = _chunk_states(spec, distribution, index, chunk)
        log_w = jnp.broadcast_to(spec.log_weight(states), (chunk,) + batch_shape)
        probs = jnp.broadcast_to(spec.unit_probs(states), (chunk,) + out_shape)
        new_max = jnp.maximum(log_max, jnp.max(log_w, axis=0))
        scale = jnp.exp(log_max - new_max)
        w = jnp.exp(log_w - new_max)
        total = total * scale + jnp.sum(w, axis=0)
        w = w.reshape(w.shape + (1,) * extra)
        acc = acc * scale.reshape(scale.shape + (1,) * extra) + jnp.sum(w * probs, axis=0)
        return (new_max, total, acc), None

    dtype = distribution.chain_dtype
    init = (
        jnp.full(batch_shape, -jnp.inf, dtype),
        jnp.zeros(batch_shape, dtype),
        jnp.zeros(out_shape, dtype),
    )
    (_, total, acc), _ = lax.scan(body, init, jnp.arange(num_chunks))
    return acc / total.reshape(total.shape + (1,) * extra)


def all_states(distribution: EnergyBasedDistribution, *, max_states: int = 2**20) -> jax.Array:
    """Every configuration of the event, shape ``(num_states,) + event_shape``, in
    ``itertools.product`` order over ``support_values`` (unit 0 varies slowest).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import IsingModel, all_states
    >>> ising = IsingModel(jnp.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> all_states(ising).tolist()
    [[-1, -1], [-1, 1], [1, -1], [1, 1]]
    >>> ising.energy(all_states(ising)).tolist()  # aligned spins are favoured
    [-1.0, 1.0, 1.0, -1.0]
    """
    if not distribution.is_discrete:
        raise ValueError(f"{type(distribution).__name__} is continuous: no states to list.")
    num_units = int(np.prod(distribution.event_shape, dtype=np.int64))
    num_values = len(distribution.support_values)
    num_states = num_values**num_units
    if num_states > max_states:
        raise ValueError(
            f"all_states would list {num_states:.3g} states (more than max_states="
            f"{max_states:.3g}); it is meant for tiny models."
        )
    codes = jnp.arange(num_states, dtype=jnp.int32)
    values = jnp.asarray(distribution.support_values, dtype=distribution.sample_dtype)
    states = values[digits(codes, num_units, num_values)]
    return states.reshape((num_states,) + distribution.event_shape)
