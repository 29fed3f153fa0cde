"""Gaussian-Bernoulli restricted Boltzmann machines: real visible units, binary hidden units."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.distributions import Bernoulli, Normal, constraints

from numpyro_ebm.distributions.base import (
    EnergyBasedDistribution,
    Enumeration,
    check_finite,
    is_concrete,
    softplus,
)
from numpyro_ebm.distributions.rbm import (
    as_float,
    batch_shape_of,
    bernoulli_draw,
    expand_beta,
    vector_param,
)

__all__ = ["GaussianBernoulliRBM"]


class GaussianBernoulliRBM(EnergyBasedDistribution):
    r"""Gaussian-Bernoulli RBM over real visible vectors, binary hidden units summed out.

    .. math::

        E(v, h) = \sum_i \frac{(v_i - b_i)^2}{2\sigma_i^2} - c^\top h
                  - \sum_{ij} \frac{v_i}{\sigma_i} W_{ij} h_j, \qquad
        p(v) = \frac{e^{-F(v)}}{Z},

        F(v) = \sum_i \frac{(v_i - b_i)^2}{2\sigma_i^2}
               - \sum_j \operatorname{softplus}\Big(c_j + \sum_i \frac{v_i}{\sigma_i} W_{ij}\Big).

    The conditionals are ``p(h_j = 1 | v) = sigmoid(c_j + (v / sigma) W)`` and
    ``p(v | h) = Normal(b + sigma * (W h), sigma)``. The visible units integrate out in closed
    form, so ``log Z`` is exact by enumerating the hidden layer:

    .. math::

        \log Z = \log \sum_h \exp\Big(c^\top h + \sum_i \big(\tfrac{b_i}{\sigma_i} u_i
                 + \tfrac{1}{2} u_i^2\big)\Big) + \tfrac{n_v}{2} \log 2\pi
                 + \sum_i \log \sigma_i, \qquad u = W h,

    which :func:`numpyro_ebm.exact_log_partition` computes (and ``log_prob`` uses it
    automatically up to ``2**12`` hidden states).

    Parameters
    ----------
    weights : ArrayLike
        ``W``, shape ``batch_shape + (num_visible, num_hidden)``.
    visible_bias, hidden_bias : ArrayLike, optional
        ``b`` (``batch_shape + (num_visible,)``) and ``c`` (``batch_shape + (num_hidden,)``);
        zeros by default.
    visible_scale : ArrayLike
        ``sigma > 0``, a scalar or shape ``batch_shape + (num_visible,)`` (default 1).
    log_partition : ArrayLike, optional
        A known ``log Z`` to normalize ``log_prob`` with (see
        :class:`~numpyro_ebm.distributions.base.EnergyBasedDistribution`).
    num_sweeps : int
        Block-Gibbs sweeps (``v -> h -> v``) per call of :meth:`sample`, from starting states
        drawn from ``Normal(b, sigma)`` (default 1000).
    validate_args : bool, optional
        ``False`` skips the value checks on concrete parameters and data.

    Notes
    -----
    Tempering follows the package convention for latent-variable models: at inverse
    temperature ``beta`` the *joint* ``exp(-beta E(v, h))`` is sampled and the hidden layer
    summed out (:meth:`tempered_energy`). That tempered model is itself a Gaussian-Bernoulli
    RBM with weights ``sqrt(beta) W``, hidden bias ``beta c``, scale ``sigma / sqrt(beta)``
    and the same ``b``; it is improper at ``beta = 0``, so use ``beta > 0``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM
    >>> rbm = GaussianBernoulliRBM(jnp.zeros((2, 3)), visible_scale=2.0)
    >>> rbm.sample(jax.random.key(0), (4,)).shape
    (4, 2)
    >>> # W = 0: v ~ Normal(0, 2^2) independently, times 2^3 hidden states.
    >>> import math
    >>> expected = 3 * math.log(2) + math.log(2 * math.pi) + 2 * math.log(2.0)
    >>> bool(jnp.isclose(rbm.log_partition, expected))
    True
    """

    arg_constraints: ClassVar[dict[str, Any]] = {
        "weights": constraints.independent(constraints.real, 2),
        "visible_bias": constraints.real_vector,
        "hidden_bias": constraints.real_vector,
        "visible_scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    is_discrete = False
    has_enumerate_support = False
    support_values = ()

    def __init__(
        self,
        weights: Any,
        visible_bias: Any = None,
        hidden_bias: Any = None,
        visible_scale: Any = 1.0,
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
        scale = as_float(visible_scale)
        if scale.ndim == 0:
            scale = jnp.broadcast_to(scale, (num_visible,))
        elif scale.shape[-1] != num_visible:
            raise ValueError(
                f"visible_scale must be a scalar or have shape batch_shape + ({num_visible},) "
                f"to match the weights of this {name}; got shape {scale.shape}."
            )
        self.visible_scale = scale
        batch_shape = batch_shape_of(
            name,
            weights=weights.shape[:-2],
            visible_bias=self.visible_bias.shape[:-1],
            hidden_bias=self.hidden_bias.shape[:-1],
            visible_scale=scale.shape[:-1],
        )
        keys = ("weights", "visible_bias", "hidden_bias", "visible_scale")
        if validate_args is not False and is_concrete(*(getattr(self, k) for k in keys)):
            for key in keys:
                check_finite(key, getattr(self, key))
            smallest = float(np.min(np.asarray(scale)))
            if smallest <= 0:
                raise ValueError(
                    f"visible_scale must be > 0 (it is the standard deviation of v given h); "
                    f"got a smallest value of {smallest}. Pass positive scales, e.g. the "
                    f"per-feature standard deviation of the data."
                )
        super().__init__(
            batch_shape,
            (num_visible,),
            log_partition=log_partition,
            num_sweeps=num_sweeps,
            validate_args=validate_args,
        )

    @classmethod
    def infer_shapes(
        cls, weights=(), visible_bias=None, hidden_bias=None, visible_scale=(), **kwargs
    ):
        batch = [tuple(weights[:-2])]
        for shape in (visible_bias, hidden_bias, visible_scale):
            if shape is not None and len(shape) > 0:
                batch.append(tuple(shape[:-1]))
        return jax.lax.broadcast_shapes(*batch), tuple(weights[-2:-1])

    @property
    def num_visible(self) -> int:
        return self.weights.shape[-2]

    @property
    def num_hidden(self) -> int:
        return self.weights.shape[-1]

    @property
    def sample_dtype(self):
        """Samples are real: the chain dtype (the parameters' float dtype)."""
        return self.chain_dtype

    # ------------------------------------------------------------------ linear maps
    def visible_to_hidden(self, v: jax.Array) -> jax.Array:
        """``c + (v / sigma) W``: hidden pre-activations, shape ``v.shape[:-1] +
        (num_hidden,)``."""
        x = jnp.asarray(v).astype(self.chain_dtype) / self.visible_scale
        if self.weights.ndim == 2:
            return self.hidden_bias + x @ self.weights
        return self.hidden_bias + jnp.matmul(x[..., None, :], self.weights)[..., 0, :]

    def _weighted_hidden(self, h: jax.Array) -> jax.Array:
        """``u = W h``, shape ``h.shape[:-1] + (num_visible,)``."""
        h = jnp.asarray(h).astype(self.chain_dtype)
        if self.weights.ndim == 2:
            return h @ self.weights.T
        return jnp.matmul(h[..., None, :], jnp.swapaxes(self.weights, -1, -2))[..., 0, :]

    def hidden_to_visible(self, h: jax.Array) -> jax.Array:
        """``b + sigma * (W h)``: the mean of ``v`` given ``h``, shape ``h.shape[:-1] +
        (num_visible,)``."""
        return self.visible_bias + self.visible_scale * self._weighted_hidden(h)

    # ------------------------------------------------------------------ energies
    def _quadratic(self, v: jax.Array) -> jax.Array:
        z = (v - self.visible_bias) / self.visible_scale
        return 0.5 * jnp.sum(z * z, -1)

    def free_energy(self, value: jax.Array) -> jax.Array:
        """``F(v)``, the energy of ``v`` with the hidden layer summed out.

        Examples
        --------
        With ``W = 0`` each of the 3 hidden units contributes ``-log 2``:

        >>> import math
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import GaussianBernoulliRBM
        >>> rbm = GaussianBernoulliRBM(jnp.zeros((2, 3)))
        >>> f = rbm.free_energy(jnp.array([1.0, -1.0]))  # (1 + 1) / 2 - 3 log 2
        >>> bool(jnp.isclose(f, 1.0 - 3 * math.log(2)))
        True
        """
        v = jnp.asarray(value).astype(self.chain_dtype)
        return self._quadratic(v) - jnp.sum(softplus(self.visible_to_hidden(v)), -1)

    def energy(self, value: jax.Array) -> jax.Array:
        """The energy of the visible marginal: the free energy ``F(v)``."""
        return self.free_energy(value)

    def tempered_energy(self, value: jax.Array, beta: Any) -> jax.Array:
        """``-log sum_h exp(-beta E(v, h)) = beta Q(v) - sum_j softplus(beta (c + (v/sigma)
        W)_j)`` with ``Q(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2)``: the visible marginal of
        the tempered joint, left invariant by :meth:`gibbs_sweep`."""
        v = jnp.asarray(value).astype(self.chain_dtype)
        beta = jnp.asarray(beta, self.chain_dtype)
        return beta * self._quadratic(v) - jnp.sum(
            softplus(expand_beta(beta) * self.visible_to_hidden(v)), -1
        )

    def joint_energy(self, visible: jax.Array, hidden: jax.Array) -> jax.Array:
        """``E(v, h)``."""
        v = jnp.asarray(visible).astype(self.chain_dtype)
        h = jnp.asarray(hidden).astype(self.chain_dtype)
        return self._quadratic(v) - jnp.sum(h * self.visible_to_hidden(v), -1)

    # ------------------------------------------------------------------ conditionals
    def hidden_conditional(self, visible: jax.Array) -> Bernoulli:
        """``p(h | v)`` as a numpyro distribution with ``event_shape == (num_hidden,)``.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_ebm import GaussianBernoulliRBM
        >>> rbm = GaussianBernoulliRBM(jnp.zeros((2, 3)), hidden_bias=jnp.array([0.0, 1.0, -1.0]))
        >>> p_h = rbm.hidden_conditional(jnp.zeros(2))  # W = 0: sigmoid(c)
        >>> p_h.event_shape, [round(p, 4) for p in p_h.mean.tolist()]
        ((3,), [0.5, 0.7311, 0.2689])
        """
        return Bernoulli(logits=self.visible_to_hidden(visible)).to_event(1)

    def visible_conditional(self, hidden: jax.Array) -> Normal:
        """``p(v | h) = Normal(b + sigma W h, sigma)`` with ``event_shape == (num_visible,)``."""
        mean = self.hidden_to_visible(hidden)
        return Normal(mean, jnp.broadcast_to(self.visible_scale, mean.shape)).to_event(1)

    def gibbs_sweep(self, rng_key: jax.Array, value: jax.Array, beta: Any = 1.0) -> jax.Array:
        """One block-Gibbs sweep ``v -> h -> v`` of the joint tempered to
        ``exp(-beta E(v, h))``: ``h_j ~ Bernoulli(sigmoid(beta (c + (v/sigma) W)_j))`` then
        ``v ~ Normal(b + sigma W h, sigma / sqrt(beta))``. It leaves
        ``exp(-tempered_energy(v, beta))`` invariant; ``beta`` must be positive."""
        key_h, key_v = random.split(rng_key)
        dtype = self.chain_dtype
        beta = expand_beta(jnp.asarray(beta, dtype))
        h = bernoulli_draw(key_h, beta * self.visible_to_hidden(value))
        mean = self.hidden_to_visible(h)
        noise = random.normal(key_v, mean.shape, dtype)
        return mean + self.visible_scale * jax.lax.rsqrt(beta) * noise

    def random_state(self, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Starting states drawn from ``Normal(b, sigma)`` (the model with ``W = 0``), shape
        ``sample_shape + batch_shape + (num_visible,)``."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        noise = random.normal(rng_key, shape, self.chain_dtype)
        return self.visible_bias + self.visible_scale * noise

    def enumerate_support(self, expand: bool = True) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__} has real-valued visible units.")

    # ------------------------------------------------------------------ checks

    # ------------------------------------------------------------------ enumeration
    def _enumeration(self) -> Enumeration:
        dtype = self.chain_dtype
        # Integrating the visible units out: log Z = logsumexp_h log_weight(h).
        constant = 0.5 * self.num_visible * math.log(2 * math.pi) + jnp.sum(
            jnp.log(self.visible_scale), -1
        )

        def log_weight(h):
            u = self._weighted_hidden(h)
            quad = jnp.sum(self.visible_bias / self.visible_scale * u + 0.5 * u * u, -1)
            return jnp.sum(h * self.hidden_bias, -1) + quad + constant

        return Enumeration(
            num_units=self.num_hidden,
            num_values=2,
            decode=lambda d: d.astype(dtype),
            log_weight=log_weight,
            unit_probs=None,
        )
