"""GaussianBernoulliRBM: free energy, exact log Z against quadrature, conditionals, and the
block-Gibbs sampler against exact mixture moments (``v | h`` is Gaussian, ``p(h)`` is exact)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from numpyro_ebm import LogPartitionGradientError, exact_log_partition
from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM


def make_gbrbm(num_visible=3, num_hidden=2, seed=0, scale=1.0, batch=(), **kwargs):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    w = scale * jax.random.normal(k1, (*batch, num_visible, num_hidden))
    b = jax.random.normal(k2, (*batch, num_visible))
    c = 0.5 * jax.random.normal(k3, (*batch, num_hidden))
    sigma = jnp.exp(0.4 * jax.random.normal(k4, (*batch, num_visible)))
    return GaussianBernoulliRBM(w, b, c, sigma, **kwargs)


def params64(rbm):
    return tuple(
        np.asarray(a, np.float64)
        for a in (rbm.weights, rbm.visible_bias, rbm.hidden_bias, rbm.visible_scale)
    )


def np_free_energy(v, w, b, c, sigma):
    """F(v) written out in NumPy from the definition; v has shape (..., num_visible)."""
    pre = c + (v / sigma) @ w
    return np.sum((v - b) ** 2 / (2 * sigma**2), -1) - np.sum(np.logaddexp(0.0, pre), -1)


def exact_mixture(w, b, c, sigma):
    """p(h) (exact, by the Gaussian integral over v) and the means of v | h, for every h."""
    num_hidden = w.shape[1]
    h = np.array(list(itertools.product([0, 1], repeat=num_hidden)), np.float64)
    u = h @ w.T  # (H, num_visible)
    log_w = h @ c + np.sum(b / sigma * u + 0.5 * u**2, -1)
    p_h = np.exp(log_w - log_w.max())
    return p_h / p_h.sum(), b + sigma * u


def mixture_moments(w, b, c, sigma):
    p_h, means = exact_mixture(w, b, c, sigma)
    mean = p_h @ means
    centred = means - mean
    cov = np.diag(sigma**2) + (p_h[:, None] * centred).T @ centred
    return mean, cov


def hot_model(rbm, beta):
    """The tempered joint exp(-beta E(v, h)) is itself a GB-RBM (see the class Notes)."""
    return GaussianBernoulliRBM(
        np.sqrt(beta) * rbm.weights,
        rbm.visible_bias,
        beta * rbm.hidden_bias,
        rbm.visible_scale / np.sqrt(beta),
    )


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("num_visible, num_hidden", [(1, 3), (2, 2)])
def test_log_partition_matches_quadrature(x64, num_visible, num_hidden):
    rbm = make_gbrbm(num_visible, num_hidden, seed=1, scale=1.2)
    w, b, c, sigma = params64(rbm)
    # Box wide enough that the Gaussian tails beyond it are below 1e-25 of the mass: every
    # component mean lies within sigma * sum_j |W_ij| of b.
    half = sigma * (np.abs(w).sum(1) + 12.0)
    lo, hi = b - half, b + half
    if num_visible == 1:
        z, err = integrate.quad(
            lambda x: np.exp(-np_free_energy(np.array([x]), w, b, c, sigma)),
            lo[0],
            hi[0],
            epsabs=0,
            epsrel=1e-12,
            limit=200,
        )
    else:
        z, err = integrate.dblquad(
            lambda y, x: np.exp(-np_free_energy(np.array([x, y]), w, b, c, sigma)),
            lo[0],
            hi[0],
            lo[1],
            hi[1],
            epsabs=0,
            epsrel=1e-11,
        )
    assert err < 1e-9 * z
    np.testing.assert_allclose(exact_log_partition(rbm), np.log(z), rtol=0, atol=1e-9)
    np.testing.assert_allclose(rbm.log_partition, np.log(z), rtol=0, atol=1e-9)


def test_log_prob_integrates_to_one(x64):
    rbm = make_gbrbm(1, 3, seed=2, scale=1.5)
    assert rbm.is_normalized
    w, b, _, sigma = params64(rbm)
    half = sigma[0] * (np.abs(w).sum() + 12.0)
    grid = np.linspace(b[0] - half, b[0] + half, 40001)
    density = np.exp(np.asarray(rbm.log_prob(jnp.asarray(grid)[:, None])))
    assert abs(integrate.trapezoid(density, grid) - 1.0) < 1e-10


def test_free_energy_is_hidden_sum_of_joint_energy(x64):
    rbm = make_gbrbm(3, 3, seed=3)
    v = jax.random.normal(jax.random.key(0), (7, 3)) * 2.0
    h = jnp.asarray(list(itertools.product([0, 1], repeat=3)), jnp.float64)
    joint = -rbm.joint_energy(v[:, None, :], h[None, :, :])
    np.testing.assert_allclose(
        -rbm.free_energy(v), jax.nn.logsumexp(joint, axis=1), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(rbm.free_energy(v), np_free_energy(np.asarray(v), *params64(rbm)))
    np.testing.assert_allclose(rbm.energy(v), rbm.free_energy(v))


@pytest.mark.parametrize("beta", [0.3, 2.0])
def test_tempered_energy_is_free_energy_of_tempered_joint(x64, beta):
    rbm = make_gbrbm(3, 2, seed=4)
    v = 2.0 * jax.random.normal(jax.random.key(1), (6, 3))
    h = jnp.asarray(list(itertools.product([0, 1], repeat=2)), jnp.float64)
    tempered_joint = -beta * rbm.joint_energy(v[:, None, :], h[None, :, :])
    expected = -jax.nn.logsumexp(tempered_joint, axis=1)
    np.testing.assert_allclose(rbm.tempered_energy(v, beta), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hot_model(rbm, beta).free_energy(v), expected, rtol=1e-12)
    np.testing.assert_allclose(rbm.tempered_energy(v, 1.0), rbm.free_energy(v), rtol=1e-14)


def test_conditionals_match_joint(x64):
    rbm = make_gbrbm(3, 2, seed=5)
    v = jnp.asarray([0.3, -1.2, 2.0])
    h_all = jnp.asarray(list(itertools.product([0, 1], repeat=2)))
    log_joint = -rbm.joint_energy(v, h_all)
    np.testing.assert_allclose(
        rbm.hidden_conditional(v).log_prob(h_all),
        log_joint - jax.nn.logsumexp(log_joint),
        rtol=1e-12,
    )
    h = jnp.asarray([1.0, 0.0])
    cond = rbm.visible_conditional(h)
    assert cond.event_shape == (3,) and cond.batch_shape == ()
    w, b, _, sigma = params64(rbm)
    np.testing.assert_allclose(cond.mean, b + sigma * (w @ np.asarray(h)), rtol=1e-12)
    np.testing.assert_allclose(cond.variance, sigma**2, rtol=1e-12)
    # A normalized density whose log ratios are those of -E(., h).
    vs = 2.0 * jax.random.normal(jax.random.key(2), (5, 3))
    log_q = cond.log_prob(vs)
    np.testing.assert_allclose(
        log_q - log_q[0],
        -rbm.joint_energy(vs, h) + rbm.joint_energy(vs[0], h),
        rtol=1e-10,
        atol=1e-10,
    )


# ---------------------------------------------------------------------------- sampling
def _moment_tolerances(draws, mean, cov, num_sigma=5.0):
    """Check sample mean and covariance against exact values within ``num_sigma`` Monte Carlo
    standard errors (independent chains; the covariance standard error is the plug-in
    std of (v_i - m_i)(v_j - m_j) over sqrt(N)). 5 sigma: two-sided false-alarm rate about
    6e-7 per entry."""
    draws = np.asarray(draws, np.float64)
    n = draws.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(draws.mean(0) - mean) < num_sigma * se_mean), (draws.mean(0), mean)
    centred = draws - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / np.sqrt(n)
    assert np.all(np.abs(products.mean(0) - cov) < num_sigma * se_cov), (products.mean(0), cov)


def test_sample_moments_and_projection_match_exact_mixture():
    rbm = make_gbrbm(3, 2, seed=6, scale=1.0, num_sweeps=100)
    draws = rbm.sample(jax.random.key(0), (4000,))
    assert draws.shape == (4000, 3) and draws.dtype == jnp.float32
    w, b, c, sigma = params64(rbm)
    mean, cov = mixture_moments(w, b, c, sigma)
    _moment_tolerances(draws, mean, cov)
    # Kolmogorov-Smirnov test of a 1-D projection against the exact mixture CDF; under the
    # null the p-value is uniform, so p < 1e-3 fails with probability 1e-3.
    p_h, means = exact_mixture(w, b, c, sigma)
    proj = np.array([1.0, -1.0, 0.5])
    s = np.sqrt(np.sum(proj**2 * sigma**2))
    centres = means @ proj

    def cdf(y):
        return stats.norm.cdf((np.asarray(y)[:, None] - centres) / s) @ p_h

    assert stats.kstest(np.asarray(draws, np.float64) @ proj, cdf).pvalue > 1e-3


def test_tempered_sweeps_match_tempered_joint_batched():
    """Different beta per batch member; the tempered joint is the GB-RBM ``hot_model``."""
    rbm = make_gbrbm(2, 3, seed=7, scale=1.0, batch=(2,))
    betas = jnp.asarray([1.0, 0.4])
    x0 = rbm.random_state(jax.random.key(0), (4000,))
    assert x0.shape == (4000, 2, 2)

    @jax.jit
    def run(key, x):
        def body(x, k):
            return rbm.gibbs_sweep(k, x, betas), None

        return jax.lax.scan(body, x, jax.random.split(key, 150))[0]

    draws = np.asarray(run(jax.random.key(1), x0), np.float64)
    for i, beta in enumerate([1.0, 0.4]):
        hot = hot_model(
            GaussianBernoulliRBM(*(np.asarray(a, np.float64)[i] for a in params64(rbm))), beta
        )
        mean, cov = mixture_moments(*params64(hot))
        _moment_tolerances(draws[:, i], mean, cov)
        # KS on the first coordinate against the exact tempered marginal (p > 1e-3, as above).
        p_h, means = exact_mixture(*params64(hot))
        s = float(hot.visible_scale[0])

        def cdf(y, p_h=p_h, centres=means[:, 0], s=s):
            return stats.norm.cdf((np.asarray(y)[:, None] - centres) / s) @ p_h

        assert stats.kstest(draws[:, i, 0], cdf).pvalue > 1e-3


# ---------------------------------------------------------------------------- shapes, checks
def test_batch_shape_matches_unbatched_models():
    rbm = make_gbrbm(3, 2, seed=8, batch=(2,))
    assert rbm.batch_shape == (2,) and rbm.event_shape == (3,)
    shapes = {
        k: jnp.shape(getattr(rbm, k))
        for k in ("weights", "visible_bias", "hidden_bias", "visible_scale")
    }
    assert GaussianBernoulliRBM.infer_shapes(**shapes) == ((2,), (3,))
    assert GaussianBernoulliRBM.infer_shapes(weights=(3, 2), visible_scale=()) == ((), (3,))
    v = jax.random.normal(jax.random.key(0), (5, 2, 3))
    log_p = rbm.log_prob(v)
    assert log_p.shape == (5, 2)
    for i in range(2):
        single = GaussianBernoulliRBM(
            rbm.weights[i], rbm.visible_bias[i], rbm.hidden_bias[i], rbm.visible_scale[i]
        )
        np.testing.assert_allclose(log_p[:, i], single.log_prob(v[:, i]), rtol=1e-5)
    assert rbm.log_prob(v[0, 0]).shape == (2,)  # value broadcasts against batch_shape


def test_scalar_scale_dtypes_and_support():
    rbm = GaussianBernoulliRBM(0.3 * jnp.ones((4, 2)), visible_scale=0.5)
    assert rbm.visible_scale.shape == (4,)
    assert not rbm.is_discrete and not rbm.has_enumerate_support
    assert rbm.support is not None and rbm.support.event_dim == 1
    assert rbm.sample_dtype == jnp.float32
    assert rbm.log_prob(jnp.ones(4)).dtype == jnp.float32
    with pytest.raises(NotImplementedError):
        rbm.enumerate_support()


def test_float64_end_to_end(x64):
    rbm = make_gbrbm(3, 2)
    assert rbm.weights.dtype == jnp.float64
    draws = rbm.sample(jax.random.key(0), (5,))
    assert draws.shape == (5, 3) and draws.dtype == jnp.float64
    assert rbm.log_prob(draws).dtype == jnp.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"visible_scale": 0.0}, "visible_scale"),
        ({"visible_scale": -jnp.ones(3)}, "visible_scale"),
        ({"visible_scale": jnp.ones(2)}, "visible_scale"),
        ({"visible_scale": jnp.asarray([1.0, jnp.nan, 1.0])}, "visible_scale"),
        ({"visible_bias": jnp.zeros(2)}, "visible_bias"),
        ({"hidden_bias": jnp.zeros((3, 3))}, "hidden_bias"),
        ({"weights": jnp.zeros(3)}, "weights"),
        ({"weights": jnp.full((3, 2), jnp.nan)}, "weights"),
        ({"visible_bias": jnp.zeros((4, 3))}, "batch shapes"),
        ({"num_sweeps": -1}, "num_sweeps"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    args = {"weights": jnp.zeros((3, 2)), "hidden_bias": jnp.zeros((2, 2))} | kwargs
    with pytest.raises(ValueError, match=match):
        GaussianBernoulliRBM(**args)


def test_bad_values_raise():
    rbm = make_gbrbm(3, 2)
    with pytest.raises(ValueError, match="non-finite"):
        rbm.log_prob(jnp.asarray([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        rbm.unnormalized_log_prob(jnp.asarray([[0.0, jnp.inf, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        rbm.log_prob(jnp.zeros(4))
    # validate_args=False skips the value checks: NaN propagates.
    lax_rbm = GaussianBernoulliRBM(rbm.weights, validate_args=False)
    assert np.isnan(lax_rbm.log_prob(jnp.asarray([0.0, jnp.nan, 1.0])))


# ---------------------------------------------------------------------------- JAX transforms
def test_jit_vmap_scan_round_trip():
    rbm = make_gbrbm(3, 2, seed=9, batch=(2,))
    v = jax.random.normal(jax.random.key(0), (4, 2, 3))
    expected = rbm.log_prob(v)
    np.testing.assert_allclose(jax.jit(lambda d, x: d.log_prob(x))(rbm, v), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(rbm.log_prob)(v), expected, rtol=1e-6)

    def body(d, _):
        return d, d.log_prob(v)

    carried, out = jax.lax.scan(body, rbm, None, length=2)
    assert isinstance(carried, GaussianBernoulliRBM) and carried.batch_shape == (2,)
    np.testing.assert_allclose(out[1], expected, rtol=1e-6)
    np.testing.assert_allclose(carried.visible_scale, rbm.visible_scale)
    sweep = jax.jit(lambda d, k, x: d.gibbs_sweep(k, x, 0.5))
    assert sweep(rbm, jax.random.key(1), v).shape == v.shape


def test_gradient_exact_when_enumerable_and_guarded_otherwise(x64):
    rbm = make_gbrbm(2, 3, seed=10)
    v = jax.random.normal(jax.random.key(0), (6, 2))

    @jax.jit
    def loss(w):
        return jnp.mean(
            GaussianBernoulliRBM(w, rbm.visible_bias, rbm.hidden_bias, rbm.visible_scale).log_prob(
                v
            )
        )

    grad = jax.grad(loss)(rbm.weights)
    eps = 1e-6
    for idx in [(0, 0), (1, 2)]:
        bump = jnp.zeros_like(rbm.weights).at[idx].set(eps)
        fd = (loss(rbm.weights + bump) - loss(rbm.weights - bump)) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-6, atol=1e-9)

    big = GaussianBernoulliRBM(0.1 * jnp.ones((2, 13)))  # 2**13 hidden states: not automatic
    assert not big.is_normalized

    def big_loss(w):
        return GaussianBernoulliRBM(w).log_prob(v).sum()

    with pytest.raises(LogPartitionGradientError):
        jax.grad(big_loss)(big.weights)
    # Gradients with respect to the data are fine (a score for HMC over v).
    assert jax.grad(lambda x: big.log_prob(x).sum())(v).shape == v.shape
