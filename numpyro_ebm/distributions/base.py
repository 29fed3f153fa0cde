"""The base class of every energy-based family.

An energy-based distribution is ``p(x) = exp(-E(x)) / Z`` with an energy ``E`` that is
cheap to evaluate and a normalizer ``Z`` that in general is not. Subclasses provide

- :meth:`~EnergyBasedDistribution.energy` (for latent-variable models: the free energy, with
  the latent units summed out);
- :meth:`~EnergyBasedDistribution.gibbs_sweep`, one sweep of a Markov kernel that leaves
  ``p_beta(x) ∝ exp(-tempered_energy(x, beta))`` invariant (block Gibbs in the discrete
  families); ``tempered_energy(x, beta) = beta * E(x)`` unless the model has latent units;
- :meth:`~EnergyBasedDistribution.random_state`, a starting configuration for chains;
- ``_enumeration()``, how :mod:`numpyro_ebm.exact` sums the model out, for small models.

What ``log_prob`` returns
-------------------------
``log_prob(x) = -E(x) - log Z`` with the best known ``log Z``:

1. a value attached by the user (:meth:`~EnergyBasedDistribution.with_log_partition`, for
   example an exact value or an AIS estimate);
2. otherwise, when the model is small enough to enumerate cheaply (at most
   :data:`AUTO_EXACT_MAX_STATES` enumerated states), the exact value, differentiable;
3. otherwise ``log Z`` is *unknown* and ``log_prob`` equals ``unnormalized_log_prob``: the
   right density up to a constant, which is all that MCMC over ``x`` with fixed parameters
   needs. :attr:`~EnergyBasedDistribution.is_normalized` tells which case applies.

In cases 1 and 3 the gradient of ``log Z`` with respect to the energy parameters (the
negative phase, ``Delta2`` in the package's mathematics) is not known: differentiating
``log_prob`` with respect to the parameters raises :class:`LogPartitionGradientError`
instead of silently returning only the positive phase.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import Distribution, constraints
from numpyro.util import not_jax_tracer

__all__ = [
    "AUTO_EXACT_MAX_STATES",
    "EnergyBasedDistribution",
    "Enumeration",
    "LogPartitionGradientError",
    "softplus",
]

#: Models whose exact enumeration visits at most this many states are normalized exactly
#: (and differentiably) inside ``log_prob``; above it, attach a value or use an estimator.
AUTO_EXACT_MAX_STATES = 2**12


class LogPartitionGradientError(RuntimeError):
    """Raised when the gradient of an unknown ``log Z`` is requested."""


class Enumeration(NamedTuple):
    """How to sum a model out by enumerating ``num_values ** num_units`` states.

    ``decode`` maps integer digits of shape ``(chunk, num_units)`` (values ``0..num_values-1``)
    to unit values; ``log_weight`` maps decoded states of shape
    ``(chunk,) + (1,) * len(batch_shape) + (num_units,)`` to unnormalized log masses of shape
    ``(chunk,) + batch_shape`` (other layers summed out analytically); ``unit_probs`` maps
    the same states to the conditional probability of every value of every *visible* unit,
    shape ``(chunk,) + batch_shape + event_shape + (num_support_values,)``, or is ``None``
    for continuous models.
    """

    num_units: int
    num_values: int
    decode: Callable[[jax.Array], jax.Array]
    log_weight: Callable[[jax.Array], jax.Array]
    unit_probs: Callable[[jax.Array], jax.Array] | None


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + exp(x))``, computed stably and faster than ``jax.nn.softplus`` on CPU.

    Its derivative is ``sigmoid(x)`` everywhere (defined explicitly: differentiating the
    formula would give 0 at ``x = 0``, where ``|x|`` has no derivative)."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), jax.nn.sigmoid(x) * t


def is_concrete(*xs: Any) -> bool:
    """True when none of ``xs`` is a JAX tracer (so values can be checked on the host)."""
    return all(not_jax_tracer(x) for x in jax.tree.leaves(xs))


def check_finite(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete ``value`` holds NaN or Inf."""
    if value is None or not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf); pass finite values "
            f"(if they come from a training run, it diverged: lower the learning rate)."
        )


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _guard(name: str, params: tuple) -> jax.Array:
    """Zero, whose derivative with respect to ``params`` raises (the unknown ``grad log Z``)."""
    del params
    return jnp.zeros(())


@_guard.defjvp
def _guard_jvp(name, primals, tangents):
    raise LogPartitionGradientError(
        f"The gradient of log Z of this {name} with respect to its energy parameters is "
        "unknown: log Z is not enumerable here (or a fixed value was attached), so log_prob "
        "would give only the positive phase of the gradient. Attach draws from the model "
        "with dist.with_negative_samples(samples) (numpyro_ebm's estimators produce them), "
        "or, for a model small enough to enumerate, differentiate "
        "numpyro_ebm.exact_log_partition; to hold the parameters fixed, wrap them in "
        "jax.lax.stop_gradient."
    )


def _checked_log_partition(log_partition: Any, batch_shape: tuple[int, ...]) -> Any:
    if log_partition is None:
        return None
    log_partition = jnp.asarray(log_partition)
    check_finite("log_partition", log_partition)
    shape = jnp.shape(log_partition)
    try:
        ok = jnp.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"log_partition must broadcast to the batch_shape {batch_shape} of the "
            f"distribution; got shape {shape}."
        )
    return log_partition


class EnergyBasedDistribution(Distribution):
    """Base class: ``p(x) = exp(-energy(x)) / Z``. See the module docstring."""

    is_discrete = True
    has_enumerate_support = True
    #: Values one unit can take, in the order used by ``enumerate_support``.
    support_values: tuple[float, ...] = (0, 1)
    #: Dtype of samples returned by :meth:`sample`.
    sample_dtype = jnp.int32

    pytree_data_fields = ("_log_partition_value", "_negative_samples")
    _negative_samples = None
    pytree_aux_fields = ("num_sweeps", "_check_values")

    def __init__(
        self,
        batch_shape: tuple[int, ...],
        event_shape: tuple[int, ...],
        *,
        log_partition: Any = None,
        num_sweeps: int = 1000,
        validate_args: bool | None = None,
    ):
        if int(num_sweeps) < 0:
            raise ValueError(f"num_sweeps must be a non-negative integer; got {num_sweeps}.")
        self.num_sweeps = int(num_sweeps)
        self._check_values = validate_args is not False
        self._log_partition_value = _checked_log_partition(log_partition, batch_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def validate_args(self, strict: bool = True) -> None:
        """Check concrete parameters against ``arg_constraints`` on the host with NumPy
        (numpyro's own check compiles JAX operations for every new shape), raising
        ``ValueError`` naming the parameter. Families add their own checks on top."""
        for name, constraint in self.arg_constraints.items():
            value = self.__dict__.get(name)
            if value is None or isinstance(constraint, constraints._Dependent):
                continue
            if not is_concrete(value):
                if strict:
                    raise RuntimeError("Cannot validate arguments inside jitted code.")
                continue
            check_finite(name, value)
            if not np.all(np.asarray(constraint(np.asarray(value)))):
                raise ValueError(
                    f"{name} of this {type(self).__name__} does not satisfy its constraint "
                    f"{type(constraint).__name__.lstrip('_')}."
                )

    # ------------------------------------------------------------------ energies
    def energy(self, value: jax.Array) -> jax.Array:
        """Energy ``E(x)``; shape ``sample_shape + batch_shape``."""
        raise NotImplementedError

    def tempered_energy(self, value: jax.Array, beta: Any) -> jax.Array:
        """Energy of ``x`` at inverse temperature ``beta``: ``-log sum_h exp(-beta E(x, h))``.

        For models without latent units this is ``beta * E(x)``; latent-variable models
        (RBMs) temper the *joint* energy and sum the latents out, which is the distribution
        that :meth:`gibbs_sweep` at ``beta`` leaves invariant. ``beta`` broadcasts against
        ``sample_shape + batch_shape``.
        """
        return jnp.asarray(beta) * self.energy(value)

    def unnormalized_log_prob(self, value: jax.Array) -> jax.Array:
        """``-E(x)``: the log density up to the constant ``log Z``."""
        value = self._check_value(value)
        return -self.energy(value)

    def log_prob(self, value: jax.Array) -> jax.Array:
        """``-E(x) - log Z`` with the best known ``log Z`` (see the module docstring)."""
        return self.unnormalized_log_prob(value) - self._log_partition_term()

    # ------------------------------------------------------------------ log Z
    def energy_parameters(self) -> dict[str, jax.Array]:
        """The parameters the energy depends on (the arguments with constraints)."""
        return {name: getattr(self, name) for name in self.arg_constraints}

    @property
    def num_enumerated_states(self) -> int:
        """How many states exact enumeration visits (``num_values ** num_units``)."""
        spec = self._enumeration()
        return spec.num_values**spec.num_units

    @property
    def is_normalized(self) -> bool:
        """Whether ``log_prob`` includes ``log Z`` (attached, or exact for small models)."""
        return self._log_partition_value is not None or self._auto_exact()

    @property
    def log_partition(self) -> jax.Array | None:
        """The best known ``log Z`` (shape ``batch_shape``), or ``None`` when unknown."""
        if self._log_partition_value is not None:
            return jnp.broadcast_to(self._log_partition_value, self.batch_shape)
        if self._auto_exact():
            from numpyro_ebm.exact import exact_log_partition

            return exact_log_partition(self)
        return None

    def with_log_partition(self, log_partition: Any) -> EnergyBasedDistribution:
        """A copy of this distribution whose ``log_prob`` is normalized by ``log_partition``.

        The value is used as given (for example from ``exact_log_partition`` or AIS); its
        gradient with respect to the parameters is not known, see the module docstring.
        """
        log_partition = _checked_log_partition(log_partition, self.batch_shape)
        leaves, treedef = jax.tree.flatten(self)
        new = jax.tree.unflatten(treedef, leaves)
        new._log_partition_value = log_partition
        return new

    def _auto_exact(self) -> bool:
        try:
            return self.num_enumerated_states <= AUTO_EXACT_MAX_STATES
        except NotImplementedError:
            return False

    def with_negative_samples(self, samples: Any) -> EnergyBasedDistribution:
        """A copy whose ``log Z`` has the Monte Carlo gradient of ``samples`` (the negative phase).

        ``samples`` are draws from this distribution, shape ``(num_samples,) + batch_shape +
        event_shape`` (for example from an estimator's chains). The value of ``log Z`` is
        unchanged (the best known one, see the module docstring); its gradient becomes
        ``-mean_k dE(x_k)/dtheta``, an estimate of ``grad log Z``, so ``jax.grad`` of a
        log-likelihood gives ``Delta1 - Delta2``. The samples are treated as constants.
        """
        samples = jnp.asarray(samples)
        expected = self.batch_shape + self.event_shape
        if samples.ndim != len(expected) + 1 or samples.shape[1:] != expected:
            raise ValueError(
                "samples must have shape (num_samples,) + batch_shape + event_shape = "
                f"(num_samples,) + {expected}; got shape {samples.shape}."
            )
        leaves, treedef = jax.tree.flatten(self)
        new = jax.tree.unflatten(treedef, leaves)
        new._negative_samples = lax.stop_gradient(samples.astype(self.chain_dtype))
        return new

    def with_parameters(self, **params: Any) -> EnergyBasedDistribution:
        """A copy with some energy parameters replaced (same shapes; no re-validation, so it
        is cheap inside ``jit``). An attached ``log Z`` and attached negative samples belong
        to the old parameters and are dropped."""
        unknown = set(params) - set(self.energy_parameters())
        if unknown:
            raise ValueError(
                f"with_parameters got unknown parameter(s) {sorted(unknown)}; "
                f"{type(self).__name__} has {sorted(self.energy_parameters())}."
            )
        leaves, treedef = jax.tree.flatten(self)
        new = jax.tree.unflatten(treedef, leaves)
        for name, value in params.items():
            old = getattr(self, name)
            value = jnp.asarray(value)
            if old is not None and jnp.shape(old) != value.shape:
                raise ValueError(
                    f"{name} must keep its shape {jnp.shape(old)}; got shape {value.shape}."
                )
            setattr(new, name, value)
        new._negative_samples = None
        new._log_partition_value = None
        return new

    def with_num_sweeps(self, num_sweeps: int) -> EnergyBasedDistribution:
        """A copy whose :meth:`sample` runs ``num_sweeps`` sweeps per chain."""
        if int(num_sweeps) != num_sweeps or int(num_sweeps) < 0:
            raise ValueError(f"num_sweeps must be a non-negative integer; got {num_sweeps}.")
        leaves, treedef = jax.tree.flatten(self)
        new = jax.tree.unflatten(treedef, leaves)
        new.num_sweeps = int(num_sweeps)
        return new

    @property
    def negative_samples(self) -> jax.Array | None:
        """Samples attached with :meth:`with_negative_samples`, or ``None``."""
        return self._negative_samples

    def _log_partition_term(self) -> jax.Array:
        if self._negative_samples is not None:
            value = self._log_partition_value
            if value is None:
                value = self.log_partition if self._auto_exact() else jnp.zeros(())
            surrogate = jnp.mean(-self.energy(self._negative_samples), axis=0)
            return lax.stop_gradient(value) + surrogate - lax.stop_gradient(surrogate)
        if self._log_partition_value is None and self._auto_exact():
            from numpyro_ebm.exact import exact_log_partition

            return exact_log_partition(self)
        guard = _guard(type(self).__name__, tuple(self.energy_parameters().values()))
        if self._log_partition_value is None:
            return guard
        return self._log_partition_value + guard

    # ------------------------------------------------------------------ sampling
    def random_state(self, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """A uniformly random configuration, shape ``sample_shape + batch_shape + event_shape``,
        in the dtype the chains run in."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        values = jnp.asarray(self.support_values, dtype=self.chain_dtype)
        idx = random.randint(rng_key, shape, 0, len(self.support_values))
        return values[idx]

    @property
    def chain_dtype(self):
        """Dtype of the chain states used inside samplers (the parameters' float dtype)."""
        leaves = [v for v in self.energy_parameters().values() if v is not None]
        return jnp.result_type(*leaves, jnp.float32) if leaves else jnp.float32

    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One sweep of a kernel leaving ``p_beta(x) ∝ exp(-tempered_energy(x, beta))``
        invariant (``exp(-beta * E(x))`` for models without latent units).

        ``value`` has shape ``sample_shape + batch_shape + event_shape``; ``beta`` broadcasts
        against ``sample_shape + batch_shape``.
        """
        raise NotImplementedError

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Approximate draws: independent chains from uniformly random states, each run for
        :attr:`num_sweeps` sweeps of :meth:`gibbs_sweep` (set ``num_sweeps`` in the
        constructor). Use :class:`numpyro_ebm.infer.BlockGibbs` to diagnose mixing."""
        return _sample(self, key, tuple(sample_shape))

    def enumerate_support(self, expand: bool = True) -> jax.Array:
        """The values of **one unit** (not the joint configurations), shaped
        ``(num_values,) + (1,) * (batch and event dims)`` so that numpyro's discrete kernels
        (``DiscreteHMCGibbs``, ``MixedHMC``) update each unit separately."""
        shape = self.batch_shape + self.event_shape
        values = jnp.asarray(self.support_values, dtype=self.sample_dtype)
        values = values.reshape((-1,) + (1,) * len(shape))
        if expand:
            values = jnp.broadcast_to(values, values.shape[:1] + shape)
        return values

    # ------------------------------------------------------------------ checks
    def _check_value(self, value: Any) -> jax.Array:
        value = jnp.asarray(value)
        event_ndim = len(self.event_shape)
        if value.shape[value.ndim - event_ndim :] != self.event_shape or value.ndim < event_ndim:
            raise ValueError(
                f"value must have shape sample_shape + batch_shape + {self.event_shape} for "
                f"this {type(self).__name__}; got shape {value.shape}."
            )
        if self._check_values and not self.is_discrete and is_concrete(value):
            finite = np.isfinite(np.asarray(value))
            if not np.all(finite):
                raise ValueError(
                    f"value contains {int(finite.size - finite.sum())} non-finite entries "
                    f"(NaN or Inf); this {type(self).__name__} is a density on finite real "
                    "arrays: drop or impute missing entries first."
                )
        if self._check_values and self.is_discrete and is_concrete(value):
            arr = np.asarray(value)
            ok = np.isin(arr, np.asarray(self.support_values))
            if not np.all(ok):
                bad = np.unique(arr[~ok])[:5]
                raise ValueError(
                    f"value must take values in {set(self.support_values)} for this "
                    f"{type(self).__name__}; got {bad.tolist()}"
                    f"{' ...' if (~ok).sum() > 5 else ''}. {self._support_hint()}"
                )
        return value

    def _support_hint(self) -> str:
        return "Binarize first, e.g. (data > threshold).astype('int32')."

    def _enumeration(self) -> Enumeration:
        raise NotImplementedError(f"{type(self).__name__} has no exact enumeration.")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_shape={self.batch_shape}, event_shape={self.event_shape})"
        )


def run_chains(distribution: EnergyBasedDistribution, key: jax.Array, sample_shape: tuple):
    """Chain states after ``num_sweeps`` sweeps from ``random_state`` (to be traced in jit)."""
    key_init, key_run = random.split(key)
    x = distribution.random_state(key_init, sample_shape)

    def body(x, k):
        return distribution.gibbs_sweep(k, x), None

    x, _ = lax.scan(body, x, random.split(key_run, distribution.num_sweeps))
    return x


@partial(jax.jit, static_argnums=2)
def _sample(distribution: EnergyBasedDistribution, key: jax.Array, sample_shape: tuple):
    # Compiled once per distribution structure (class, shapes, static config) and shape.
    return run_chains(distribution, key, sample_shape).astype(distribution.sample_dtype)


def digits(codes: jax.Array, num_units: int, num_values: int) -> jax.Array:
    """Integer state codes -> digits ``(..., num_units)``, unit 0 most significant
    (so states come out in ``itertools.product`` order)."""
    powers = jnp.asarray([num_values ** (num_units - 1 - j) for j in range(num_units)], codes.dtype)
    return (codes[..., None] // powers) % num_values
