r"""Run the chains of any sampler or estimator across devices (``jax.sharding``).

Chains are independent, so they split across devices with no communication: place the
chain-batched arrays with a :class:`~jax.sharding.NamedSharding` over a 1-D mesh of devices
along the chain axis, and every jitted program that takes them (``gibbs.kernel``, the
estimators' ``step``, ``numpyro.infer.MCMC`` with :class:`~numpyro_ebm.infer.BlockGibbs` and
``chain_method="vectorized"``) runs sharded, because ``jit`` propagates the shardings of its
inputs. Parameters (weights, couplings) stay replicated on every device.

.. code-block:: python

    state = gibbs.init(rbm, rbm.random_state(key, (num_chains,)))
    state = shard_chains(state)                    # chain axis 0 over all devices
    state, info = jax.jit(gibbs.kernel, static_argnums=2)(key, state, rbm)

    est_state = shard_estimator_state(estimator, estimator.init(key, rbm, data))

    draws = sample_sharded(rbm, key, (num_chains,))   # distribution.sample, sharded

Same key, same draws. Random bits in JAX do not depend on how an array is sharded, so
the chains follow the same trajectories sharded or not (the tests find them bit-identical
on 4 host devices). With ``jax_threefry_partitionable`` (on by default in current JAX) each
device generates only the bits of its own chains; with it off the bits are still the same,
but JAX generates them redundantly and gathers them between devices. Quantities computed by
matrix products (energies, conditional probabilities) may differ in the last bits, since a
device multiplies a smaller block of chains and the product kernel may order its sums
differently; a draw compares a uniform on a grid of ``2**-24`` with such a probability, so
such a difference flips a draw only with a probability of the order of the rounding error
(about ``1e-7`` per draw). Reductions over chains (the mean energy an estimator reports)
also sum in a different order.

Several hosts. The same code runs across hosts: call ``jax.distributed.initialize()`` at the
start of every process, then :func:`chain_mesh` spans ``jax.devices()`` (all devices of all
hosts); build the sharded chain arrays with ``jax.make_array_from_process_local_data`` (each
process holds its own chains) and run the same jitted programs. This path is not exercised by
the tests, which force several devices on one CPU host (``XLA_FLAGS=
--xla_force_host_platform_device_count=4``, set before JAX starts).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
from jax import lax, random
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.infer.estimators import CD, EstimatorState, ParallelTempering

__all__ = [
    "CHAIN_AXIS_NAME",
    "chain_mesh",
    "chain_sharding",
    "estimator_chain_axis",
    "sample_sharded",
    "shard_chains",
    "shard_estimator_state",
]

#: Name of the single axis of :func:`chain_mesh`.
CHAIN_AXIS_NAME = "chains"


def chain_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: ``jax.devices()``, every device of every host),
    its axis named :data:`CHAIN_AXIS_NAME`.

    Examples
    --------
    >>> import jax
    >>> from numpyro_ebm.sharding import chain_mesh
    >>> mesh = chain_mesh()
    >>> mesh.axis_names, mesh.size == len(jax.devices())
    (('chains',), True)
    """
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise ValueError("devices must hold at least one device; got an empty sequence.")
    return Mesh(np.asarray(devices, dtype=object), (CHAIN_AXIS_NAME,))


def chain_sharding(ndim: int, axis: int = 0, mesh: Mesh | None = None) -> NamedSharding:
    """The sharding of an ``ndim``-dimensional array split along ``axis`` over the devices of
    ``mesh`` (default :func:`chain_mesh`), replicated along every other axis.

    Examples
    --------
    >>> from jax.sharding import PartitionSpec
    >>> from numpyro_ebm.sharding import chain_sharding
    >>> chain_sharding(3, axis=1).spec == PartitionSpec(None, "chains", None)
    True
    """
    mesh = chain_mesh() if mesh is None else mesh
    if not 0 <= axis < ndim:
        raise ValueError(
            f"axis must lie in [0, {ndim}) for a {ndim}-dimensional array; got {axis}."
        )
    spec = [None] * ndim
    spec[axis] = mesh.axis_names[0]
    return NamedSharding(mesh, PartitionSpec(*spec))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_chains(x: Any, axis: int = 0, mesh: Mesh | None = None) -> Any:
    """Place chain-batched arrays (or a pytree of them) on the devices of ``mesh``, split
    along the chain axis ``axis``.

    Leaves with more than ``axis`` dimensions are split along ``axis``, whose size must be a
    multiple of the number of devices; leaves with fewer dimensions (scalars such as step
    counters) are replicated. Keys (typed ``jax.random.key`` arrays) are arrays like any
    other: a batch of per-chain keys is split with its chains.

    Parameters
    ----------
    x : pytree of ArrayLike
        For example a :class:`~numpyro_ebm.infer.GibbsState`, a chain state of shape
        ``chains + batch_shape + event_shape``, or a transition's chain state.
    axis : int
        The chain axis of every leaf (0 for ``gibbs`` states and PCD chains; 1 for the
        ``(num_temperatures, num_chains)`` chains of parallel tempering).
    mesh : jax.sharding.Mesh, optional
        A 1-D mesh (default :func:`chain_mesh`: all devices).

    Returns
    -------
    The same pytree with every leaf a sharded ``jax.Array``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import gibbs
    >>> from numpyro_ebm.sharding import shard_chains
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((6, 3)))
    >>> n = 2 * len(jax.devices())  # a multiple of the device count
    >>> state = shard_chains(gibbs.init(rbm, jnp.zeros((n, 6))))
    >>> state, info = jax.jit(gibbs.kernel, static_argnums=2)(jax.random.key(0), state, rbm)
    >>> state.position.sharding.device_set == set(jax.devices())
    True
    """
    mesh = chain_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must be 1-D (one axis for the chains); got axes {mesh.axis_names}. "
            "Build one with numpyro_ebm.sharding.chain_mesh()."
        )
    num_devices = mesh.size

    def place(leaf):
        leaf = jax.numpy.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        if leaf.ndim <= axis:
            return jax.device_put(leaf, _replicated(mesh))
        if leaf.shape[axis] % num_devices:
            raise ValueError(
                f"the chain axis {axis} of an array of shape {leaf.shape} has "
                f"{leaf.shape[axis]} chains, not a multiple of the {num_devices} devices of "
                f"the mesh; use a multiple of {num_devices} chains."
            )
        return jax.device_put(leaf, chain_sharding(leaf.ndim, axis, mesh))

    return jax.tree.map(place, x)


def estimator_chain_axis(estimator: Any) -> int | None:
    """The chain axis of an estimator's ``state.chains`` leaves: 1 for
    :class:`~numpyro_ebm.infer.ParallelTempering` (``(num_temperatures, num_chains, ...)``),
    None for :class:`~numpyro_ebm.infer.CD` (its chains are the data batch), else 0."""
    if isinstance(estimator, ParallelTempering):
        return 1
    if isinstance(estimator, CD):
        return None
    return 0


def shard_estimator_state(
    estimator: Any, state: EstimatorState, mesh: Mesh | None = None
) -> EstimatorState:
    """An estimator's state with its chains split over the devices of ``mesh`` (default
    :func:`chain_mesh`) and its counters replicated; ``estimator.step`` then runs sharded.

    :class:`~numpyro_ebm.infer.CD` keeps no chains: its chains start at the data batch, so
    shard the batch instead (``shard_chains(batch)``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import PCD
    >>> from numpyro_ebm.sharding import shard_estimator_state
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((6, 3)))
    >>> pcd = PCD(num_chains=2 * len(jax.devices()))
    >>> state = shard_estimator_state(pcd, pcd.init(jax.random.key(0), rbm))
    >>> samples, state, info = jax.jit(pcd.step, static_argnums=2)(jax.random.key(1), state, rbm)
    >>> samples.sharding.device_set == set(jax.devices())
    True
    """
    mesh = chain_mesh() if mesh is None else mesh
    axis = estimator_chain_axis(estimator)
    replicated = _replicated(mesh)
    if axis is None:
        chains = jax.device_put(state.chains, replicated)
    else:
        chains = shard_chains(state.chains, axis, mesh)
    return EstimatorState(
        chains,
        jax.device_put(state.step, replicated),
        jax.device_put(state.swap_accepts, replicated),
        jax.device_put(state.swap_attempts, replicated),
    )


@partial(jax.jit, static_argnums=(2, 3))
def _sample_sharded(distribution, rng_key, sample_shape, sharding):
    # The loop of ``EnergyBasedDistribution.sample``, with the starting states constrained
    # to the chain sharding (jit then shards every sweep the same way).
    key_init, key_run = random.split(rng_key)
    x = distribution.random_state(key_init, sample_shape)
    x = lax.with_sharding_constraint(x, sharding)

    def body(x, k):
        return distribution.gibbs_sweep(k, x), None

    x, _ = lax.scan(body, x, random.split(key_run, distribution.num_sweeps))
    return x.astype(distribution.sample_dtype)


def sample_sharded(
    distribution: EnergyBasedDistribution,
    rng_key: jax.Array,
    sample_shape: tuple[int, ...],
    mesh: Mesh | None = None,
) -> jax.Array:
    """``distribution.sample(rng_key, sample_shape)`` with its chains split over the devices
    of ``mesh`` (default :func:`chain_mesh`) along the first axis of ``sample_shape``, whose
    size must be a multiple of the number of devices. The draws equal those of
    ``distribution.sample`` for the same key.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.sharding import sample_sharded
    >>> rbm = BernoulliRBM(0.5 * jnp.ones((5, 3)), num_sweeps=20)
    >>> n = 2 * len(jax.devices())
    >>> draws = sample_sharded(rbm, jax.random.key(0), (n,))
    >>> bool((draws == rbm.sample(jax.random.key(0), (n,))).all())
    True
    """
    mesh = chain_mesh() if mesh is None else mesh
    sample_shape = tuple(int(s) for s in sample_shape)
    if not sample_shape or sample_shape[0] % mesh.size:
        raise ValueError(
            f"sample_shape must start with a number of chains that is a multiple of the "
            f"{mesh.size} devices of the mesh; got {sample_shape}."
        )
    ndim = len(sample_shape) + len(distribution.batch_shape) + len(distribution.event_shape)
    return _sample_sharded(distribution, rng_key, sample_shape, chain_sharding(ndim, 0, mesh))
