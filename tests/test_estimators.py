"""Negative-phase estimators against the exact gradient of log Z on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes

from numpyro_ebm import BernoulliRBM, all_states
from numpyro_ebm.infer import CD, PCD, ParallelTempering

NUM_VISIBLE, NUM_HIDDEN = 6, 4


def make_rbm(scale=1.5, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return BernoulliRBM(
        scale * jax.random.normal(k1, (NUM_VISIBLE, NUM_HIDDEN)),
        0.3 * jax.random.normal(k2, (NUM_VISIBLE,)),
        0.3 * jax.random.normal(k3, (NUM_HIDDEN,)),
    )


DATA = jnp.asarray(
    [[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
)


def loss_fn(params, samples=None):
    rbm = BernoulliRBM(*params)
    if samples is not None:
        rbm = rbm.with_negative_samples(samples)
    return -jnp.mean(rbm.log_prob(DATA))


def exact_grad(rbm):
    # The model has 2**4 hidden states: log_prob is exactly normalized and differentiable.
    return jax.grad(loss_fn)((rbm.weights, rbm.visible_bias, rbm.hidden_bias))


def estimate(estimator, rbm, num_steps, seed=0):
    """Run the estimator's chains for num_steps updates at fixed parameters, return the
    gradient from the final samples and the per-sample gradients (for standard errors)."""
    key_init, key_run = jax.random.split(jax.random.key(seed))
    state = estimator.init(key_init, rbm, DATA)

    def body(state, key):
        samples, state, _ = estimator.step(key, state, rbm, DATA)
        return state, samples

    state, samples = jax.lax.scan(body, state, jax.random.split(key_run, num_steps))
    final = samples[-1]
    params = (rbm.weights, rbm.visible_bias, rbm.hidden_bias)
    grad = jax.grad(loss_fn)(params, final)
    per_sample = jax.vmap(lambda x: jax.grad(loss_fn)(params, x[None])[0])(final)
    return grad, per_sample, state


def zscores(grad, exact, per_sample):
    stderr = jnp.std(per_sample, axis=0) / jnp.sqrt(per_sample.shape[0])
    return (grad[0] - exact[0]) / jnp.maximum(stderr, 1e-6)


@pytest.mark.parametrize(
    "estimator",
    [PCD(num_chains=4000, num_sweeps=1), ParallelTempering(num_chains=2000, num_temperatures=4)],
    ids=["pcd", "pt"],
)
def test_gradient_matches_exact_within_monte_carlo_error(estimator):
    """After burn-in the chains are (nearly) independent exact draws, so each weight-gradient
    entry's error is about N(0, stderr^2); 5 standard errors bounds all 24 entries with a
    false-alarm probability near 1.4e-5."""
    rbm = make_rbm()
    exact = exact_grad(rbm)
    grad, per_sample, _ = estimate(estimator, rbm, num_steps=200)
    z = zscores(grad, exact, per_sample)
    assert jnp.max(jnp.abs(z)) < 5, z
    # The visible- and hidden-bias gradients agree as well (same argument).
    for g, e in zip(grad[1:], exact[1:], strict=True):
        np.testing.assert_allclose(g, e, atol=0.1)


def test_pcd_error_shrinks_like_one_over_sqrt_chains():
    """RMS error over the 24 weight entries at 250 and at 4000 chains: the ratio should be
    near sqrt(16) = 4. With 24 entries each RMS is known to about +/-15% (chi-square with ~24
    degrees of freedom), so [2.5, 6.5] is a wide band around 4."""
    rbm = make_rbm()
    exact = exact_grad(rbm)
    errs = []
    for n in (250, 4000):
        rms = []
        for seed in range(4):
            grad, _, _ = estimate(PCD(num_chains=n), rbm, num_steps=100, seed=seed)
            rms.append(jnp.sqrt(jnp.mean((grad[0] - exact[0]) ** 2)))
        errs.append(float(jnp.sqrt(jnp.mean(jnp.asarray(rms) ** 2))))
    ratio = errs[0] / errs[1]
    assert 2.5 < ratio < 6.5, (errs, ratio)


def test_cd1_is_biased_and_cd_k_is_not():
    """CD-1 chains start at the data and stay near it, so their gradient is biased: averaged
    over 4000 repetitions of the 4-example batch (16000 draws) its error is far beyond the
    Monte Carlo standard error. CD with 300 sweeps has forgotten the data and agrees within
    5 standard errors."""
    rbm = make_rbm(scale=2.0)
    exact = exact_grad(rbm)
    params = (rbm.weights, rbm.visible_bias, rbm.hidden_bias)
    data = jnp.tile(DATA, (4000, 1))

    def cd_grad(num_sweeps):
        cd = CD(num_sweeps=num_sweeps)
        state = cd.init(jax.random.key(0), rbm)
        samples, _, _ = cd.step(jax.random.key(1), state, rbm, data)
        grad = jax.grad(loss_fn)(params, samples)
        per = jax.vmap(lambda x: jax.grad(loss_fn)(params, x[None])[0])(samples)
        return zscores(grad, exact, per)

    assert jnp.max(jnp.abs(cd_grad(1))) > 10
    assert jnp.max(jnp.abs(cd_grad(300))) < 5


def test_parallel_tempering_replicas_match_tempered_distributions():
    """Every replica k holds draws from exp(-tempered_energy(x, beta_k)); chi-square test per
    temperature (p > 1e-3 each)."""
    rbm = make_rbm(scale=2.0)
    pt = ParallelTempering(num_chains=4000, betas=(1.0, 0.6, 0.3))
    _, _, state = estimate(pt, rbm, num_steps=150)
    states = all_states(rbm)
    for k, beta in enumerate(pt.betas):
        log_p = -rbm.tempered_energy(states, beta)
        probs = np.exp(np.asarray(log_p - jax.nn.logsumexp(log_p), np.float64))
        codes = state_codes(np.asarray(state.chains[k]), rbm.support_values)
        assert chi_square_pvalue(codes, probs) > 1e-3
    rates = ParallelTempering.swap_rates(state)
    assert rates.shape == (2,) and bool(jnp.all((rates > 0) & (rates <= 1)))


def test_estimators_validate_arguments():
    with pytest.raises(ValueError, match="num_chains"):
        PCD(num_chains=0)
    with pytest.raises(ValueError, match="num_sweeps"):
        CD(num_sweeps=0)
    with pytest.raises(ValueError, match="betas"):
        ParallelTempering(betas=(0.5, 0.2))
    with pytest.raises(ValueError, match="min_beta"):
        ParallelTempering(min_beta=1.5)
    rbm = make_rbm()
    with pytest.raises(ValueError, match="data must have shape"):
        CD().step(jax.random.key(0), CD().init(jax.random.key(0), rbm), rbm, jnp.ones(6))


def test_estimators_are_static_under_jit():
    rbm = make_rbm()
    pcd = PCD(num_chains=8)
    step = jax.jit(lambda k, s, d: pcd.step(k, s, d), static_argnums=())
    state = pcd.init(jax.random.key(0), rbm, DATA)
    samples, state, info = step(jax.random.key(1), state, rbm)
    assert samples.shape == (8, NUM_VISIBLE) and int(state.step) == 1
    assert hash(pcd) == hash(PCD(num_chains=8))
