"""The log-partition policy of log_prob: exact when enumerable, attached values, and an
error (never a silently wrong gradient) when the negative phase is unknown."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm import (
    AUTO_EXACT_MAX_STATES,
    BernoulliRBM,
    LogPartitionGradientError,
    all_states,
    exact_log_partition,
)


def rbm_with(num_visible, num_hidden, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (
        0.1 * jax.random.normal(k1, (num_visible, num_hidden)),
        0.1 * jax.random.normal(k2, (num_visible,)),
        0.1 * jax.random.normal(k3, (num_hidden,)),
    )


def test_small_model_gradient_is_exact(x64):
    """Below AUTO_EXACT_MAX_STATES, d log p / d theta = Delta1 - Delta2 exactly; compare with
    finite differences of the enumerated log-likelihood."""
    params = rbm_with(4, 3)
    v = jnp.asarray([1, 0, 1, 1])

    def loglik(w):
        return BernoulliRBM(w, *params[1:]).log_prob(v)

    grad = jax.grad(loglik)(params[0])
    eps = 1e-6
    fd = np.zeros(params[0].shape)
    for idx in np.ndindex(*params[0].shape):
        d = jnp.zeros(params[0].shape).at[idx].set(eps)
        fd[idx] = (loglik(params[0] + d) - loglik(params[0] - d)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_unknown_log_partition_gradient_raises():
    params = rbm_with(20, 20)  # 2**20 states > AUTO_EXACT_MAX_STATES
    rbm = BernoulliRBM(*params)
    assert rbm.num_enumerated_states > AUTO_EXACT_MAX_STATES
    assert not rbm.is_normalized and rbm.log_partition is None
    v = jnp.ones(20)
    # The value is the unnormalized log density...
    np.testing.assert_allclose(rbm.log_prob(v), rbm.unnormalized_log_prob(v))
    # ...and its gradient with respect to the parameters refuses to be only Delta1.
    with pytest.raises(LogPartitionGradientError, match="with_negative_samples"):
        jax.grad(lambda w: BernoulliRBM(w, *params[1:]).log_prob(v))(params[0])
    with pytest.raises(LogPartitionGradientError):
        jax.jvp(lambda w: BernoulliRBM(w, *params[1:]).log_prob(v), (params[0],),
                (jnp.ones_like(params[0]),))


def test_gradient_with_respect_to_value_only_is_fine():
    """Differentiating with respect to anything but the energy parameters never calls the
    guard (e.g. a relaxed value, or other sites of a model)."""
    rbm = BernoulliRBM(*rbm_with(20, 20))
    g = jax.grad(lambda v: rbm.log_prob(v))(jnp.full(20, 0.0))
    assert g.shape == (20,)


def test_attached_log_partition_normalizes_but_guards_gradient(x64):
    params = rbm_with(6, 5)
    rbm = BernoulliRBM(*params)
    log_z = exact_log_partition(rbm)
    attached = BernoulliRBM(*params, log_partition=log_z + 1.0)
    v = all_states(rbm)
    np.testing.assert_allclose(attached.log_prob(v), rbm.log_prob(v) - 1.0, rtol=1e-12)
    same = rbm.with_log_partition(log_z)
    np.testing.assert_allclose(jax.nn.logsumexp(same.log_prob(v)), 0.0, atol=1e-12)
    assert same.is_normalized
    with pytest.raises(LogPartitionGradientError):
        jax.grad(lambda w: BernoulliRBM(w, *params[1:], log_partition=log_z).log_prob(v[0]))(
            params[0]
        )


def test_attached_log_partition_survives_jit():
    rbm = BernoulliRBM(*rbm_with(20, 20)).with_log_partition(3.0)
    out = jax.jit(lambda d, v: d.log_prob(v))(rbm, jnp.ones(20))
    np.testing.assert_allclose(out, rbm.unnormalized_log_prob(jnp.ones(20)) - 3.0, rtol=1e-6)


def test_bad_log_partition_values():
    params = rbm_with(3, 2)
    with pytest.raises(ValueError, match="log_partition"):
        BernoulliRBM(*params, log_partition=jnp.nan)
    with pytest.raises(ValueError, match="log_partition"):
        BernoulliRBM(*params, log_partition=jnp.zeros(3))


def test_stop_gradient_holds_parameters_fixed():
    """The documented way to differentiate through a model with fixed EBM parameters."""
    params = rbm_with(20, 20)

    def f(scale):
        w = jax.lax.stop_gradient(params[0])
        return BernoulliRBM(w, *params[1:]).log_prob(jnp.ones(20)) * scale

    assert jnp.isfinite(jax.grad(f)(1.0))


def test_negative_samples_give_unbiased_gradient(x64):
    """With exact draws x_k attached, d log p(v)/dW = Delta1 - mean_k(-dF(x_k)/dW); its mean
    is the exact gradient. Each entry is checked to 5 Monte Carlo standard errors, the
    standard error estimated from the per-draw gradients (a false alarm has probability
    about 6e-7 per entry)."""
    params = rbm_with(8, 20, seed=2)  # 2**8 visible states: enumerate them exactly
    rbm = BernoulliRBM(*params)
    states = all_states(rbm)
    probs = jnp.exp(rbm.log_prob(states))
    idx = jax.random.choice(jax.random.key(0), states.shape[0], (20000,), p=probs)
    draws = states[idx]
    v = jnp.asarray([1, 0, 1, 1, 0, 0, 1, 0])

    def loglik(w, samples):
        return BernoulliRBM(w, *params[1:]).with_negative_samples(samples).log_prob(v)

    exact = jax.grad(lambda w: BernoulliRBM(w, *params[1:]).log_prob(v))(params[0])
    estimate = jax.grad(loglik)(params[0], draws)
    per_draw = jax.vmap(lambda x: jax.grad(loglik)(params[0], x[None]))(draws[:2000])
    stderr = jnp.std(per_draw, axis=0) / jnp.sqrt(draws.shape[0])
    assert jnp.all(jnp.abs(estimate - exact) <= 5 * stderr + 1e-12)
    # The value is unchanged by attaching samples.
    np.testing.assert_allclose(
        rbm.with_negative_samples(draws).log_prob(v), rbm.log_prob(v), rtol=1e-12
    )


def test_negative_samples_shape_is_checked():
    rbm = BernoulliRBM(*rbm_with(4, 3))
    with pytest.raises(ValueError, match="samples must have shape"):
        rbm.with_negative_samples(jnp.zeros((4,)))
