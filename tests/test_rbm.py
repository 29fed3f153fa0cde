"""BernoulliRBM: energies, conditionals, exact normalization and block-Gibbs exactness."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes, stationary_defect

from numpyro_ebm import BernoulliRBM, all_states, exact_log_partition, exact_marginals
from numpyro_ebm.infer import gibbs


def make_rbm(num_visible=4, num_hidden=3, seed=0, scale=1.0, batch=()):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w = scale * jax.random.normal(k1, batch + (num_visible, num_hidden))
    b = 0.5 * jax.random.normal(k2, batch + (num_visible,))
    c = 0.5 * jax.random.normal(k3, batch + (num_hidden,))
    return BernoulliRBM(w, b, c)


def brute_force_log_z(rbm):
    """Sum exp(-E(v, h)) over every joint state with NumPy in float64."""
    w, b, c = (np.asarray(a, np.float64) for a in (rbm.weights, rbm.visible_bias, rbm.hidden_bias))
    terms = []
    for v in itertools.product([0, 1], repeat=rbm.num_visible):
        for h in itertools.product([0, 1], repeat=rbm.num_hidden):
            v_, h_ = np.array(v), np.array(h)
            terms.append(v_ @ w @ h_ + b @ v_ + c @ h_)
    terms = np.array(terms)
    return terms.max() + np.log(np.exp(terms - terms.max()).sum())


@pytest.mark.parametrize("shape", [(4, 3), (3, 5)])
def test_log_partition_matches_brute_force(x64, shape):
    # (4, 3) enumerates the hidden layer, (3, 5) the visible one.
    rbm = make_rbm(*shape, scale=1.5)
    np.testing.assert_allclose(exact_log_partition(rbm), brute_force_log_z(rbm), rtol=1e-12)


def test_free_energy_is_hidden_sum_of_joint_energy(x64):
    rbm = make_rbm(4, 3)
    v = all_states(rbm)
    h = jnp.asarray(list(itertools.product([0, 1], repeat=3)), jnp.float64)
    joint = -rbm.joint_energy(v[:, None, :], h[None, :, :])
    np.testing.assert_allclose(
        -rbm.free_energy(v), jax.nn.logsumexp(joint, axis=1), rtol=1e-12, atol=1e-12
    )


def test_log_prob_normalized_and_marginals(x64):
    rbm = make_rbm(4, 3)
    v = all_states(rbm)
    log_p = rbm.log_prob(v)
    assert abs(float(jax.nn.logsumexp(log_p))) < 1e-12
    p = jnp.exp(log_p)
    np.testing.assert_allclose(exact_marginals(rbm)[:, 1], p @ v, rtol=1e-12)


def test_conditionals_match_joint(x64):
    rbm = make_rbm(3, 2)
    v = jnp.asarray([1, 0, 1])
    h_all = jnp.asarray(list(itertools.product([0, 1], repeat=2)))
    # p(h | v) ∝ exp(-E(v, h))
    log_joint = -rbm.joint_energy(v, h_all)
    expected = log_joint - jax.nn.logsumexp(log_joint)
    np.testing.assert_allclose(rbm.hidden_conditional(v).log_prob(h_all), expected, rtol=1e-12)
    v_all = all_states(rbm)
    h = jnp.asarray([0, 1])
    log_joint = -rbm.joint_energy(v_all, h)
    expected = log_joint - jax.nn.logsumexp(log_joint)
    np.testing.assert_allclose(rbm.visible_conditional(h).log_prob(v_all), expected, rtol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_block_gibbs_transition_matrix_is_stationary(x64, beta):
    """T(v, v') = sum_h p_beta(h | v) p_beta(v' | h), built from the conditionals the sweep
    uses; pi_beta must be exactly stationary (float64 round-off only)."""
    rbm = make_rbm(4, 3, scale=1.5)
    hot = BernoulliRBM(beta * rbm.weights, beta * rbm.visible_bias, beta * rbm.hidden_bias)
    v = all_states(rbm)
    h = jnp.asarray(list(itertools.product([0, 1], repeat=3)))
    p_h_given_v = jnp.exp(hot.hidden_conditional(v[:, None, :]).log_prob(h[None]))  # (V, H)
    p_v_given_h = jnp.exp(hot.visible_conditional(h[:, None, :]).log_prob(v[None]))  # (H, V)
    transition = p_h_given_v @ p_v_given_h
    log_pi = -rbm.tempered_energy(v, beta)
    pi = jnp.exp(log_pi - jax.nn.logsumexp(log_pi))
    assert stationary_defect(pi, transition) < 1e-12
    # The tempered marginal is the visible marginal of the tempered joint.
    np.testing.assert_allclose(-hot.free_energy(v), log_pi, rtol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gibbs_chains_match_exact_distribution(beta):
    """Chi-square goodness of fit of 4000 independent chains after 30 sweeps against the exact
    (tempered) distribution; under the null the p-value is uniform, so p < 1e-3 fails with
    probability 1e-3."""
    rbm = make_rbm(4, 3, scale=1.0, seed=3)
    num_chains = 4000
    state = gibbs.init(rbm, rbm.random_state(jax.random.key(1), (num_chains,)))
    run = jax.jit(lambda k, s: gibbs.kernel(k, s, rbm, beta=beta, num_sweeps=30))
    state, _ = run(jax.random.key(2), state)
    v = all_states(rbm)
    log_pi = -rbm.tempered_energy(v, beta)
    probs = np.exp(np.asarray(log_pi - jax.nn.logsumexp(log_pi), np.float64))
    codes = state_codes(np.asarray(state.position), rbm.support_values)
    assert chi_square_pvalue(codes, probs) > 1e-3


def test_sample_matches_exact_distribution_batched():
    rbm = make_rbm(3, 4, batch=(2,), seed=5)
    draws = BernoulliRBM(
        rbm.weights, rbm.visible_bias, rbm.hidden_bias, num_sweeps=40
    ).sample(jax.random.key(0), (3000,))
    assert draws.shape == (3000, 2, 3) and draws.dtype == jnp.int32
    v = all_states(rbm)
    log_p = rbm.log_prob(v[:, None, :])  # (8, 2), exact for this tiny model
    for i in range(2):
        codes = state_codes(np.asarray(draws[:, i]), rbm.support_values)
        probs = np.exp(np.asarray(log_p[:, i], np.float64))
        # Same p-value threshold as above (1e-3 false-alarm rate per batch member).
        assert chi_square_pvalue(codes, probs) > 1e-3


def test_float32_default_and_float64():
    rbm = make_rbm()
    assert rbm.weights.dtype == jnp.float32
    assert rbm.log_prob(jnp.ones(4)).dtype == jnp.float32


def test_float64_end_to_end(x64):
    rbm = make_rbm()
    assert rbm.weights.dtype == jnp.float64
    draws = rbm.sample(jax.random.key(0), (5,))
    assert draws.shape == (5, 4)
    assert rbm.log_prob(draws).dtype == jnp.float64


def test_large_rbm_shapes_without_enumeration():
    rbm = BernoulliRBM(0.01 * jnp.ones((784, 500)))
    assert not rbm.is_normalized and rbm.log_partition is None
    v = jnp.zeros((1000, 784))
    state = gibbs.init(rbm, v)
    state, info = jax.jit(lambda k, s: gibbs.kernel(k, s, rbm))(jax.random.key(0), state)
    assert state.position.shape == (1000, 784) and info.energy.shape == (1000,)
    assert bool(jnp.all(jnp.isfinite(info.energy)))


def test_exact_log_partition_of_wide_rbm_is_chunked(x64):
    """784 visible x 16 hidden: 2**16 hidden states, 4 chunks of 2**14; compare with one
    unchunked logsumexp."""
    rbm = make_rbm(784, 16, scale=0.05)
    h = jnp.asarray(list(itertools.product([0, 1], repeat=16)), jnp.float64)
    direct = jax.nn.logsumexp(
        h @ rbm.hidden_bias
        + jnp.sum(jax.nn.softplus(rbm.visible_bias + h @ rbm.weights.T), -1)
    )
    np.testing.assert_allclose(exact_log_partition(rbm), direct, rtol=1e-12)
    np.testing.assert_allclose(
        exact_log_partition(rbm, chunk_size=2**10), direct, rtol=1e-12
    )


def test_softplus_value_and_derivative_match_jax_everywhere_including_zero():
    """The fast softplus equals jax.nn.softplus, and so does its derivative (sigmoid), also
    at exactly 0, where the max/abs formula alone has a kink in each term (free-energy
    gradients at zero pre-activations, e.g. zero biases at initialization, rely on it)."""
    from numpyro_ebm.distributions.base import softplus

    x = jnp.asarray([-40.0, -3.0, -1e-7, 0.0, 1e-7, 2.0, 40.0])
    np.testing.assert_allclose(softplus(x), jax.nn.softplus(x), rtol=1e-6, atol=1e-12)
    grad = jax.vmap(jax.grad(softplus))(x)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(x), rtol=1e-6, atol=1e-12)
    assert float(jax.grad(softplus)(0.0)) == 0.5
    second = jax.vmap(jax.grad(jax.grad(softplus)))(x)
    np.testing.assert_allclose(second, jax.vmap(jax.grad(jax.nn.sigmoid))(x), atol=1e-7)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_threefry2x32_is_jax_threefry_bit_for_bit(shape):
    """The samplers' elementwise Threefry-2x32 (fused by XLA into its consumer) must be the
    hash behind jax.random exactly, so the uniforms the exactness tests validate are the
    ones JAX's primitive gives: compare every output word on several keys and counters,
    including the largest counter and keys with every bit set."""
    from jax.extend.random import threefry2x32_p

    from numpyro_ebm.distributions.rbm import threefry2x32

    rng = np.random.default_rng(0)
    size = int(np.prod(shape))
    for key0, key1 in [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (12345, 678910)]:
        x0 = rng.integers(0, 2**32, size, dtype=np.uint32).reshape(shape)
        x1 = np.arange(size, dtype=np.uint32).reshape(shape)
        x1.flat[-1] = 0xFFFFFFFF
        args = (jnp.uint32(key0), jnp.uint32(key1), jnp.asarray(x0), jnp.asarray(x1))
        ours = jax.jit(threefry2x32)(*args)
        theirs = threefry2x32_p.bind(*args)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
