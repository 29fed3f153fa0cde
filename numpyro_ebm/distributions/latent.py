r"""User energies with latent units: ``E(v, h)``, the latent units ``h`` summed out.

:class:`LatentEnergyDistribution` is the distribution of the visible units ``v`` of a joint
model ``p(v, h) = exp(-E(v, h)) / Z`` with any user energy, discrete or continuous on
either side. Its log-likelihood gradient is the package's central identity (``MATH.md``,
section 2),

.. math::

    \nabla_\theta \log p(v) = \Delta_1 - \Delta_2, \qquad
    \Delta_1 = -\mathbb{E}_{p(h \mid v)}\Big[\frac{\partial E(v, h)}{\partial \theta}\Big],
    \qquad
    \Delta_2 = -\mathbb{E}_{p(v, h)}\Big[\frac{\partial E(v, h)}{\partial \theta}\Big],

and this module supplies both expectations:

- **Delta1 (positive phase).** When the latent units are discrete with at most
  :data:`MAX_EXACT_LATENT_STATES` configurations, the free energy
  ``F(v) = -log sum_h exp(-E(v, h))`` is computed exactly by enumeration and
  ``jax.grad`` of ``log_prob`` gives Delta1 exactly. Otherwise draws ``h_k ~ p(h | v)``
  from chains clamped at the data (:class:`ClampedChains`,
  :meth:`LatentEnergyDistribution.posterior_sample`) are attached with
  :meth:`~LatentEnergyDistribution.with_positive_samples`.
- **Delta2 (negative phase).** Draws from the model attached with
  :meth:`~LatentEnergyDistribution.with_negative_samples`, produced by the package's
  estimators (``CD``, ``PCD``, ``ParallelTempering``) unchanged: their chains run on
  *joint states*, see below.

Joint states
------------
Chains of this family carry the latent units. A joint state is one float array
``join(v, h)`` of shape ``lead + batch_shape + (num_visible_units + num_latent_units,)``:
the flattened visible units, then the flattened latent units
(:meth:`~LatentEnergyDistribution.join`, :meth:`~LatentEnergyDistribution.split`). Its
last axis is always longer than the last visible axis, so every method tells the two
apart by shape:

- ``random_state`` returns joint states and ``gibbs_sweep`` maps joint states to joint
  states (``h | v``, then ``v | h``), so ``PCD(init_from_data=False)``,
  ``ParallelTempering`` and ``BlockGibbs`` run joint chains with no change; ``energy`` of a
  joint state is ``E(v, h)`` (``tempered_energy``: ``beta * E(v, h)``, the tempering that
  parallel tempering swaps with) and ``with_negative_samples`` accepts joint states, giving
  ``Delta2 = -mean_k dE(v_k, h_k)/dtheta``.
- ``sample`` returns only the visible part (``sample_joint`` returns both).
- Chains that start at visible data (``CD``, ``PCD(init_from_data=True)``) need a latent
  part: pass ``transition=LatentGibbsTransition()``, which draws it with
  :meth:`~LatentEnergyDistribution.posterior_sample`. When the latent units enumerate,
  ``gibbs_sweep`` also accepts visible states: it draws ``h ~ p(h | v)`` exactly and
  returns the updated visible units (a kernel on ``p(v)`` itself); ``energy`` of a visible
  state is then the exact free energy and the negative phase is Rao-Blackwellized.

Training
--------
:class:`TwoPhaseEstimator` pairs a negative-phase estimator with :class:`ClampedChains`
and hands both sets of draws to ``with_negative_samples`` as one :class:`TwoPhaseSamples`,
so :func:`numpyro_ebm.train.fit` and :class:`numpyro_ebm.handlers.negative_phase` train
these models as they are.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import constraints

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    LogPartitionGradientError,
    check_finite,
    digits,
    is_concrete,
    run_chains,
)
from numpyro_ebm.distributions.custom import (
    FiniteValues,
    _check_positive_step,
    _checked_params,
    _checked_step_size,
    _float_dtype,
    _gibbs_scan,
    _keyed_leaves,
    _langevin_step,
    _replaced_leaves,
    _support_values,
    _unit_logits,
)

__all__ = [
    "DEFAULT_NUM_LATENT_SWEEPS",
    "MAX_EXACT_LATENT_STATES",
    "ClampedChains",
    "ClampedChainsInfo",
    "ClampedChainsState",
    "FreeEnergyError",
    "LatentEnergyDistribution",
    "LatentGibbsTransition",
    "TwoPhaseEstimator",
    "TwoPhaseSamples",
    "TwoPhaseState",
]

#: Discrete latent spaces with at most this many configurations are summed out exactly
#: (free energy, exact posterior draws); above it, or for continuous latent units, the
#: positive phase needs clamped chains.
MAX_EXACT_LATENT_STATES = 2**12

#: Default number of clamped sweeps :meth:`LatentEnergyDistribution.posterior_sample` runs
#: from random latent states when it cannot draw exactly.
DEFAULT_NUM_LATENT_SWEEPS = 100

# Energies evaluated at once when summing or drawing over the latent states (memory bound).
_LATENT_CHUNK_BUDGET = 2**16


class FreeEnergyError(LogPartitionGradientError):
    """Raised when ``log_prob`` (or the energy of a visible state) of a latent-variable
    model needs the free energy, which is not available in closed form, and no posterior
    draws are attached."""


class TwoPhaseSamples(NamedTuple):
    """Both phases' draws, as one value for ``with_negative_samples``.

    negative : joint states drawn from the model, ``(num_chains,) + batch_shape +
        (num_joint_units,)`` (or visible states when the latent units enumerate).
    positive : latent draws clamped at the data batch, ``(num_samples, batch_size) +
        batch_shape + latent_shape``.
    """

    negative: jax.Array
    positive: jax.Array


def _shape(name: str, shape: Any, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        out = tuple(operator.index(n) for n in shape)
    except TypeError:
        out = None
    if out is None or any(n <= 0 for n in out) or (not allow_empty and not out):
        what = "a non-empty tuple" if not allow_empty else "a tuple"
        raise ValueError(
            f"{name} must be {what} of positive ints (the shape of one configuration), "
            f"e.g. (5,) or (4, 4); got {shape!r}."
            + (" Use (1,) for a single visible unit." if out == () else "")
        )
    return out


def _values(name: str, values: Any) -> tuple[float, ...]:
    try:
        return _support_values(values)
    except ValueError as err:
        raise ValueError(str(err).replace("support_values", name)) from None


def _lead(x: jax.Array, event_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x.shape[: x.ndim - len(event_shape)])


def _chunk(num_values: int, num_states: int, lead_size: int) -> int:
    """Largest power of ``num_values`` (so it divides ``num_states``) with
    ``chunk * lead_size`` within the memory budget."""
    limit = max(1, _LATENT_CHUNK_BUDGET // max(lead_size, 1))
    chunk = 1
    while chunk * num_values <= limit and chunk < num_states:
        chunk *= num_values
    return chunk


class LatentEnergyDistribution(EnergyBasedDistribution):
    r"""The visible marginal of a user-defined joint energy over visible and latent units.

    .. math::

        p(v) = \frac{1}{Z} \sum_h e^{-E(v, h;\, \theta)} = \frac{e^{-F(v)}}{Z}, \qquad
        F(v) = -\log \sum_h e^{-E(v, h;\, \theta)}, \qquad
        Z = \sum_{v, h} e^{-E(v, h;\, \theta)}

    (integrals for continuous units). Each block is discrete (every unit takes one of
    ``support_values`` / ``latent_values``) or real-valued. A sweep of :meth:`gibbs_sweep`
    on a joint state updates ``h`` given ``v``, then ``v`` given ``h``, each block with the
    exact single-unit conditional scan of
    :class:`~numpyro_ebm.distributions.custom.EnergyDistribution` when discrete,

    .. math::

        P(h_j = s \mid v, h_{-j}) \propto e^{-\beta E(v, h_{j \leftarrow s})},

    or one Metropolis-adjusted Langevin step (``step_size`` / ``latent_step_size``) when
    continuous; both leave ``exp(-beta E(v, h))`` exactly invariant. See the module
    docstring for joint states and how the two phases of the gradient are supplied.

    Parameters
    ----------
    energy_fn : callable
        ``energy_fn(v, h, params)`` (``energy_fn(v, h)`` when ``params`` is None): the
        scalar energy of **one** joint configuration, ``v`` of shape ``visible_shape`` and
        ``h`` of shape ``latent_shape`` (floats in the chain dtype). JAX-traceable; it is
        ``vmap``-ed over sample and batch dimensions and differentiated in continuous blocks.
    visible_shape : int or tuple of int
        Shape of one visible configuration: the ``event_shape`` (non-empty).
    latent_shape : int or tuple of int
        Shape of one latent configuration (``()`` for one latent unit).
    support_values, latent_values : sequence of numbers, optional
        Values one visible / latent unit takes (stored sorted), e.g. ``(0, 1)``; ``None``
        (default) for real-valued units.
    params : pytree of ArrayLike, optional
        Parameters passed to ``energy_fn``; pytree data, differentiable. Pass every
        parameter you differentiate here (a closed-over parameter escapes the guards
        against unknown gradients). Every leaf leads with ``batch_shape``.
    batch_shape : tuple of int
        Batch shape (default ``()``); ``energy_fn`` sees one batch member's parameters.
    step_size, latent_step_size : float or ArrayLike, optional
        Langevin steps of continuous visible / latent units (default 0.1, for scales of
        about 1; a standard-normal-like block mixes fastest near 1); scalar or broadcasting
        to ``batch_shape``. Not allowed for discrete blocks. Check the acceptance with
        :meth:`langevin_acceptance` (aim for roughly 0.5 to 0.9).
    num_sweeps : int
        Joint sweeps per call of :meth:`sample`, from random joint states (default 1000).
    num_latent_sweeps : int
        Clamped sweeps :meth:`posterior_sample` runs when it cannot draw exactly (default
        :data:`DEFAULT_NUM_LATENT_SWEEPS`).
    log_partition : ArrayLike, optional
        A known ``log Z``. Without it, discrete models with at most ``2**12`` joint
        configurations are normalized exactly (and differentiably).
    validate_args : bool, optional
        ``False`` skips the value checks on concrete parameters and data.

    Notes
    -----
    **log_prob.** With an exact free energy (discrete latent units, at most
    :data:`MAX_EXACT_LATENT_STATES` configurations, summed in chunks) ``log_prob(v) =
    -F(v) - log Z`` as in every family. Otherwise it needs posterior draws attached with
    :meth:`with_positive_samples`; without them it raises :class:`FreeEnergyError`.

    **Exact log Z** (:func:`numpyro_ebm.exact_log_partition`) enumerates the visible states
    and sums the latent states inside, for discrete visible units and an exact free energy;
    it costs ``num_enumerated_states = |V| * |H|`` energy evaluations (the enumeration's
    ``max_states`` guard counts visible states only).

    **numpyro's BlockGibbs** runs joint chains too: its draws are joint states (split them
    with :meth:`split`; they are cast to :attr:`sample_dtype`, so use a float
    ``sample_dtype`` model or :meth:`sample_joint` when the latent units are continuous).

    Examples
    --------
    An RBM written as a user energy, normalized exactly (``2**3 * 2**2`` states):

    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.latent import LatentEnergyDistribution
    >>> def rbm(v, h, p):
    ...     return -v @ p["W"] @ h - p["b"] @ v - p["c"] @ h
    >>> params = {"W": 0.5 * jnp.ones((3, 2)), "b": jnp.zeros(3), "c": jnp.zeros(2)}
    >>> model = LatentEnergyDistribution(
    ...     rbm, (3,), (2,), support_values=(0, 1), latent_values=(0, 1), params=params)
    >>> model.sample(jax.random.key(0), (4,)).shape
    (4, 3)
    >>> states = jnp.asarray([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    >>> round(abs(float(jax.nn.logsumexp(model.log_prob(states)))), 5)
    0.0

    Continuous latent units: ``log_prob`` needs posterior draws, here from 100 clamped
    Langevin sweeps per chain:

    >>> def gaussian(v, h, W):
    ...     return 0.5 * h @ h - h @ W @ v
    >>> cont = LatentEnergyDistribution(gaussian, (3,), (2,), support_values=(0, 1),
    ...                                 params=0.3 * jnp.ones((2, 3)), latent_step_size=1.0)
    >>> v = jnp.asarray([[1, 0, 1]])
    >>> h = cont.posterior_sample(jax.random.key(1), v, (10,))
    >>> h.shape, cont.with_positive_samples(h).log_prob(v).shape
    ((10, 1, 2), (1,))
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    pytree_data_fields = ("params", "step_size", "latent_step_size", "_positive_samples")
    pytree_aux_fields = (
        "energy_fn",
        "support_values",
        "latent_values",
        "latent_shape",
        "num_latent_sweeps",
    )
    _positive_samples = None

    def __init__(
        self,
        energy_fn: Callable[..., Any],
        visible_shape: Any,
        latent_shape: Any,
        *,
        support_values: Any = None,
        latent_values: Any = None,
        params: Any = None,
        batch_shape: tuple[int, ...] = (),
        step_size: Any = None,
        latent_step_size: Any = None,
        num_sweeps: int = 1000,
        num_latent_sweeps: int = DEFAULT_NUM_LATENT_SWEEPS,
        log_partition: Any = None,
        validate_args: bool | None = None,
    ):
        if not callable(energy_fn):
            raise ValueError(
                f"energy_fn must be a callable energy_fn(v, h, params) (or energy_fn(v, h) "
                f"without params) returning the scalar energy of one joint configuration; "
                f"got {type(energy_fn).__name__}."
            )
        visible_shape = _shape("visible_shape", visible_shape, allow_empty=False)
        latent_shape = _shape("latent_shape", latent_shape, allow_empty=True)
        try:
            batch_shape = _shape("batch_shape", batch_shape, allow_empty=True)
        except ValueError:
            raise ValueError(
                f"batch_shape must be a tuple of positive ints; got {batch_shape!r}."
            ) from None
        if (
            isinstance(num_latent_sweeps, bool)
            or int(num_latent_sweeps) != num_latent_sweeps
            or int(num_latent_sweeps) < 1
        ):
            raise ValueError(
                f"num_latent_sweeps must be a positive integer; got {num_latent_sweeps!r}."
            )
        self.energy_fn = energy_fn
        self.latent_shape = latent_shape
        self.num_latent_sweeps = int(num_latent_sweeps)
        self.support_values = (
            None if support_values is None else _values("support_values", support_values)
        )
        self.latent_values = (
            None if latent_values is None else _values("latent_values", latent_values)
        )
        self.params = _checked_params(params, batch_shape)
        steps = {}
        for name, value, discrete, values_name in (
            ("step_size", step_size, self.support_values is not None, "support_values"),
            ("latent_step_size", latent_step_size, self.latent_values is not None, "latent_values"),
        ):
            if discrete:
                if value is not None:
                    raise ValueError(
                        f"{name} applies only to continuous units ({values_name}=None); "
                        "discrete units are sampled by exact single-unit Gibbs updates."
                    )
                steps[name] = None
            else:
                steps[name] = _checked_step_size(name, value, batch_shape)
        self.step_size = steps["step_size"]
        self.latent_step_size = steps["latent_step_size"]
        if validate_args is not False:
            for name, leaf in self.energy_parameters().items():
                check_finite(name, leaf)
            _check_positive_step("step_size", self.step_size)
            _check_positive_step("latent_step_size", self.latent_step_size)
        super().__init__(
            batch_shape,
            visible_shape,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )
        self._check_energy_output()

    def _check_energy_output(self) -> None:
        nb = len(self.batch_shape)
        v = jax.ShapeDtypeStruct(self.visible_shape, self.chain_dtype)
        h = jax.ShapeDtypeStruct(self.latent_shape, self.chain_dtype)
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[nb:], a.dtype), self.params)
        call = "energy_fn(v, h)" if self.params is None else "energy_fn(v, h, params)"
        try:
            out = jax.eval_shape(self._single_energy, v, h, one)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"calling {call} on one visible configuration of shape {self.visible_shape} "
                f"and one latent configuration of shape {self.latent_shape} (and one batch "
                f"member's params) failed with {type(err).__name__}: {err}. energy_fn is "
                f"called as energy_fn(v, h, params) when params is given and as "
                f"energy_fn(v, h) otherwise; check the parameter shapes."
            ) from err
        if out.shape != () or not jnp.issubdtype(out.dtype, jnp.number):
            raise ValueError(
                f"energy_fn must return a scalar energy for one joint configuration (v of "
                f"shape {self.visible_shape}, h of shape {self.latent_shape}); {call} "
                f"returned shape {out.shape} (dtype {out.dtype}). Sum over the units inside "
                f"energy_fn; the distribution vmaps over batches."
            )

    @classmethod
    def infer_shapes(
        cls, energy_fn=None, visible_shape=(1,), latent_shape=(), *, batch_shape=(), **kwargs
    ):
        return (
            _shape("batch_shape", batch_shape, allow_empty=True),
            _shape("visible_shape", visible_shape, allow_empty=False),
        )

    # ------------------------------------------------------------------ properties
    @property
    def visible_shape(self) -> tuple[int, ...]:
        """Shape of one visible configuration (the ``event_shape``)."""
        return self.event_shape

    @property
    def num_visible_units(self) -> int:
        return math.prod(self.visible_shape)

    @property
    def num_latent_units(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def num_joint_units(self) -> int:
        """Length of the last axis of a joint state."""
        return self.num_visible_units + self.num_latent_units

    @property
    def is_discrete(self) -> bool:
        """Whether the visible units are discrete."""
        return self.support_values is not None

    @property
    def has_enumerate_support(self) -> bool:
        return self.support_values is not None

    @property
    def support(self) -> constraints.Constraint:
        event_dim = len(self.event_shape)
        if self.support_values is not None:
            return FiniteValues(self.support_values, event_dim)
        return constraints.independent(constraints.real, event_dim)

    @property
    def sample_dtype(self):
        """``int32`` for integer ``support_values``, otherwise the chain dtype."""
        return self._dtype_of(self.support_values)

    @property
    def latent_sample_dtype(self):
        """``int32`` for integer ``latent_values``, otherwise the chain dtype."""
        return self._dtype_of(self.latent_values)

    def _dtype_of(self, values):
        if values is not None and all(isinstance(v, int) for v in values):
            return jnp.int32
        return self.chain_dtype

    @property
    def chain_dtype(self):
        """The float dtype of the floating leaves of ``params`` (the default float dtype
        without any)."""
        return _float_dtype(self.params)

    @property
    def num_latent_states(self) -> int | None:
        """``len(latent_values) ** num_latent_units``, or ``None`` for continuous units."""
        if self.latent_values is None:
            return None
        return len(self.latent_values) ** self.num_latent_units

    @property
    def has_exact_free_energy(self) -> bool:
        """Whether the latent units are summed out exactly (discrete, at most
        :data:`MAX_EXACT_LATENT_STATES` configurations)."""
        states = self.num_latent_states
        return states is not None and states <= MAX_EXACT_LATENT_STATES

    def energy_parameters(self) -> dict[str, jax.Array]:
        """The leaves of ``params``, keyed by their path (``"params['W']"``)."""
        return _keyed_leaves(self.params)

    def with_parameters(self, **params: Any) -> LatentEnergyDistribution:
        """A copy with leaves of ``params`` replaced, keyed as in :meth:`energy_parameters`;
        attached ``log Z`` and samples of both phases are dropped."""
        new_params = _replaced_leaves(self.params, params, type(self).__name__)
        new = super().with_parameters()
        new.params = new_params
        new._positive_samples = None
        return new

    # ------------------------------------------------------------------ joint states
    def is_joint(self, value: Any) -> bool:
        """Whether ``value`` is a joint state (last axis ``num_joint_units``) rather than a
        visible configuration (which ends with ``visible_shape``, never that long)."""
        shape = jnp.shape(value)
        return len(shape) >= 1 and shape[-1] == self.num_joint_units

    def join(self, visible: Any, latent: Any) -> jax.Array:
        """The joint state of ``visible`` (``lead + visible_shape``) and ``latent``
        (``lead + latent_shape``; leading dimensions broadcast): shape ``lead +
        (num_joint_units,)``, in the chain dtype; :meth:`split` undoes it.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import LatentEnergyDistribution
        >>> model = LatentEnergyDistribution(lambda v, h: -v @ h, (2,), (2,),
        ...                                  support_values=(0, 1), latent_values=(0, 1))
        >>> joint = model.join(jnp.array([1, 0]), jnp.array([0, 1]))
        >>> joint.tolist()
        [1.0, 0.0, 0.0, 1.0]
        >>> [part.tolist() for part in model.split(joint)]
        [[1.0, 0.0], [0.0, 1.0]]
        """
        v = self._as_chain(visible)
        h = self._as_chain(latent)
        lead = jnp.broadcast_shapes(_lead(v, self.visible_shape), _lead(h, self.latent_shape))
        v = jnp.broadcast_to(v, lead + self.visible_shape).reshape(lead + (self.num_visible_units,))
        h = jnp.broadcast_to(h, lead + self.latent_shape).reshape(lead + (self.num_latent_units,))
        dtype = jnp.result_type(v.dtype, h.dtype)
        return jnp.concatenate([v.astype(dtype), h.astype(dtype)], axis=-1)

    def split(self, state: Any) -> tuple[jax.Array, jax.Array]:
        """``(visible, latent)`` of joint states: ``lead + visible_shape`` and ``lead +
        latent_shape``."""
        state = jnp.asarray(state)
        if not self.is_joint(state):
            raise ValueError(
                f"state must be a joint state of shape lead + ({self.num_joint_units},) "
                f"(visible units, then latent units, flattened); got shape {state.shape}."
            )
        lead = state.shape[:-1]
        nv = self.num_visible_units
        return (
            state[..., :nv].reshape(lead + self.visible_shape),
            state[..., nv:].reshape(lead + self.latent_shape),
        )

    # ------------------------------------------------------------------ energies
    def _single_energy(self, v: jax.Array, h: jax.Array, params: Any) -> jax.Array:
        out = self.energy_fn(v, h) if params is None else self.energy_fn(v, h, params)
        return jnp.asarray(out)

    def _as_chain(self, value: Any) -> jax.Array:
        value = jnp.asarray(value)
        dtype = self.chain_dtype
        if jnp.issubdtype(value.dtype, jnp.floating):
            dtype = jnp.result_type(value.dtype, dtype)
        return value.astype(dtype)

    def _check_visible_shape(self, value: jax.Array, where: str) -> None:
        ne = len(self.visible_shape)
        if value.ndim < ne or value.shape[value.ndim - ne :] != self.visible_shape:
            raise ValueError(
                f"{where} takes visible configurations of shape lead + {self.visible_shape} "
                f"or joint states of shape lead + ({self.num_joint_units},); got shape "
                f"{value.shape}."
            )

    def joint_energy(self, visible: Any, latent: Any) -> jax.Array:
        """``E(v, h)`` for ``visible`` of shape ``lead + visible_shape`` and ``latent`` of
        shape ``lead' + latent_shape``; the leading shapes broadcast with each other and
        with ``batch_shape``. Returns the broadcast leading shape."""
        v = self._as_chain(visible)
        h = self._as_chain(latent)
        nb = len(self.batch_shape)
        lead = jnp.broadcast_shapes(
            _lead(v, self.visible_shape), _lead(h, self.latent_shape), self.batch_shape
        )
        v = jnp.broadcast_to(v, lead + self.visible_shape)
        h = jnp.broadcast_to(h, lead + self.latent_shape)
        flat_v = v.reshape((-1, *self.batch_shape, *self.visible_shape))
        flat_h = h.reshape((-1, *self.batch_shape, *self.latent_shape))
        fn = self._single_energy
        for _ in range(nb):
            fn = jax.vmap(fn)
        fn = jax.vmap(fn, in_axes=(0, 0, None))
        return fn(flat_v, flat_h, self.params).reshape(lead)

    def _require_exact(self, what: str) -> None:
        if self.has_exact_free_energy:
            return
        if self.latent_values is None:
            why = "its latent units are continuous"
        else:
            why = (
                f"its {self.num_latent_states:.3g} latent configurations exceed "
                f"MAX_EXACT_LATENT_STATES = {MAX_EXACT_LATENT_STATES}"
            )
        raise FreeEnergyError(
            f"{what} needs the free energy F(v) = -log sum_h exp(-E(v, h)) of this "
            f"{type(self).__name__}, which is not available in closed form: {why}. For "
            "log_prob, attach draws h ~ p(h | v) clamped at the data with "
            "dist.with_positive_samples(h) (from ClampedChains or dist.posterior_sample); "
            "its gradient is then the positive phase. For sampling, run chains on joint "
            "states (dist.random_state, or transition=LatentGibbsTransition() in CD and PCD)."
        )

    def _latent_states(self, codes: jax.Array) -> jax.Array:
        """Latent configurations of integer codes: ``codes.shape + latent_shape``."""
        values = jnp.asarray(self.latent_values, self.chain_dtype)
        d = digits(codes, self.num_latent_units, len(self.latent_values))
        return values[d].reshape(codes.shape + self.latent_shape)

    def _latent_chunks(self, lead: tuple[int, ...]) -> tuple[int, int]:
        num_states = self.num_latent_states
        chunk = _chunk(len(self.latent_values), num_states, math.prod(lead))
        return chunk, num_states // chunk

    def _log_sum_latent(self, visible: jax.Array, beta: Any) -> jax.Array:
        """``log sum_h exp(-beta E(v, h))`` over every latent configuration, in chunks."""
        v = self._as_chain(visible)
        return _compiled_log_sum_latent(self, v, jnp.asarray(beta, v.dtype))

    def _log_sum_latent_impl(self, v: jax.Array, beta: jax.Array) -> jax.Array:
        lead = jnp.broadcast_shapes(_lead(v, self.visible_shape), self.batch_shape)
        v = jnp.broadcast_to(v, lead + self.visible_shape)
        chunk, num_chunks = self._latent_chunks(lead)

        @jax.checkpoint
        def body(carry, index):
            codes = index * chunk + jnp.arange(chunk, dtype=jnp.int32)
            h = self._latent_states(codes).reshape((chunk,) + (1,) * len(lead) + self.latent_shape)
            log_w = -beta * self.joint_energy(v, h)
            log_w = jnp.broadcast_to(log_w, (chunk,) + jnp.broadcast_shapes(log_w.shape[1:], lead))
            return jnp.logaddexp(carry, jax.nn.logsumexp(log_w, axis=0)), None

        init = jnp.full(jnp.broadcast_shapes(lead, beta.shape), -jnp.inf, v.dtype)
        out, _ = lax.scan(body, init, jnp.arange(num_chunks))
        return out

    def free_energy(self, visible: Any) -> jax.Array:
        """``F(v) = -log sum_h exp(-E(v, h))``, exact (enumerated), shape ``lead``; raises
        :class:`FreeEnergyError` when the latent units do not enumerate.

        Examples
        --------
        One visible and one latent unit, ``E(v, h) = -v h``: ``F(1) = -log(1 + e)``.

        >>> import math
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import LatentEnergyDistribution
        >>> model = LatentEnergyDistribution(lambda v, h: -v @ h, (1,), (1,),
        ...                                  support_values=(0, 1), latent_values=(0, 1))
        >>> f = model.free_energy(jnp.array([[0], [1]]))
        >>> bool(jnp.allclose(f, jnp.array([-math.log(2), -math.log(1 + math.e)])))
        True
        """
        self._require_exact("free_energy")
        v = self._as_chain(visible)
        self._check_visible_shape(v, "free_energy")
        return -self._log_sum_latent(v, 1.0)

    def energy(self, value: Any) -> jax.Array:
        """``E(v, h)`` of joint states; the free energy ``F(v)`` of visible states (exact
        latent units only); for :class:`TwoPhaseSamples`, that of its negative part.
        Shape: the leading (sample and batch) shape."""
        if isinstance(value, TwoPhaseSamples):
            value = value.negative
        value = self._as_chain(value)
        if self.is_joint(value):
            return self.joint_energy(*self.split(value))
        return self.free_energy(value)

    def tempered_energy(self, value: Any, beta: Any) -> jax.Array:
        """``beta * E(v, h)`` of joint states; ``-log sum_h exp(-beta E(v, h))`` of visible
        states (what :meth:`gibbs_sweep` at ``beta`` leaves invariant in each case)."""
        value = self._as_chain(value)
        if self.is_joint(value):
            return jnp.asarray(beta, value.dtype) * self.joint_energy(*self.split(value))
        self._require_exact("tempered_energy of a visible state")
        self._check_visible_shape(value, "tempered_energy")
        return -self._log_sum_latent(value, beta)

    # ------------------------------------------------------------------ log_prob
    def unnormalized_log_prob(self, value: Any) -> jax.Array:
        """``-F(v)``; with posterior draws attached, the surrogate described in
        :meth:`with_positive_samples`."""
        value = self._check_value(value)
        v = self._as_chain(value)
        if self._positive_samples is None:
            self._require_exact("log_prob")
            return -self.free_energy(v)
        h = self._positive_samples
        v_lead = jnp.broadcast_shapes(_lead(v, self.visible_shape), self.batch_shape)
        h_lead = _lead(h, self.latent_shape)[1:]
        try:
            jnp.broadcast_shapes(v_lead, h_lead)
        except ValueError:
            if math.prod(v_lead) != math.prod(h_lead):
                raise ValueError(
                    f"the positive samples attached with with_positive_samples were drawn "
                    f"for data of leading shape {h_lead}; log_prob got a value of leading "
                    f"shape {v_lead}. Attach draws clamped at this value."
                ) from None
            h = h.reshape(h.shape[:1] + v_lead + self.latent_shape)
        surrogate = jnp.mean(-self.joint_energy(v, h), axis=0)
        best = -self.free_energy(v) if self.has_exact_free_energy else surrogate
        return lax.stop_gradient(best) + surrogate - lax.stop_gradient(surrogate)

    def with_positive_samples(self, latent: Any) -> LatentEnergyDistribution:
        """A copy whose ``log_prob(v)`` has the positive-phase gradient of ``latent``.

        ``latent`` holds draws ``h_k ~ p(h | v)`` clamped at the data ``v`` that
        ``log_prob`` will be called with: shape ``(num_samples,) + data_shape +
        batch_shape + latent_shape`` (e.g. from :class:`ClampedChains` or
        :meth:`posterior_sample`); they are constants. The gradient of ``log_prob(v)`` then
        uses ``-mean_k dE(v, h_k)/dtheta`` (an estimate of Delta1) in place of ``-dF/dtheta``.
        Its **value** is ``-F(v) - log Z`` when the free energy is exact; otherwise it is
        ``-mean_k E(v, h_k) - log Z``, which is *not* the log-likelihood (for discrete
        latent units its expectation is a lower bound of ``-F(v) - log Z``, short by the
        posterior entropy; for continuous ones not even that): a training objective whose
        gradient is right, not a value to report.
        """
        latent = jnp.asarray(latent)
        tail = self.batch_shape + self.latent_shape
        if latent.ndim < len(tail) + 1 or latent.shape[latent.ndim - len(tail) :] != tail:
            raise ValueError(
                "latent must have shape (num_samples,) + data_shape + batch_shape + "
                f"latent_shape = (num_samples, ...) + {tail}; got shape {latent.shape}."
            )
        if self._check_values and self.latent_values is not None and is_concrete(latent):
            ok = np.isin(np.asarray(latent), np.asarray(self.latent_values))
            if not np.all(ok):
                raise ValueError(
                    f"latent must take values in {set(self.latent_values)}; got "
                    f"{np.unique(np.asarray(latent)[~ok])[:5].tolist()}."
                )
        new = self._copy()
        new._positive_samples = lax.stop_gradient(latent.astype(self.chain_dtype))
        return new

    @property
    def positive_samples(self) -> jax.Array | None:
        """Latent draws attached with :meth:`with_positive_samples`, or ``None``."""
        return self._positive_samples

    def with_negative_samples(self, samples: Any) -> LatentEnergyDistribution:
        """A copy whose ``log Z`` has the Monte Carlo gradient of ``samples``.

        ``samples``: joint states from the model, ``(num_samples,) + batch_shape +
        (num_joint_units,)`` (gradient ``-mean_k dE(v_k, h_k)/dtheta``); or visible states
        ``(num_samples,) + batch_shape + visible_shape`` when the free energy is exact
        (gradient ``-mean_k dF(v_k)/dtheta``, Rao-Blackwellized); or a
        :class:`TwoPhaseSamples`, which attaches its ``negative`` part here and its
        ``positive`` part with :meth:`with_positive_samples` (what
        :class:`TwoPhaseEstimator` produces for ``fit`` and ``negative_phase``).
        """
        if isinstance(samples, TwoPhaseSamples):
            return self.with_negative_samples(samples.negative).with_positive_samples(
                samples.positive
            )
        samples = jnp.asarray(samples)
        joint = self.batch_shape + (self.num_joint_units,)
        visible = self.batch_shape + self.visible_shape
        if samples.ndim == len(joint) + 1 and samples.shape[1:] == joint:
            pass
        elif samples.ndim == len(visible) + 1 and samples.shape[1:] == visible:
            if not self.has_exact_free_energy:
                raise ValueError(
                    "samples are visible states, but this model's free energy is not exact, "
                    "so their negative phase is unknown: pass joint states of shape "
                    f"(num_samples,) + {joint} (chains from random_state, or "
                    "LatentGibbsTransition)."
                )
        else:
            raise ValueError(
                f"samples must be joint states of shape (num_samples,) + {joint} or visible "
                f"states of shape (num_samples,) + {visible}; got shape {samples.shape}."
            )
        new = self._copy()
        new._negative_samples = lax.stop_gradient(samples.astype(self.chain_dtype))
        return new

    def _copy(self) -> LatentEnergyDistribution:
        leaves, treedef = jax.tree.flatten(self)
        return jax.tree.unflatten(treedef, leaves)

    # ------------------------------------------------------------------ conditionals
    def _random_block(self, rng_key, shape, values):
        if values is None:
            return random.normal(rng_key, shape, self.chain_dtype)
        table = jnp.asarray(values, self.chain_dtype)
        return table[random.randint(rng_key, shape, 0, len(values))]

    def random_latent(self, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Uniform over ``latent_values`` (or standard normal): ``sample_shape +
        batch_shape + latent_shape``, in the chain dtype."""
        shape = tuple(sample_shape) + self.batch_shape + self.latent_shape
        return self._random_block(rng_key, shape, self.latent_values)

    def random_state(self, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """A random **joint** state (each block uniform over its values, or standard
        normal): shape ``sample_shape + batch_shape + (num_joint_units,)``."""
        key_v, key_h = random.split(rng_key)
        v_shape = tuple(sample_shape) + self.batch_shape + self.visible_shape
        v = self._random_block(key_v, v_shape, self.support_values)
        return self.join(v, self.random_latent(key_h, sample_shape))

    def _block_update(self, rng_key, x, energy, values, step_size, event_shape, beta):
        if values is not None:
            return _gibbs_scan(rng_key, x, energy, values, beta, event_shape), None
        return _langevin_step(rng_key, x, energy, step_size, beta, len(event_shape))

    def _latent_update(self, rng_key, latent, visible, beta):
        h = self._as_chain(latent)
        v = self._as_chain(visible)
        lead = jnp.broadcast_shapes(
            _lead(h, self.latent_shape), _lead(v, self.visible_shape), self.batch_shape
        )
        h = jnp.broadcast_to(h, lead + self.latent_shape)
        return self._block_update(
            rng_key,
            h,
            lambda hh: self.joint_energy(v, hh),
            self.latent_values,
            self.latent_step_size,
            self.latent_shape,
            beta,
        )

    def _visible_update(self, rng_key, visible, latent, beta):
        v = self._as_chain(visible)
        h = self._as_chain(latent)
        lead = jnp.broadcast_shapes(
            _lead(h, self.latent_shape), _lead(v, self.visible_shape), self.batch_shape
        )
        v = jnp.broadcast_to(v, lead + self.visible_shape)
        return self._block_update(
            rng_key,
            v,
            lambda vv: self.joint_energy(vv, h),
            self.support_values,
            self.step_size,
            self.visible_shape,
            beta,
        )

    def latent_sweep(
        self, rng_key: jax.Array, latent: Any, visible: Any, beta: Any = 1.0
    ) -> jax.Array:
        """One sweep of the latent units clamped at ``visible``, leaving ``p_beta(h | v) ∝
        exp(-beta E(v, h))`` invariant: the exact single-unit scan (discrete) or one MALA
        step (continuous). ``latent``: ``lead + latent_shape``; ``visible``: ``lead' +
        visible_shape`` (leading shapes broadcast). Returns the broadcast ``lead +
        latent_shape``."""
        return self._latent_update(rng_key, latent, visible, beta)[0]

    def visible_sweep(
        self, rng_key: jax.Array, visible: Any, latent: Any, beta: Any = 1.0
    ) -> jax.Array:
        """One sweep of the visible units given ``latent`` (see :meth:`latent_sweep`)."""
        return self._visible_update(rng_key, visible, latent, beta)[0]

    def langevin_acceptance(
        self, rng_key: jax.Array, value: Any, beta: Any = 1.0
    ) -> dict[str, jax.Array]:
        """MALA acceptance probabilities of the continuous blocks in one joint sweep from
        ``value`` (joint states): ``{"latent": ..., "visible": ...}`` (only the continuous
        blocks), each of shape ``lead``. Average over chains to tune the step sizes."""
        v, h = self.split(self._as_chain(value))
        key_h, key_v = random.split(rng_key)
        h, accept_h = self._latent_update(key_h, h, v, beta)
        _, accept_v = self._visible_update(key_v, v, h, beta)
        out = {"latent": accept_h, "visible": accept_v}
        return {k: a for k, a in out.items() if a is not None}

    def unit_conditional(self, value: Any, unit: int, beta: Any = 1.0) -> jax.Array:
        """``P(unit = s | rest)`` at inverse temperature ``beta`` for joint states
        ``value``, ``unit`` indexing the joint state's last axis (visible units first), for
        every value ``s`` of that unit's (discrete) block: the conditional the sweeps draw
        from. Shape ``lead + (num_values,)``."""
        unit = operator.index(unit)
        if not 0 <= unit < self.num_joint_units:
            raise ValueError(f"unit must lie in [0, {self.num_joint_units}); got {unit}.")
        v, h = self.split(self._as_chain(value))
        nv = self.num_visible_units
        if unit < nv:
            values, x, shape = self.support_values, v, self.visible_shape
            local = unit

            def energy(vv):
                return self.joint_energy(vv, h)
        else:
            values, x, shape = self.latent_values, h, self.latent_shape
            local = unit - nv

            def energy(hh):
                return self.joint_energy(v, hh)

        if values is None:
            raise ValueError(f"unit {unit} belongs to a continuous block: no conditional table.")
        lead = _lead(x, shape)
        flat = x.reshape(lead + (-1,))
        table = jnp.asarray(values, flat.dtype)
        logits = _unit_logits(energy, flat, local, table, jnp.asarray(beta, flat.dtype), shape)
        return jax.nn.softmax(logits, axis=-1)

    def _exact_posterior(self, rng_key, visible, beta, sample_shape=()):
        """Exact draws ``h ~ p_beta(h | v)`` by Gumbel-max over the enumerated latent
        states, in chunks: ``sample_shape + lead + latent_shape``."""
        v = self._as_chain(visible)
        beta = jnp.asarray(beta, v.dtype)
        return _compiled_exact_posterior(self, rng_key, v, beta, tuple(sample_shape))

    def _exact_posterior_impl(self, rng_key, v, beta, sample_shape):
        lead = jnp.broadcast_shapes(_lead(v, self.visible_shape), self.batch_shape)
        v = jnp.broadcast_to(v, lead + self.visible_shape)
        lead = jnp.broadcast_shapes(lead, beta.shape)
        out_lead = tuple(sample_shape) + lead
        chunk, num_chunks = self._latent_chunks(out_lead)

        def body(carry, inputs):
            best, code = carry
            index, key = inputs
            codes = index * chunk + jnp.arange(chunk, dtype=jnp.int32)
            h = self._latent_states(codes).reshape((chunk,) + (1,) * len(lead) + self.latent_shape)
            logits = -beta * self.joint_energy(v, h)  # (chunk,) + lead
            logits = jnp.broadcast_to(
                logits.reshape((chunk,) + (1,) * len(sample_shape) + logits.shape[1:]),
                (chunk,) + out_lead,
            )
            score = logits + random.gumbel(key, logits.shape, logits.dtype)
            top = jnp.max(score, axis=0)
            arg = jnp.argmax(score, axis=0).astype(jnp.int32) + index * chunk
            better = top > best
            return (jnp.where(better, top, best), jnp.where(better, arg, code)), None

        init = (jnp.full(out_lead, -jnp.inf, v.dtype), jnp.zeros(out_lead, jnp.int32))
        inputs = (jnp.arange(num_chunks), random.split(rng_key, num_chunks))
        (_, code), _ = lax.scan(body, init, inputs)
        return self._latent_states(code)

    def posterior_sample(
        self,
        rng_key: jax.Array,
        visible: Any,
        sample_shape: tuple[int, ...] = (),
        *,
        num_sweeps: int | None = None,
    ) -> jax.Array:
        """Draws of the latent units given ``visible`` (``lead + visible_shape``): shape
        ``sample_shape + lead + latent_shape`` in the chain dtype.

        With ``num_sweeps=None`` the draws are exact when the latent units enumerate
        (:attr:`has_exact_free_energy`), else the end of :attr:`num_latent_sweeps` clamped
        sweeps from random latent states; an explicit ``num_sweeps`` always runs that many
        sweeps (``0``: the random starting states).
        """
        v = self._as_chain(visible)
        self._check_visible_shape(v, "posterior_sample")
        sample_shape = tuple(sample_shape)
        if num_sweeps is None and self.has_exact_free_energy:
            return self._exact_posterior(rng_key, v, 1.0, sample_shape)
        n = self.num_latent_sweeps if num_sweeps is None else num_sweeps
        if isinstance(n, bool) or int(n) != n or int(n) < 0:
            raise ValueError(f"num_sweeps must be a non-negative integer; got {num_sweeps!r}.")
        return _compiled_posterior_chains(self, rng_key, v, sample_shape, int(n))

    def _posterior_chains_impl(self, rng_key, v, sample_shape, num_sweeps):
        lead = jnp.broadcast_shapes(_lead(v, self.visible_shape), self.batch_shape)
        key_init, key_run = random.split(rng_key)
        shape = sample_shape + lead + self.latent_shape
        h = self._random_block(key_init, shape, self.latent_values)

        def body(h, key):
            return self.latent_sweep(key, h, v), None

        h, _ = lax.scan(body, h, random.split(key_run, num_sweeps))
        return h

    # ------------------------------------------------------------------ sweeps, sampling
    def gibbs_sweep(self, rng_key: jax.Array, value: Any, beta: Any = 1.0) -> jax.Array:
        """One sweep at inverse temperature ``beta``.

        On joint states (shape ``lead + (num_joint_units,)``): :meth:`latent_sweep` then
        :meth:`visible_sweep`, leaving ``exp(-beta E(v, h))`` invariant; returns joint
        states. On visible states (exact latent units only): an exact draw of ``h`` from
        ``p_beta(h | v)``, then :meth:`visible_sweep`, leaving the visible marginal
        ``exp(-tempered_energy(v, beta))`` invariant; returns visible states.
        """
        value = self._as_chain(value)
        key_h, key_v = random.split(rng_key)
        if self.is_joint(value):
            v, h = self.split(value)
            h = self.latent_sweep(key_h, h, v, beta)
            v = self.visible_sweep(key_v, v, h, beta)
            return self.join(v, h)
        self._check_visible_shape(value, "gibbs_sweep")
        self._require_exact("gibbs_sweep on visible states")
        h = self._exact_posterior(key_h, value, beta)
        return self.visible_sweep(key_v, value, h, beta)

    def sample_joint(
        self, key: jax.Array, sample_shape: tuple[int, ...] = ()
    ) -> tuple[jax.Array, jax.Array]:
        """``(visible, latent)`` at the end of independent joint chains (``num_sweeps``
        sweeps from :meth:`random_state`), in :attr:`sample_dtype` and
        :attr:`latent_sample_dtype`."""
        state = _sample_joint(self, key, tuple(sample_shape))
        v, h = self.split(state)
        return v.astype(self.sample_dtype), h.astype(self.latent_sample_dtype)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """The visible part of :meth:`sample_joint`: approximate draws from ``p(v)``."""
        return self.sample_joint(key, sample_shape)[0]

    def enumerate_support(self, expand: bool = True) -> jax.Array:
        if self.support_values is None:
            raise NotImplementedError("the visible units of this model are continuous.")
        return super().enumerate_support(expand)

    def _support_hint(self) -> str:
        return f"Map the data onto support_values {self.support_values} first."

    # ------------------------------------------------------------------ enumeration
    @property
    def num_enumerated_states(self) -> int:
        """Joint configurations exact enumeration visits: ``|V| * |H|``."""
        spec = self._enumeration()
        return spec.num_values**spec.num_units * self.num_latent_states

    def _enumeration(self) -> Enumeration:
        if self.support_values is None:
            raise NotImplementedError(
                "the visible units of this model are continuous: no exact enumeration; attach "
                "log Z with with_log_partition."
            )
        if not self.has_exact_free_energy:
            raise NotImplementedError(
                "the latent units of this model do not enumerate (continuous, or more than "
                f"MAX_EXACT_LATENT_STATES = {MAX_EXACT_LATENT_STATES} configurations)."
            )
        dtype = self.chain_dtype
        values = jnp.asarray(self.support_values, dtype)
        visible_shape = self.visible_shape

        def decode(d):
            return values[d].reshape(d.shape[:1] + visible_shape)

        def log_weight(v):
            return self._log_sum_latent(v, 1.0)

        def unit_probs(v):
            return (v[..., None] == values).astype(dtype)

        return Enumeration(
            num_units=self.num_visible_units,
            num_values=len(self.support_values),
            decode=decode,
            log_weight=log_weight,
            unit_probs=unit_probs,
        )

    def __repr__(self) -> str:
        def kind(values):
            return "continuous" if values is None else f"values {values}"

        return (
            f"{type(self).__name__}({getattr(self.energy_fn, '__name__', 'energy_fn')}, "
            f"batch_shape={self.batch_shape}, visible_shape={self.visible_shape} "
            f"({kind(self.support_values)}), latent_shape={self.latent_shape} "
            f"({kind(self.latent_values)}))"
        )


# Compiled once per distribution structure and shapes (eager calls do not recompile).
@jax.jit
def _compiled_log_sum_latent(distribution, v, beta):
    return distribution._log_sum_latent_impl(v, beta)


@partial(jax.jit, static_argnums=4)
def _compiled_exact_posterior(distribution, rng_key, v, beta, sample_shape):
    return distribution._exact_posterior_impl(rng_key, v, beta, sample_shape)


@partial(jax.jit, static_argnums=(3, 4))
def _compiled_posterior_chains(distribution, rng_key, v, sample_shape, num_sweeps):
    return distribution._posterior_chains_impl(rng_key, v, sample_shape, num_sweeps)


@partial(jax.jit, static_argnums=2)
def _sample_joint(distribution: LatentEnergyDistribution, key: jax.Array, sample_shape: tuple):
    # Compiled once per distribution structure and sample shape.
    return run_chains(distribution, key, sample_shape)


# ---------------------------------------------------------------------- chains
@dataclasses.dataclass(frozen=True)
class LatentGibbsTransition:
    """Joint sweeps as a *transition* for ``CD``, ``PCD`` and ``ParallelTempering``.

    Like :class:`~numpyro_ebm.infer.GibbsTransition` (the chain state is the joint state,
    stepped by :meth:`LatentEnergyDistribution.gibbs_sweep`), except that :meth:`init`
    also accepts visible configurations, such as the data batch ``CD`` starts from or the
    data examples ``PCD(init_from_data=True)`` starts from, and completes them with
    latent draws from :meth:`LatentEnergyDistribution.posterior_sample` (exact when the
    latent units enumerate and ``num_burnin`` is None, else ``num_burnin`` clamped sweeps,
    default the distribution's ``num_latent_sweeps``).

    Examples
    --------
    >>> from numpyro_ebm.infer import CD
    >>> from numpyro_ebm.distributions.latent import LatentGibbsTransition
    >>> estimator = CD(num_sweeps=5, transition=LatentGibbsTransition())
    """

    num_burnin: int | None = None

    def init(self, rng_key, distribution, position):
        position = jnp.asarray(position, distribution.chain_dtype)
        if distribution.is_joint(position):
            return position
        h = distribution.posterior_sample(rng_key, position, num_sweeps=self.num_burnin)
        return distribution.join(position, h)

    def step(self, rng_key, state, distribution, beta=1.0):
        return distribution.gibbs_sweep(rng_key, state, beta)

    def position(self, state):
        return state


class ClampedChainsState(NamedTuple):
    """latent : persistent chains ``(num_samples, num_examples) + batch_shape +
    latent_shape`` (empty for restarted chains); step : number of steps so far."""

    latent: jax.Array
    step: jax.Array


class ClampedChainsInfo(NamedTuple):
    """energy : mean joint energy ``E(v, h)`` of the data batch and its latent draws."""

    energy: jax.Array


def _examples(distribution, data) -> jax.Array:
    if data is None:
        raise ValueError("ClampedChains needs the data batch: its chains are clamped at it.")
    data = jnp.asarray(data)
    expected = distribution.batch_shape + distribution.visible_shape
    if data.ndim != len(expected) + 1 or data.shape[1:] != expected:
        raise ValueError(
            f"data must have shape (num_examples,) + batch_shape + visible_shape = "
            f"(num_examples,) + {expected}; got shape {data.shape}."
        )
    return data.astype(distribution.chain_dtype)


def _count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ClampedChains:
    r"""Positive phase: chains over the latent units clamped at the data.

    Each step returns ``num_samples`` latent draws per example, ``h_k ~ p(h | v)`` for the
    data batch ``v``, shape ``(num_samples, batch_size) + batch_shape + latent_shape``, to
    attach with :meth:`LatentEnergyDistribution.with_positive_samples`:

    .. math::

        \Delta_1 \approx -\frac{1}{K}\sum_{k=1}^{K}
            \frac{\partial E(v, h_k)}{\partial \theta},
        \qquad h_k \sim p(h \mid v).

    Parameters
    ----------
    num_samples : int
        Chains per example (``K``).
    num_sweeps : int
        Clamped sweeps per step of persistent chains (default 1).
    num_burnin : int, optional
        Sweeps from random latent states for fresh chains (at :meth:`init` when
        persistent, at every step otherwise). ``None`` (default): exact draws when the
        latent units enumerate, else the distribution's ``num_latent_sweeps``.
    persistent : bool
        ``False`` (default): fresh chains every step, for minibatches (what ``fit`` and
        ``negative_phase`` need, through :class:`TwoPhaseEstimator`). ``True``: one set of
        chains per example of the data given to :meth:`init`, carried across parameter
        updates (persistent per-example chains, as in PCD); each :meth:`step` must then see
        the same examples in the same order (full batch), or pass ``indices`` into them.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.latent import ClampedChains, LatentEnergyDistribution
    >>> model = LatentEnergyDistribution(lambda v, h: -jnp.sum(v) * jnp.sum(h), (3,), (4,),
    ...                                  support_values=(0, 1), latent_values=(0, 1))
    >>> data = jnp.asarray([[1, 0, 1], [0, 0, 1]])
    >>> chains = ClampedChains(num_samples=5, persistent=True)
    >>> state = chains.init(jax.random.key(0), model, data)
    >>> latent, state, info = chains.step(jax.random.key(1), state, model, data)
    >>> latent.shape, model.with_positive_samples(latent).log_prob(data).shape
    ((5, 2, 4), (2,))
    """

    num_samples: int = 1
    num_sweeps: int = 1
    num_burnin: int | None = None
    persistent: bool = False

    def __post_init__(self):
        _count("num_samples", self.num_samples, 1)
        _count("num_sweeps", self.num_sweeps, 1)
        if self.num_burnin is not None:
            _count("num_burnin", self.num_burnin, 0)

    def _fresh(self, rng_key, distribution, data):
        return distribution.posterior_sample(
            rng_key, data, (self.num_samples,), num_sweeps=self.num_burnin
        )

    def init(self, rng_key, distribution, data=None) -> ClampedChainsState:
        step = jnp.zeros((), jnp.int32)
        if not self.persistent:
            return ClampedChainsState(jnp.zeros((0,), distribution.chain_dtype), step)
        return ClampedChainsState(
            self._fresh(rng_key, distribution, _examples(distribution, data)), step
        )

    def step(self, rng_key, state, distribution, data, indices=None):
        """``(latent, state, info)`` for the data batch (``indices``: positions of the
        batch's examples in the data given to :meth:`init`, persistent chains only)."""
        data = _examples(distribution, data)
        if not self.persistent:
            latent = self._fresh(rng_key, distribution, data)
            new_state = state._replace(step=state.step + 1)
        else:
            chains = state.latent if indices is None else state.latent[:, indices]
            if chains.shape[1] != data.shape[0]:
                raise ValueError(
                    f"these persistent ClampedChains hold chains for {chains.shape[1]} "
                    f"examples but the data batch has {data.shape[0]}: pass the full data "
                    "(same order) or the batch's indices, or use persistent=False."
                )

            def body(h, key):
                return distribution.latent_sweep(key, h, data), None

            latent, _ = lax.scan(body, chains, random.split(rng_key, self.num_sweeps))
            stored = latent if indices is None else state.latent.at[:, indices].set(latent)
            new_state = ClampedChainsState(stored, state.step + 1)
        info = ClampedChainsInfo(jnp.mean(distribution.joint_energy(data, latent)))
        return latent, new_state, info


class TwoPhaseState(NamedTuple):
    """negative : the negative-phase estimator's state; positive : :class:`ClampedChainsState`."""

    negative: Any
    positive: ClampedChainsState


@dataclasses.dataclass(frozen=True)
class TwoPhaseEstimator:
    """A negative-phase estimator and :class:`ClampedChains`, as one estimator.

    Its ``step(rng_key, state, distribution, data)`` returns a :class:`TwoPhaseSamples`
    (the negative estimator's joint draws, and latent draws clamped at ``data``), which
    :meth:`LatentEnergyDistribution.with_negative_samples` attaches as both phases. So
    :func:`numpyro_ebm.train.fit` and :class:`numpyro_ebm.handlers.negative_phase` train
    models whose free energy is not exact, with no change: the gradient of
    ``-mean(log_prob(batch))`` is then ``-(Delta1 - Delta2)`` from the two sets of draws.
    The info is the negative estimator's.

    Parameters
    ----------
    negative : estimator
        ``CD``, ``PCD`` or ``ParallelTempering``; chains that start from data need
        ``transition=LatentGibbsTransition()`` unless the latent units enumerate.
    positive : ClampedChains
        Must restart every step (``persistent=False``): ``fit`` and ``negative_phase``
        shuffle and subsample the data, so per-example chains would be attached to the
        wrong examples.

    Examples
    --------
    >>> from numpyro_ebm.infer import PCD
    >>> from numpyro_ebm.distributions.latent import ClampedChains, TwoPhaseEstimator
    >>> estimator = TwoPhaseEstimator(PCD(num_chains=200, init_from_data=False),
    ...                               ClampedChains(num_samples=4, num_burnin=20))
    """

    negative: Any
    positive: ClampedChains = ClampedChains()

    def __post_init__(self):
        if not (hasattr(self.negative, "init") and hasattr(self.negative, "step")):
            raise ValueError(
                "negative must be a negative-phase estimator (CD, PCD, ParallelTempering); "
                f"got {self.negative!r}."
            )
        if not isinstance(self.positive, ClampedChains):
            raise ValueError(f"positive must be a ClampedChains; got {self.positive!r}.")
        if self.positive.persistent:
            raise ValueError(
                "positive must restart its chains every step (ClampedChains(persistent=False)): "
                "fit and negative_phase pass shuffled minibatches, so persistent per-example "
                "chains would be clamped at other examples. For full-batch persistent chains, "
                "run ClampedChains(persistent=True) in your own loop."
            )

    def init(self, rng_key, distribution, data=None) -> TwoPhaseState:
        key_neg, key_pos = random.split(rng_key)
        return TwoPhaseState(
            self.negative.init(key_neg, distribution, data),
            self.positive.init(key_pos, distribution, data),
        )

    def step(self, rng_key, state, distribution, data):
        key_neg, key_pos = random.split(rng_key)
        negative, neg_state, info = self.negative.step(key_neg, state.negative, distribution, data)
        positive, pos_state, _ = self.positive.step(key_pos, state.positive, distribution, data)
        return TwoPhaseSamples(negative, positive), TwoPhaseState(neg_state, pos_state), info
