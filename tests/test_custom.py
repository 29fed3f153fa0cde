"""EnergyDistribution: user energies, exact enumeration, the single-unit Gibbs scan (discrete)
and Metropolis-adjusted Langevin (continuous) against exact references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes, stationary_defect
from scipy import integrate, stats

from numpyro_ebm import (
    LogPartitionGradientError,
    all_states,
    exact_log_partition,
    exact_marginals,
)
from numpyro_ebm.distributions.custom import EnergyDistribution, FiniteValues


def boltzmann_energy(x, params):
    """A Boltzmann machine over any unit values, written by hand: -x.J.x/2 - h.x."""
    x = x.reshape(-1)
    return -0.5 * x @ params["couplings"] @ x - params["fields"] @ x


def random_params(num_units, seed=0, scale=1.0, batch=()):
    rng = np.random.default_rng(seed)
    j = scale * rng.normal(size=(*batch, num_units, num_units))
    j = np.triu(j, 1)
    j = j + np.swapaxes(j, -1, -2)
    return {
        "couplings": jnp.asarray(j),
        "fields": jnp.asarray(0.5 * rng.normal(size=(*batch, num_units))),
    }


def make_model(support_values=(0, 1), event_shape=(4,), seed=0, scale=1.0, **kwargs):
    params = random_params(int(np.prod(event_shape)), seed, scale)
    return EnergyDistribution(
        boltzmann_energy, event_shape, support_values=support_values, params=params, **kwargs
    )


def numpy_log_weights(params, support_values, num_units, beta=1.0):
    """-beta E(x) for every state, in itertools.product order, with NumPy in float64."""
    j = np.asarray(params["couplings"], np.float64)
    h = np.asarray(params["fields"], np.float64)
    x = np.array(list(itertools.product(support_values, repeat=num_units)), np.float64)
    return beta * (0.5 * np.einsum("si,ij,sj->s", x, j, x) + x @ h)


def normalized(log_w):
    p = np.exp(log_w - log_w.max())
    return p / p.sum()


# ---------------------------------------------------------------------------- discrete exactness
@pytest.mark.parametrize(
    "support_values, event_shape", [((0, 1), (4,)), ((-1, 1), (2, 2)), ((0, 1, 2), (3,))]
)
def test_exact_log_partition_matches_numpy_enumeration(x64, support_values, event_shape):
    model = make_model(support_values, event_shape, seed=1, scale=0.7)
    n = int(np.prod(event_shape))
    log_w = numpy_log_weights(model.params, support_values, n)
    log_z = log_w.max() + np.log(np.exp(log_w - log_w.max()).sum())
    np.testing.assert_allclose(exact_log_partition(model), log_z, rtol=1e-12)
    assert model.is_normalized
    states = all_states(model)
    log_p = model.log_prob(states)
    assert abs(float(jax.nn.logsumexp(log_p))) < 1e-12
    np.testing.assert_allclose(log_p, log_w - log_z, rtol=1e-10, atol=1e-12)
    # One-unit marginals against the enumerated probabilities.
    p = normalized(log_w)
    flat = np.asarray(states).reshape(len(states), -1)
    for k, value in enumerate(support_values):
        expected = p @ (flat == value)
        np.testing.assert_allclose(
            exact_marginals(model)[..., k].reshape(-1), expected, rtol=1e-10, atol=1e-14
        )


def transition_matrix(model, beta):
    """The sweep's kernel, built exactly: T = T_0 T_1 ... T_{n-1}, where T_i resamples unit i
    from ``unit_conditional`` (the conditional the sweep draws from), units in the sweep's
    order (flattened event order)."""
    states = all_states(model)
    num_states = states.shape[0]
    num_values = len(model.support_values)
    n = model.num_units
    codes = np.arange(num_states)
    digits = np.asarray(state_codes(np.asarray(states), model.support_values))
    assert np.array_equal(digits, codes)
    flat_digits = (codes[:, None] // num_values ** np.arange(n - 1, -1, -1)) % num_values
    transition = np.eye(num_states)
    for i in range(n):
        probs = np.asarray(model.unit_conditional(states, i, beta), np.float64)  # (S, K)
        t_i = np.zeros((num_states, num_states))
        for k in range(num_values):
            target = codes + (k - flat_digits[:, i]) * num_values ** (n - 1 - i)
            t_i[codes, target] += probs[:, k]
        transition = transition @ t_i
    return transition


@pytest.mark.parametrize(
    "support_values, event_shape, beta", [((0, 1), (4,), 1.0), ((0, 1, 2), (2, 2), 0.6)]
)
def test_gibbs_scan_is_exactly_stationary(x64, support_values, event_shape, beta):
    model = make_model(support_values, event_shape, seed=2, scale=0.8)
    n = model.num_units
    pi = normalized(numpy_log_weights(model.params, support_values, n, beta))
    transition = transition_matrix(model, beta)
    assert stationary_defect(pi, transition) < 1e-12
    # The conditionals themselves, against the enumerated joint: p(x_i = s | rest) for unit 1.
    states = np.asarray(all_states(model)).reshape(-1, n)
    probs = np.asarray(model.unit_conditional(all_states(model), 1, beta))
    for row in (0, 7, len(states) - 1):
        same = np.all(np.delete(states, 1, axis=1) == np.delete(states[row], 1), axis=1)
        expected = pi[same] / pi[same].sum()  # ordered by the value of unit 1
        np.testing.assert_allclose(probs[row], expected, rtol=1e-12)


def test_unit_conditional_reflects_beta(x64):
    """A kernel built at the wrong temperature must fail the stationarity check."""
    model = make_model((0, 1), (3,), seed=3, scale=1.5)
    pi_half = normalized(numpy_log_weights(model.params, (0, 1), 3, 0.5))
    assert stationary_defect(pi_half, transition_matrix(model, 1.0)) > 1e-3
    assert stationary_defect(pi_half, transition_matrix(model, 0.5)) < 1e-12


@pytest.mark.parametrize(
    "support_values, event_shape, beta", [((0, 1), (4,), 1.0), ((0, 1, 2), (2, 2), 0.5)]
)
def test_gibbs_chains_match_exact_distribution(support_values, event_shape, beta):
    """Chi-square goodness of fit of 4000 independent chains after 25 sweeps against the
    exact distribution at ``beta``; under the null the p-value is uniform, so p < 1e-3 fails
    with probability 1e-3."""
    model = make_model(support_values, event_shape, seed=4, scale=0.8)
    x0 = model.random_state(jax.random.key(0), (4000,))

    @jax.jit
    def run(key, x):
        def body(x, k):
            return model.gibbs_sweep(k, x, beta), None

        return jax.lax.scan(body, x, jax.random.split(key, 25))[0]

    draws = np.asarray(run(jax.random.key(1), x0))
    probs = normalized(numpy_log_weights(model.params, support_values, model.num_units, beta))
    codes = state_codes(draws, support_values)
    assert chi_square_pvalue(codes, probs) > 1e-3


def test_batched_discrete_model_matches_members():
    params = random_params(3, seed=5, scale=1.0, batch=(2,))
    model = EnergyDistribution(
        boltzmann_energy,
        (3,),
        support_values=(-1, 1),
        params=params,
        batch_shape=(2,),
        num_sweeps=25,
    )
    assert model.batch_shape == (2,) and model.event_shape == (3,)
    states = all_states(model)
    log_p = model.log_prob(states[:, None, :])
    assert log_p.shape == (8, 2)
    draws = model.sample(jax.random.key(0), (3000,))
    assert draws.shape == (3000, 2, 3) and draws.dtype == jnp.int32
    for i in range(2):
        member = {k: v[i] for k, v in params.items()}
        log_w = numpy_log_weights(member, (-1, 1), 3)
        np.testing.assert_allclose(np.exp(log_p[:, i]), normalized(log_w), rtol=1e-5)
        codes = state_codes(np.asarray(draws[:, i]), (-1, 1))
        # Same chi-square threshold as above (1e-3 false-alarm rate per batch member).
        assert chi_square_pvalue(codes, normalized(log_w)) > 1e-3


def test_discrete_gradient_is_exact(x64):
    """Small discrete models are normalized exactly, so jax.grad of log_prob with respect to
    params is the full likelihood gradient (positive minus negative phase)."""
    params = random_params(3, seed=6)
    data = jnp.asarray([[1, 0, 1], [0, 0, 1], [1, 1, 1]])
    all_x = jnp.asarray(list(itertools.product([0, 1], repeat=3)), jnp.float64)

    def loss(p):
        model = EnergyDistribution(boltzmann_energy, (3,), support_values=(0, 1), params=p)
        return jnp.mean(model.log_prob(data))

    def hand_loss(p):
        energies = jax.vmap(lambda x: boltzmann_energy(x, p))
        log_z = jax.nn.logsumexp(-energies(all_x))
        return jnp.mean(-energies(data.astype(jnp.float64))) - log_z

    grad, expected = jax.grad(loss)(params), jax.grad(hand_loss)(params)
    for key in params:
        np.testing.assert_allclose(grad[key], expected[key], rtol=1e-12, atol=1e-14)


def test_support_constraint_and_enumerate_support():
    model = make_model((0, 1, 2), (2, 2))
    support = model.support
    assert isinstance(support, FiniteValues) and support.is_discrete and support.event_dim == 2
    x = jnp.asarray([[[0, 1], [2, 2]], [[0, 3], [1, 1]]])
    assert support(x).tolist() == [True, False]
    assert support(np.asarray(x)).tolist() == [True, False]
    assert bool(support(support.feasible_like(jnp.zeros((2, 2)))))
    assert model.has_enumerate_support and model.is_discrete
    values = model.enumerate_support()
    assert values.shape == (3, 2, 2) and values.dtype == jnp.int32
    assert model.enumerate_support(expand=False).shape == (3, 1, 1)
    assert support == FiniteValues((0, 1, 2), 2) and support != FiniteValues((0, 1), 2)
    # Sorted on the way in; non-integer values give float samples.
    halves = EnergyDistribution(lambda x: jnp.sum(x), (2,), support_values=(1.5, -0.5))
    assert halves.support_values == (-0.5, 1.5)
    assert halves.sample_dtype == jnp.float32
    assert halves.sample(jax.random.key(0), (3,)).dtype == jnp.float32


# ---------------------------------------------------------------------------- continuous
PRECISION = np.array([[2.0, 0.6], [0.6, 1.0]])


def gaussian_energy(x, precision):
    return 0.5 * x @ precision @ x


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_langevin_gaussian_moments(beta):
    """4000 independent chains, 300 MALA steps; mean within 5 standard errors of 0 and second
    moments E[x_i x_j] within 5 standard errors of Sigma_ij = (A^{-1} / beta)_ij, the standard
    error of x_i x_j being sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / N) for a Gaussian (Isserlis).
    5 sigma: a false-alarm rate of about 6e-7 per entry."""
    model = EnergyDistribution(
        gaussian_energy, (2,), params=jnp.asarray(PRECISION, jnp.float32), step_size=0.6
    )
    x0 = model.random_state(jax.random.key(0), (4000,))

    @jax.jit
    def run(key, x):
        def body(x, k):
            x, accept = model.langevin_step(k, x, beta)
            return x, accept.mean()

        return jax.lax.scan(body, x, jax.random.split(key, 300))

    draws, accept = run(jax.random.key(1), x0)
    draws = np.asarray(draws, np.float64)
    assert 0.5 < float(accept.mean()) < 1.0
    n = draws.shape[0]
    sigma = np.linalg.inv(PRECISION) / beta
    assert np.all(np.abs(draws.mean(0)) < 5 * np.sqrt(np.diag(sigma) / n))
    second = draws.T @ draws / n
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
    assert np.all(np.abs(second - sigma) < 5 * se), (second, sigma)


def double_well(x, params):
    return params["depth"] * jnp.sum((x**2 - 1.0) ** 2) + params["tilt"] * jnp.sum(x)


def test_langevin_double_well_matches_quadrature(x64):
    params = {"depth": jnp.asarray(1.0), "tilt": jnp.asarray(0.4)}
    # A quartic energy is where MALA is not geometrically ergodic: with step_size=0.5 the
    # few chains that start near |x| = 3.7 (the largest of 4000 normal draws) overshoot and are
    # never accepted again, and this test fails; 0.2 keeps them moving.
    model = EnergyDistribution(double_well, (1,), params=params, step_size=0.2, num_sweeps=600)
    draws = np.asarray(model.sample(jax.random.key(0), (4000,)))[:, 0]

    def density(x):
        return np.exp(-((x**2 - 1.0) ** 2) - 0.4 * x)

    z = integrate.quad(density, -np.inf, np.inf)[0]
    mean = integrate.quad(lambda x: x * density(x), -np.inf, np.inf)[0] / z
    var = integrate.quad(lambda x: (x - mean) ** 2 * density(x), -np.inf, np.inf)[0] / z
    n = draws.size
    # Mean within 5 standard errors (exact variance); variance within 5 plug-in standard
    # errors of the squared deviations (false-alarm rate about 6e-7 each).
    assert abs(draws.mean() - mean) < 5 * np.sqrt(var / n)
    sq = (draws - mean) ** 2
    assert abs(sq.mean() - var) < 5 * sq.std() / np.sqrt(n)

    # Kolmogorov-Smirnov against the quadrature CDF: p < 1e-3 fails with probability 1e-3.
    def cdf(x):
        return np.array([integrate.quad(density, -np.inf, xi)[0] / z for xi in np.atleast_1d(x)])

    grid = np.linspace(-4, 4, 801)
    table = cdf(grid)
    assert stats.kstest(draws, lambda x: np.interp(x, grid, table)).pvalue > 1e-3


def test_langevin_small_steps_are_accepted_and_state_is_float():
    model = EnergyDistribution(gaussian_energy, (2,), params=jnp.eye(2), step_size=1e-3)
    assert not model.is_discrete and not model.has_enumerate_support
    assert model.support.event_dim == 1 and not model.support.is_discrete
    x = model.random_state(jax.random.key(0), (10,))
    new, accept = model.langevin_step(jax.random.key(1), x)
    assert new.shape == x.shape and accept.shape == (10,)
    assert float(accept.min()) > 0.99
    assert model.sample_dtype == jnp.float32
    with pytest.raises(NotImplementedError):
        model.enumerate_support()
    with pytest.raises(NotImplementedError):
        exact_log_partition(model)
    assert not model.is_normalized and model.log_partition is None


def test_continuous_gradient_is_guarded():
    x = jnp.asarray([[0.1, 0.2], [-0.3, 0.5]])

    def loss(precision, log_partition=None):
        model = EnergyDistribution(
            gaussian_energy, (2,), params=precision, log_partition=log_partition
        )
        return model.log_prob(x).sum()

    with pytest.raises(LogPartitionGradientError):
        jax.grad(loss)(jnp.eye(2))
    with pytest.raises(LogPartitionGradientError):  # an attached value has no gradient either
        jax.grad(loss)(jnp.eye(2), jnp.log(2 * jnp.pi))
    # Held fixed, the parameters are fine; the score with respect to x is available.
    assert jnp.isfinite(jax.grad(lambda p: loss(jax.lax.stop_gradient(p)))(jnp.eye(2))).all()
    model = EnergyDistribution(gaussian_energy, (2,), params=jnp.eye(2))
    np.testing.assert_allclose(jax.grad(lambda v: model.log_prob(v).sum())(x), -x)


# ---------------------------------------------------------------------------- checks, pytrees
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"energy_fn": 3.0}, "energy_fn"),
        ({"event_shape": (0,)}, "event_shape"),
        ({"event_shape": (2.5,)}, "event_shape"),
        ({"event_shape": "x"}, "event_shape"),
        ({"support_values": (1,)}, "support_values"),
        ({"support_values": (0, 0)}, "support_values"),
        ({"support_values": ("a", "b")}, "support_values"),
        ({"support_values": (0, float("nan"))}, "support_values"),
        ({"support_values": (0, 1), "step_size": 0.1}, "step_size"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": jnp.ones(3)}, "step_size"),
        ({"params": jnp.full((2, 2), jnp.nan)}, "params"),
        ({"params": jnp.eye(2), "batch_shape": (3,)}, "params"),
        ({"batch_shape": (-1,)}, "batch_shape"),
        ({"energy_fn": lambda x, p: x}, "scalar"),
        ({"energy_fn": lambda x: jnp.sum(x)}, "energy_fn"),
        ({"num_sweeps": -2}, "num_sweeps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"energy_fn": gaussian_energy, "event_shape": (2,), "params": jnp.eye(2)} | kwargs
    with pytest.raises(ValueError, match=match):
        EnergyDistribution(args.pop("energy_fn"), args.pop("event_shape"), **args)


def test_bad_values_raise():
    discrete = make_model((0, 1), (3,))
    with pytest.raises(ValueError, match="support_values"):
        discrete.log_prob(jnp.asarray([0, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        discrete.log_prob(jnp.asarray([0, 1]))
    continuous = EnergyDistribution(gaussian_energy, (2,), params=jnp.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        continuous.log_prob(jnp.asarray([0.0, jnp.nan]))


def test_jit_vmap_scan_round_trip():
    params = random_params(3, seed=7, batch=(2,))
    model = EnergyDistribution(
        boltzmann_energy, (3,), support_values=(0, 1), params=params, batch_shape=(2,)
    )
    x = jnp.asarray(list(itertools.product([0, 1], repeat=3)))[:, None, :]
    expected = model.log_prob(x)
    log_prob = jax.jit(lambda d, v: d.log_prob(v))
    np.testing.assert_allclose(log_prob(model, x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(model.log_prob)(x), expected, rtol=1e-6)

    def body(d, _):
        return d, d.energy(x)

    carried, energies = jax.lax.scan(body, model, None, length=2)
    assert isinstance(carried, EnergyDistribution) and carried.energy_fn is boltzmann_energy
    assert carried.support_values == (0, 1) and carried.batch_shape == (2,)
    np.testing.assert_allclose(carried.params["couplings"], params["couplings"])
    np.testing.assert_allclose(energies[1], model.energy(x), rtol=1e-6)
    # A continuous model (step_size is pytree data) through jit.
    continuous = EnergyDistribution(gaussian_energy, (2,), params=jnp.eye(2), step_size=0.2)
    step = jax.jit(lambda d, k, v: d.gibbs_sweep(k, v, 0.5))
    assert step(continuous, jax.random.key(0), jnp.zeros((5, 2))).shape == (5, 2)
    # params and step_size are the leaves (no log_partition attached).
    assert sorted(leaf.shape for leaf in jax.tree.leaves(continuous)) == [(), (2, 2)]


def test_numpyro_model_log_density():
    import numpyro
    from numpyro.infer.util import log_density

    def model():
        numpyro.sample("x", EnergyDistribution(gaussian_energy, (2,), params=jnp.eye(2)))

    value = jnp.asarray([0.5, -1.0])
    log_joint, _ = log_density(model, (), {}, {"x": value})
    np.testing.assert_allclose(log_joint, -0.5 * value @ value, rtol=1e-6)
