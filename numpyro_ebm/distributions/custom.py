"""Bring your own energy: any energy function as an energy-based distribution."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import constraints

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    check_finite,
    is_concrete,
)
from numpyro_ebm.distributions.rbm import expand_beta

__all__ = ["DEFAULT_STEP_SIZE", "EnergyDistribution", "FiniteValues"]

#: Default Langevin step size of continuous :class:`EnergyDistribution` models. It suits
#: targets whose scale is about 1 per coordinate; tune it for yours (see ``langevin_step``).
DEFAULT_STEP_SIZE = 0.1


class FiniteValues(constraints.Constraint):
    """Events whose every unit takes one of finitely many ``values``; ``event_dim`` trailing
    axes form one event.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import FiniteValues
    >>> FiniteValues((-1, 1))(jnp.array([-1, 0, 1])).tolist()
    [True, False, True]
    >>> FiniteValues((0, 1, 2), event_dim=1)(jnp.array([[0, 2, 1], [0, 3, 1]])).tolist()
    [True, False]
    """

    is_discrete = True

    def __init__(self, values: tuple[float, ...], event_dim: int = 0):
        self.values = tuple(values)
        self.event_dim = int(event_dim)

    def __call__(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        ok = xp.zeros(xp.shape(x), bool)
        for v in self.values:
            ok = ok | xp.equal(x, v)
        if self.event_dim:
            ok = ok.all(axis=tuple(range(-self.event_dim, 0)))
        return ok

    def feasible_like(self, prototype):
        return jnp.full_like(prototype, self.values[0])

    def tree_flatten(self):
        return (), ((), {"values": self.values, "event_dim": self.event_dim})

    def eq(self, other: object, static: bool = False) -> bool:
        return (
            isinstance(other, FiniteValues)
            and self.values == other.values
            and self.event_dim == other.event_dim
        )

    def __repr__(self) -> str:
        return f"FiniteValues(values={self.values}, event_dim={self.event_dim})"


def _event_shape(event_shape: Any) -> tuple[int, ...]:
    if isinstance(event_shape, numbers.Integral) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    try:
        shape = tuple(operator.index(n) for n in event_shape)
    except TypeError:
        shape = None
    if shape is None or any(n <= 0 for n in shape):
        raise ValueError(
            f"event_shape must be a tuple of positive ints (the shape of one configuration "
            f"x that energy_fn takes), e.g. (5,) or (4, 4); got {event_shape!r}."
        )
    return shape


def _support_values(support_values: Any) -> tuple[float, ...]:
    try:
        arr = np.asarray(support_values)
    except Exception:  # ragged input and the like
        arr = None
    if arr is None or arr.ndim != 1 or arr.size < 2 or arr.dtype.kind not in "biuf":
        raise ValueError(
            f"support_values must be a sequence of at least two distinct numbers (the values "
            f"one unit can take), e.g. (0, 1), (-1, 1) or (0, 1, 2); got {support_values!r}."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.unique(arr).size != arr.size:
        raise ValueError(f"support_values must be finite and distinct; got {support_values!r}.")
    arr = np.sort(arr)
    if np.all(arr == np.round(arr)):
        return tuple(int(v) for v in arr)
    return tuple(float(v) for v in arr)


class EnergyDistribution(EnergyBasedDistribution):
    r"""An energy-based distribution defined by a user energy function.

    .. math::

        p(x) = \frac{e^{-E(x;\, \theta)}}{Z(\theta)}, \qquad
        Z(\theta) = \sum_x e^{-E(x;\, \theta)} \ \text{(or } \textstyle\int dx\text{)},

    where ``E = energy_fn`` and ``theta = params``. With ``support_values`` the units are
    discrete, every unit of ``x`` taking one of ``support_values``; a sweep of
    :meth:`gibbs_sweep` resamples the units one after the other (in flattened order) from
    their exact conditionals at inverse temperature ``beta``,

    .. math::

        P(x_i = s \mid x_{-i}) \propto e^{-\beta E(x_{i \leftarrow s})},

    evaluating the energy once per support value (``num_units * num_values`` energy
    evaluations per sweep: fine for small or cheap models; write a dedicated family with
    block updates when speed matters). Without ``support_values`` ``x`` is a real array and
    a sweep is one Metropolis-adjusted Langevin (MALA) step of size ``epsilon``,

    .. math::

        x' = x - \tfrac{\epsilon^2}{2} \beta \nabla E(x) + \epsilon \xi, \quad
        \xi \sim N(0, I), \qquad
        \alpha = \min\Big(1, \frac{e^{-\beta E(x')} q(x \mid x')}
                                  {e^{-\beta E(x)} q(x' \mid x)}\Big),

    which leaves ``exp(-beta E)`` exactly invariant for any step size; the step size only
    controls mixing (tune it so the mean acceptance reported by :meth:`langevin_step` is
    roughly 0.5 to 0.8).

    Parameters
    ----------
    energy_fn : callable
        ``energy_fn(x, params)`` (or ``energy_fn(x)`` when ``params`` is None): the energy of
        **one** configuration ``x`` of shape ``event_shape`` (floats in the chain dtype), a
        scalar. It must be a JAX-traceable function; it is ``vmap``-ed over sample and batch
        dimensions and differentiated with ``jax.grad`` in the continuous case.
    event_shape : int or tuple of int
        Shape of one configuration.
    support_values : sequence of numbers, optional
        Values one unit can take (stored sorted), e.g. ``(0, 1)``, ``(-1, 1)`` or
        ``(0, 1, 2)``; ``None`` (default) for real-valued ``x``.
    params : pytree of ArrayLike, optional
        Parameters passed to ``energy_fn``. They are pytree data of the distribution (they
        survive ``jit``, ``vmap`` and ``scan``) and gradients flow to them. Pass *every*
        parameter you differentiate here: a parameter that ``energy_fn`` closes over is
        invisible to the guard that refuses the unknown gradient of ``log Z``.
    batch_shape : tuple of int
        Batch shape (default ``()``). Every leaf of ``params`` must then have leading
        dimensions equal to ``batch_shape``; ``energy_fn`` is ``vmap``-ed over them, so it
        still sees the parameters of one batch member.
    step_size : float or ArrayLike, optional
        Langevin step ``epsilon`` of continuous models (default :data:`DEFAULT_STEP_SIZE`,
        0.1, suited to targets of scale about 1); scalar or broadcastable to ``batch_shape``.
        Not allowed with ``support_values``. On energies that grow faster than quadratically
        (a quartic, say) too large a step strands chains that start far in the tails: the
        proposal overshoots and is never accepted (MALA is not geometrically ergodic there).
        Watch the acceptance rate.
    num_sweeps : int
        Sweeps per call of :meth:`sample`, from random starting states (uniform over
        ``support_values``, or standard normal) (default 1000).
    log_partition : ArrayLike, optional
        A known ``log Z`` to normalize ``log_prob`` with. Discrete models with at most
        ``2**12`` configurations are normalized exactly (and differentiably) without it.
    validate_args : bool, optional
        ``False`` skips the value checks on concrete parameters and data.

    Examples
    --------
    An open chain of three Ising spins, normalized exactly (``Z = 2 (2 cosh K)^2``):

    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.custom import EnergyDistribution
    >>> def chain(x, params):
    ...     return -params["coupling"] * jnp.sum(x[:-1] * x[1:])
    >>> model = EnergyDistribution(chain, (3,), support_values=(-1, 1), params={"coupling": 0.5})
    >>> model.sample(jax.random.key(0), (2,)).shape
    (2, 3)
    >>> bool(jnp.isclose(model.log_partition, jnp.log(2 * (2 * jnp.cosh(0.5)) ** 2)))
    True

    A continuous double well, sampled with Langevin steps:

    >>> well = EnergyDistribution(lambda x: jnp.sum((x**2 - 1) ** 2), (2,), step_size=0.3)
    >>> well.sample(jax.random.key(1), (5,)).shape
    (5, 2)
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    pytree_data_fields = ("params", "step_size")
    pytree_aux_fields = ("energy_fn", "support_values")

    def __init__(
        self,
        energy_fn: Callable[..., Any],
        event_shape: Any,
        *,
        support_values: Any = None,
        params: Any = None,
        batch_shape: tuple[int, ...] = (),
        step_size: Any = None,
        num_sweeps: int = 1000,
        log_partition: Any = None,
        validate_args: bool | None = None,
    ):
        if not callable(energy_fn):
            raise ValueError(
                f"energy_fn must be a callable energy_fn(x, params) (or energy_fn(x) without "
                f"params) returning the scalar energy of one configuration; got "
                f"{type(energy_fn).__name__}."
            )
        event_shape = _event_shape(event_shape)
        try:
            batch_shape = _event_shape(batch_shape)
        except ValueError:
            raise ValueError(
                f"batch_shape must be a tuple of positive ints; got {batch_shape!r}."
            ) from None
        self.energy_fn = energy_fn
        self.support_values = None if support_values is None else _support_values(support_values)
        self.params = _checked_params(params, batch_shape)
        if self.support_values is not None:
            if step_size is not None:
                raise ValueError(
                    "step_size applies only to continuous models (support_values=None); "
                    "discrete models are sampled by exact single-unit Gibbs updates."
                )
        else:
            step_size = _checked_step_size("step_size", step_size, batch_shape)
        self.step_size = step_size
        if validate_args is not False:
            for name, leaf in self.energy_parameters().items():
                check_finite(name, leaf)
            _check_positive_step("step_size", step_size)
        super().__init__(
            batch_shape,
            event_shape,
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )
        self._check_energy_output()

    def _check_energy_output(self) -> None:
        nb = len(self.batch_shape)
        x = jax.ShapeDtypeStruct(self.event_shape, self.chain_dtype)
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[nb:], a.dtype), self.params)
        try:
            out = jax.eval_shape(self._single_energy, x, one)
        except TypeError as err:
            call = "energy_fn(x)" if self.params is None else "energy_fn(x, params)"
            raise ValueError(
                f"calling {call} on one configuration of shape {self.event_shape} failed "
                f"with TypeError: {err}. energy_fn is called as energy_fn(x, params) when "
                f"params is given and as energy_fn(x) otherwise."
            ) from err
        if out.shape != () or not jnp.issubdtype(out.dtype, jnp.number):
            raise ValueError(
                f"energy_fn must return a scalar energy for one configuration of shape "
                f"{self.event_shape}; it returned shape {out.shape} (dtype {out.dtype}). "
                f"Sum over the units inside energy_fn; the distribution vmaps over batches."
            )

    @classmethod
    def infer_shapes(cls, energy_fn=None, event_shape=(), *, batch_shape=(), **kwargs):
        return _event_shape(batch_shape), _event_shape(event_shape)

    # ------------------------------------------------------------------ properties
    @property
    def is_discrete(self) -> bool:
        return self.support_values is not None

    @property
    def has_enumerate_support(self) -> bool:
        return self.support_values is not None

    @property
    def support(self) -> constraints.Constraint:
        event_dim = len(self.event_shape)
        if self.support_values is not None:
            return FiniteValues(self.support_values, event_dim)
        if event_dim == 0:
            return constraints.real
        return constraints.independent(constraints.real, event_dim)

    @property
    def sample_dtype(self):
        """``int32`` for integer ``support_values``, otherwise the chain dtype."""
        if self.support_values is not None and all(isinstance(v, int) for v in self.support_values):
            return jnp.int32
        return self.chain_dtype

    @property
    def chain_dtype(self):
        """The float dtype of the floating leaves of ``params`` (the default float dtype
        without any)."""
        return _float_dtype(self.params)

    def energy_parameters(self) -> dict[str, jax.Array]:
        """The leaves of ``params``, keyed by their path (``"params['J']"``)."""
        return _keyed_leaves(self.params)

    def with_parameters(self, **params: Any) -> EnergyDistribution:
        """A copy with leaves of ``params`` replaced, keyed as in :meth:`energy_parameters`
        (``"params['J']"``); shapes must stay the same.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import EnergyDistribution
        >>> def chain(x, p):
        ...     return -p["J"] * jnp.sum(x[:-1] * x[1:])
        >>> model = EnergyDistribution(chain, (3,), support_values=(-1, 1),
        ...                            params={"J": jnp.array(1.0)})
        >>> list(model.energy_parameters())
        ["params['J']"]
        >>> stronger = model.with_parameters(**{"params['J']": jnp.array(2.0)})
        >>> float(model.energy(jnp.ones(3))), float(stronger.energy(jnp.ones(3)))
        (-2.0, -4.0)
        """
        new_params = _replaced_leaves(self.params, params, type(self).__name__)
        new = super().with_parameters()
        new.params = new_params
        return new

    @property
    def num_units(self) -> int:
        """Units per configuration (the flattened event size)."""
        return math.prod(self.event_shape)

    # ------------------------------------------------------------------ energies
    def _single_energy(self, x: jax.Array, params: Any) -> jax.Array:
        out = self.energy_fn(x) if params is None else self.energy_fn(x, params)
        return jnp.asarray(out)

    def _as_chain(self, value: Any) -> jax.Array:
        value = jnp.asarray(value)
        dtype = self.chain_dtype
        if jnp.issubdtype(value.dtype, jnp.floating):
            dtype = jnp.result_type(value.dtype, dtype)
        return value.astype(dtype)

    def energy(self, value: jax.Array) -> jax.Array:
        """``energy_fn`` evaluated on every configuration: shape ``sample_shape +
        batch_shape`` (``value`` broadcasts against ``batch_shape``)."""
        value = self._as_chain(value)
        ne, nb = len(self.event_shape), len(self.batch_shape)
        lead = value.shape[: value.ndim - ne]
        full = jnp.broadcast_shapes(lead, self.batch_shape)
        if full != lead:
            value = jnp.broadcast_to(value, full + self.event_shape)
        sample_shape = full[: len(full) - nb]
        flat = value.reshape((-1, *self.batch_shape, *self.event_shape))
        fn = self._single_energy
        for _ in range(nb):
            fn = jax.vmap(fn)
        fn = jax.vmap(fn, in_axes=(0, None))
        return fn(flat, self.params).reshape(sample_shape + self.batch_shape)

    # ------------------------------------------------------------------ discrete Gibbs
    def _unit_logits(self, flat: jax.Array, unit: Any, beta: jax.Array) -> jax.Array:
        """``-beta E(x_{unit <- s})`` for every support value ``s``: shape ``lead + (K,)``
        for ``flat`` of shape ``lead + (num_units,)``; ``beta`` broadcasts against ``lead``."""
        values = jnp.asarray(self.support_values, flat.dtype)
        return _unit_logits(self.energy, flat, unit, values, beta, self.event_shape)

    def unit_conditional(self, value: jax.Array, unit: Any, beta: Any = 1.0) -> jax.Array:
        """``P(x_unit = support_values[k] | rest)`` at inverse temperature ``beta``, the
        conditional :meth:`gibbs_sweep` draws from; ``unit`` indexes the flattened event.

        Returns shape ``value.shape[:-len(event_shape)] + (len(support_values),)``.
        """
        if self.support_values is None:
            raise ValueError("unit_conditional needs a discrete model (support_values).")
        value = self._as_chain(value)
        lead = value.shape[: value.ndim - len(self.event_shape)]
        flat = value.reshape((*lead, self.num_units))
        beta = jnp.asarray(beta, flat.dtype)
        return jax.nn.softmax(self._unit_logits(flat, unit, beta), axis=-1)

    def _gibbs_scan(self, rng_key: jax.Array, value: jax.Array, beta: Any) -> jax.Array:
        value = self._as_chain(value)
        return _gibbs_scan(rng_key, value, self.energy, self.support_values, beta, self.event_shape)

    # ------------------------------------------------------------------ continuous MALA
    def langevin_step(
        self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0
    ) -> tuple[jax.Array, jax.Array]:
        """One Metropolis-adjusted Langevin step targeting ``exp(-beta E(x))``.

        Returns ``(new_value, accept_prob)``, ``accept_prob`` of shape ``sample_shape +
        batch_shape``: average it over chains and steps to tune ``step_size``.
        """
        if self.support_values is not None:
            raise ValueError("langevin_step needs a continuous model (support_values=None).")
        x = self._as_chain(value)
        return _langevin_step(rng_key, x, self.energy, self.step_size, beta, len(self.event_shape))

    # ------------------------------------------------------------------ sweeps, states
    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One sweep leaving ``exp(-beta E(x))`` invariant: a systematic scan of exact
        single-unit Gibbs updates (discrete) or one MALA step (continuous)."""
        if self.support_values is not None:
            return self._gibbs_scan(rng_key, value, beta)
        return self.langevin_step(rng_key, value, beta)[0]

    def random_state(self, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Uniform over ``support_values`` (discrete) or standard normal (continuous), shape
        ``sample_shape + batch_shape + event_shape``, in the chain dtype."""
        if self.support_values is not None:
            return super().random_state(rng_key, sample_shape)
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        return random.normal(rng_key, shape, self.chain_dtype)

    def enumerate_support(self, expand: bool = True) -> jax.Array:
        if self.support_values is None:
            raise NotImplementedError("EnergyDistribution without support_values is continuous.")
        return super().enumerate_support(expand)

    def _support_hint(self) -> str:
        return f"Map the data onto support_values {self.support_values} first."

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        if self.support_values is None:
            raise NotImplementedError(
                "a continuous EnergyDistribution has no exact enumeration; attach log Z with "
                "with_log_partition (e.g. from annealed importance sampling)."
            )
        dtype = self.chain_dtype
        values = jnp.asarray(self.support_values, dtype)
        event_shape = self.event_shape

        def decode(digits):
            return values[digits].reshape(digits.shape[:1] + event_shape)

        def log_weight(x):
            return -self.energy(x)

        def unit_probs(x):
            return (x[..., None] == values).astype(dtype)

        return Enumeration(
            num_units=self.num_units,
            num_values=len(self.support_values),
            decode=decode,
            log_weight=log_weight,
            unit_probs=unit_probs,
        )

    def __repr__(self) -> str:
        kind = f"support_values={self.support_values}" if self.is_discrete else "continuous"
        return (
            f"EnergyDistribution({getattr(self.energy_fn, '__name__', 'energy_fn')}, "
            f"batch_shape={self.batch_shape}, event_shape={self.event_shape}, {kind})"
        )


# ---------------------------------------------------------------------- shared helpers
# Private building blocks shared with numpyro_ebm.distributions.latent.


def _checked_params(params: Any, batch_shape: tuple[int, ...]) -> Any:
    """``params`` with array leaves, each leading with ``batch_shape``."""
    if params is None:
        return None
    params = jax.tree.map(jnp.asarray, params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf.shape[: len(batch_shape)] != batch_shape:
            raise ValueError(
                f"every leaf of params must have leading dimensions equal to "
                f"batch_shape {batch_shape}; params{jax.tree_util.keystr(path)} has "
                f"shape {leaf.shape}. Broadcast shared parameters explicitly."
            )
    return params


def _checked_step_size(name: str, step_size: Any, batch_shape: tuple[int, ...]) -> jax.Array:
    """A Langevin step size (default :data:`DEFAULT_STEP_SIZE`) broadcasting to the batch."""
    step_size = jnp.asarray(DEFAULT_STEP_SIZE if step_size is None else step_size)
    try:
        ok = jnp.broadcast_shapes(step_size.shape, batch_shape) == batch_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} must be a scalar or broadcast to batch_shape {batch_shape}; "
            f"got shape {step_size.shape}."
        )
    return step_size


def _check_positive_step(name: str, step_size: Any) -> None:
    if step_size is not None and is_concrete(step_size):
        check_finite(name, step_size)
        if np.any(np.asarray(step_size) <= 0):
            raise ValueError(
                f"{name} must be positive; got {np.asarray(step_size).tolist()}. "
                f"Smaller steps are accepted more often but mix more slowly."
            )


def _float_dtype(params: Any):
    """The float dtype of the floating leaves of ``params`` (default float without any)."""
    leaves = [
        leaf
        for leaf in jax.tree.leaves(params)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    ]
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def _keyed_leaves(params: Any) -> dict[str, jax.Array]:
    """The leaves of ``params`` keyed by their path (``"params['J']"``)."""
    return {
        f"params{jax.tree_util.keystr(path)}": leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def _replaced_leaves(params: Any, updates: dict[str, Any], owner: str) -> Any:
    """``params`` with the leaves named in ``updates`` (keys as in :func:`_keyed_leaves`)
    replaced; shapes must stay the same."""
    current = _keyed_leaves(params)
    unknown = set(updates) - set(current)
    if unknown:
        raise ValueError(
            f"with_parameters got unknown parameter(s) {sorted(unknown)}; this "
            f"{owner} has {sorted(current)}."
        )
    leaves = []
    for name, old in current.items():
        value = jnp.asarray(updates.get(name, old))
        if value.shape != jnp.shape(old):
            raise ValueError(
                f"{name} must keep its shape {jnp.shape(old)}; got shape {value.shape}."
            )
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _unit_logits(
    energy: Callable[[jax.Array], jax.Array],
    flat: jax.Array,
    unit: Any,
    values: jax.Array,
    beta: jax.Array,
    event_shape: tuple[int, ...],
) -> jax.Array:
    """``-beta E(x_{unit <- s})`` for every value ``s`` in ``values``: shape ``lead + (K,)``
    for ``flat`` of shape ``lead + (num_units,)``; ``energy`` maps ``(K,) + lead +
    event_shape`` to ``(K,) + lead``; ``beta`` broadcasts against ``lead``."""
    lead = flat.shape[:-1]
    num_values = values.shape[0]
    candidates = jnp.broadcast_to(flat, (num_values, *flat.shape))
    candidates = candidates.at[..., unit].set(values.reshape((-1,) + (1,) * len(lead)))
    energies = energy(candidates.reshape((num_values, *lead, *event_shape)))
    return jnp.moveaxis(-beta * energies, 0, -1)


def _gibbs_scan(
    rng_key: jax.Array,
    value: jax.Array,
    energy: Callable[[jax.Array], jax.Array],
    support_values: tuple[float, ...],
    beta: Any,
    event_shape: tuple[int, ...],
) -> jax.Array:
    """One systematic scan of exact single-unit updates of ``value`` (shape ``lead +
    event_shape``, a float dtype) from ``P(x_i = s | rest) ∝ exp(-beta energy(x_{i <- s}))``,
    units in flattened order; ``energy`` maps ``(K,) + lead + event_shape`` to ``(K,) +
    lead``."""
    num_units = math.prod(event_shape)
    lead = value.shape[: value.ndim - len(event_shape)]
    flat = value.reshape((*lead, num_units))
    beta = jnp.asarray(beta, flat.dtype)
    values = jnp.asarray(support_values, flat.dtype)

    def body(flat, inputs):
        key, unit = inputs
        logits = _unit_logits(energy, flat, unit, values, beta, event_shape)
        logits = logits - jnp.max(logits, axis=-1, keepdims=True)  # large energies
        index = random.categorical(key, logits, axis=-1)
        return flat.at[..., unit].set(values[index]), None

    inputs = (random.split(rng_key, num_units), jnp.arange(num_units))
    flat, _ = lax.scan(body, flat, inputs)
    return flat.reshape(value.shape)


def _langevin_step(
    rng_key: jax.Array,
    x: jax.Array,
    energy: Callable[[jax.Array], jax.Array],
    step_size: Any,
    beta: Any,
    event_ndim: int,
) -> tuple[jax.Array, jax.Array]:
    """One MALA step on ``x`` (shape ``lead + event``, a float dtype) targeting
    ``exp(-beta energy(x))``, ``energy`` mapping ``lead + event`` to ``lead``. Returns
    ``(new_x, accept_prob)``."""
    dtype = x.dtype
    ne = event_ndim
    axes = tuple(range(x.ndim - ne, x.ndim))
    beta = jnp.asarray(beta, dtype)
    step = jnp.asarray(step_size, dtype)
    step = step.reshape(step.shape + (1,) * ne)

    def energy_and_grad(x):
        energies, pullback = jax.vjp(energy, x)
        return energies, pullback(jnp.ones_like(energies))[0]

    key_noise, key_accept = random.split(rng_key)
    e0, g0 = energy_and_grad(x)
    beta_x = expand_beta(jnp.broadcast_to(beta, e0.shape), ne)
    noise = random.normal(key_noise, x.shape, dtype)
    proposal = x - 0.5 * step**2 * beta_x * g0 + step * noise
    e1, g1 = energy_and_grad(proposal)
    back = (x - proposal + 0.5 * step**2 * beta_x * g1) / step
    log_q_forward = -0.5 * jnp.sum(noise**2, axes)
    log_q_backward = -0.5 * jnp.sum(back**2, axes)
    log_ratio = -beta * (e1 - e0) + log_q_backward - log_q_forward
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accept = random.uniform(key_accept, accept_prob.shape, dtype) < accept_prob
    new = jnp.where(accept.reshape(accept.shape + (1,) * ne), proposal, x)
    return new, accept_prob
