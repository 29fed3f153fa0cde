"""Negative-phase estimators against the exact gradient of log Z on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes

from numpyro_ebm import BernoulliRBM, all_states
from numpyro_ebm.infer import (
    CD,
    PCD,
    GibbsTransition,
    HiddenGibbsTransition,
    ParallelTempering,
)

NUM_VISIBLE, NUM_HIDDEN = 6, 4


def make_rbm(scale=1.5, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return BernoulliRBM(
        scale * jax.random.normal(k1, (NUM_VISIBLE, NUM_HIDDEN)),
        0.3 * jax.random.normal(k2, (NUM_VISIBLE,)),
        0.3 * jax.random.normal(k3, (NUM_HIDDEN,)),
    )


DATA = jnp.asarray([[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])


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


def test_hidden_gibbs_transition_is_exactly_stationary():
    """The transition's chain state is (v, h); one step draws v ~ p(v | h), then
    h ~ p(h | v). Its transition matrix over all joint states, built from the model's
    conditionals at beta = 0.7 (in float64 NumPy), leaves the tempered joint exactly invariant
    (no Monte Carlo)."""
    rbm = BernoulliRBM(
        jnp.asarray([[1.2, -0.7], [0.4, 0.9], [-1.1, 0.3]]),
        jnp.asarray([0.2, -0.5, 0.1]),
        jnp.asarray([0.3, -0.2]),
    )
    beta = 0.7
    vs = np.asarray(all_states(BernoulliRBM(jnp.zeros((3, 1)))), np.float64)  # 8 x 3
    hs = np.asarray(all_states(BernoulliRBM(jnp.zeros((2, 1)))), np.float64)  # 4 x 2
    w, b, c = (np.asarray(p) for p in (rbm.weights, rbm.visible_bias, rbm.hidden_bias))

    def bern(x, logits):
        p = 1 / (1 + np.exp(-beta * logits))
        return np.prod(np.where(x == 1, p, 1 - p), -1)

    p_v_given_h = np.stack([bern(vs, b + w @ h) for h in hs])  # (h, v')
    p_h_given_v = np.stack([bern(hs, c + v @ w) for v in vs])  # (v', h')
    # T[(v, h), (v', h')] = p(v' | h) p(h' | v'), independent of v.
    t = np.einsum("hv,vk->hvk", p_v_given_h, p_h_given_v)  # (h, v', h')
    t = np.broadcast_to(t.reshape(4, 32)[None], (8, 4, 32)).reshape(32, 32)
    joint = np.exp(
        beta * (np.einsum("vi,ij,hj->vh", vs, w, hs) + (vs @ b)[:, None] + (hs @ c)[None, :])
    ).reshape(32)
    joint /= joint.sum()
    np.testing.assert_allclose(joint @ t, joint, rtol=1e-12, atol=1e-15)
    # The transition computes the same conditionals: one step from every (v, h) state, many
    # times, matches row (v, h) -> v' of T marginally (chi-square, p > 1e-3).
    from numpyro_ebm.infer import HiddenGibbsState

    tr = HiddenGibbsTransition()
    h0 = jnp.broadcast_to(jnp.asarray(hs[2]), (20000, 2))
    state = HiddenGibbsState(jnp.zeros((20000, 3)), h0)
    new = tr.step(jax.random.key(0), state, rbm, beta)
    codes = state_codes(np.asarray(new.visible), rbm.support_values)
    assert chi_square_pvalue(codes, p_v_given_h[2]) > 1e-3


def test_hidden_gibbs_transition_saves_a_matrix_product_under_fit():
    """A PCD-1 update with the carried hidden layer costs five matrix products (positive
    phase, v | h, h | v shared with the negative phase's free energy, two outer products):
    one fewer than GibbsTransition, counted in the compiled program of one epoch."""
    import re

    import optax

    from numpyro_ebm import train

    rbm = BernoulliRBM(0.01 * jax.random.normal(jax.random.key(0), (48, 24)))
    data = (jax.random.uniform(jax.random.key(1), (64, 48)) < 0.3).astype(jnp.float32)
    counts = {}
    for tr in (GibbsTransition(), HiddenGibbsTransition()):
        est = PCD(num_chains=16, transition=tr)
        param = train._parameterization(rbm)
        u = train._to_unconstrained(param, train._trainable(rbm))
        opt = optax.sgd(0.1)
        run_epoch, _ = train._make_epoch(param, est, opt, 16, 4, "")
        args = (
            u,
            opt.init(u),
            est.init(jax.random.key(2), rbm, data),
            rbm,
            data,
            jax.random.key(3),
        )
        hlo = run_epoch.lower(*args).compile().as_text()
        counts[type(tr).__name__] = len(re.findall(r"\bdot\(", hlo))
    assert counts == {"GibbsTransition": 6, "HiddenGibbsTransition": 5}, counts


def test_hidden_gibbs_transition_gradient_and_refusals():
    """PCD with the carried hidden layer: the same Monte Carlo check as the other estimators
    (5 standard errors over 24 entries); parallel tempering and other families refuse it."""
    rbm = make_rbm()
    exact = exact_grad(rbm)
    grad, per_sample, _ = estimate(
        PCD(num_chains=4000, transition=HiddenGibbsTransition()), rbm, num_steps=200
    )
    assert jnp.max(jnp.abs(zscores(grad, exact, per_sample))) < 5
    with pytest.raises(ValueError, match="cannot be exchanged"):
        ParallelTempering(transition=HiddenGibbsTransition())
    from numpyro_ebm import BoltzmannMachine

    bm = BoltzmannMachine(jnp.zeros((3, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match="BernoulliRBM chains only"):
        PCD(num_chains=2, transition=HiddenGibbsTransition()).init(jax.random.key(0), bm)
