"""Learning recovers known couplings: ``fit`` with PCD on exact samples of small models.

A fully visible Boltzmann machine and an Ising model are exponential families: with the
sufficient statistics ``T(x) = (x_i x_j for i < j, x_i)`` and the natural parameters
``theta = (J_ij for i < j, h_i)``, ``log p(x) = theta . T(x) - log Z(theta)``. So on tiny
models everything a tolerance needs is exact, by enumerating all ``2**n`` states:

- the data are exact draws from the true model (a categorical draw over the enumerated
  probabilities), ``N = 20,000`` of them;
- the Fisher information per observation is the covariance of the sufficient statistics,
  ``I(theta) = Cov_theta[T(x)]``, so the maximum-likelihood estimate (MLE) of ``N`` draws has
  standard errors ``se = sqrt(diag(I^{-1}) / N)`` (asymptotic normality of the MLE; with
  ``N = 20,000`` and at most 36 parameters the normal approximation is excellent);
- the exact MLE of the drawn data set is computed by Newton's method on the exact
  log-likelihood (concave in ``theta``), which separates the statistical error (data size)
  from the optimization error (what ``fit`` adds).

Tolerances, per parameter: the exact MLE lies within ``Z_STAT = 5`` standard errors of the
truth (a two-sided normal tail of 5.7e-7 per parameter, about 2e-5 for all parameters of a
test); ``fit`` (PCD, stochastic gradients) lies within ``OPT_TOL_SE = 2`` standard errors of
the exact MLE; hence within ``Z_STAT + OPT_TOL_SE = 7`` standard errors of the truth.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numpyro_ebm import BoltzmannMachine, IsingModel
from numpyro_ebm.infer import PCD
from numpyro_ebm.train import fit

NUM_DRAWS = 20_000
#: Statistical tolerance of the exact MLE around the truth, in standard errors.
Z_STAT = 5.0
#: Optimization tolerance of ``fit`` around the exact MLE of the same data, in standard
#: errors. ``fit``'s estimate is the MLE plus the noise of its stochastic gradients: the
#: negative phase of 1,000 persistent chains and minibatches of 1,000 examples, averaged by
#: Adam's linearly decaying learning rate over the last few hundred of 2,000 updates; that
#: noise is itself a Monte Carlo average over ~10^5 to 10^6 (correlated) chain states and
#: data examples, i.e. a fraction of the standard error of 20,000 independent draws
#: (measured on these models over several seeds: at most about 1 standard error for the worst
#: of all parameters, 0.1-0.3 on average). A biased negative phase (chains that do not
#: follow the model) or a wrong gradient shows up as several standard errors.
OPT_TOL_SE = 2.0

NUM_CHAINS = 1000
NUM_UPDATES = 2000
BATCH_SIZE = 1000
LEARNING_RATE = 3e-2


def sufficient_statistics(x: np.ndarray) -> np.ndarray:
    """``T(x) = (x_i x_j for i < j, x_i)``, shape ``(num_states, n (n - 1) / 2 + n)``."""
    n = x.shape[1]
    iu = np.triu_indices(n, 1)
    return np.concatenate([x[:, iu[0]] * x[:, iu[1]], x], 1)


def natural_parameters(couplings, fields) -> np.ndarray:
    """``theta = (J_ij for i < j, h_i)``: ``E(x) = -(1/2) x.J.x - h.x = -theta . T(x)``."""
    couplings = np.asarray(couplings, np.float64)
    iu = np.triu_indices(couplings.shape[0], 1)
    return np.concatenate([couplings[iu], np.asarray(fields, np.float64)])


def exact_probs(theta: np.ndarray, stats: np.ndarray) -> np.ndarray:
    log_w = stats @ theta
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def mean_and_fisher(theta: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E_theta[T]`` and the Fisher information ``Cov_theta[T]`` (exact, float64)."""
    p = exact_probs(theta, stats)
    mean = p @ stats
    return mean, (stats * p[:, None]).T @ stats - np.outer(mean, mean)


def exact_mle(stats: np.ndarray, data_mean: np.ndarray, theta0: np.ndarray) -> np.ndarray:
    """Maximize ``theta . mean(T(data)) - log Z(theta)`` by Newton's method."""
    theta = theta0.copy()
    for _ in range(100):
        mean, fisher = mean_and_fisher(theta, stats)
        step = np.linalg.solve(fisher, data_mean - mean)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-12:
            return theta
    raise AssertionError("Newton's method did not converge")


def symmetric_zero_diagonal(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    upper = np.triu(scale * rng.normal(size=(n, n)), 1)
    return upper + upper.T


def check_recovery(cls, couplings, fields, support_values, seed):
    n = len(fields)
    states = np.asarray(list(itertools.product(support_values, repeat=n)), np.float64)
    stats = sufficient_statistics(states)
    theta_true = natural_parameters(couplings, fields)
    probs = exact_probs(theta_true, stats)

    # The library's model is the one whose draws we take (same energy convention).
    truth = cls(jnp.asarray(couplings, jnp.float32), jnp.asarray(fields, jnp.float32))
    np.testing.assert_allclose(
        np.exp(np.asarray(truth.log_prob(jnp.asarray(states, jnp.float32)))), probs, rtol=1e-4
    )

    rng = np.random.default_rng(seed)
    codes = rng.choice(len(states), size=NUM_DRAWS, p=probs)
    data = states[codes].astype(np.int32)

    _, fisher = mean_and_fisher(theta_true, stats)
    se = np.sqrt(np.diag(np.linalg.inv(fisher)) / NUM_DRAWS)
    theta_mle = exact_mle(stats, stats[codes].mean(0), theta_true)
    z_mle = (theta_mle - theta_true) / se
    assert np.max(np.abs(z_mle)) < Z_STAT, z_mle

    # Start near zero, but not at zero: the block-Gibbs colouring of a Boltzmann machine is
    # derived from the non-zero pattern of its initial couplings, and fit refuses couplings
    # that colouring would pin to zero (all-zero couplings put every unit in one block).
    init = cls(
        jnp.asarray(symmetric_zero_diagonal(rng, n, 0.01), jnp.float32),
        jnp.zeros((n,), jnp.float32),
    )
    num_epochs = NUM_UPDATES // (NUM_DRAWS // BATCH_SIZE)
    model, history = fit(
        jax.random.key(seed),
        init,
        data,
        estimator=PCD(num_chains=NUM_CHAINS, num_sweeps=1),
        optimizer=optax.adam(optax.linear_schedule(LEARNING_RATE, 0.0, NUM_UPDATES)),
        num_epochs=num_epochs,
        batch_size=BATCH_SIZE,
        progress_bar=False,
    )
    assert len(history.epoch) == num_epochs
    theta_fit = natural_parameters(model.couplings, model.fields)
    np.testing.assert_allclose(np.asarray(model.couplings), np.asarray(model.couplings).T)
    np.testing.assert_array_equal(np.diag(np.asarray(model.couplings)), 0.0)

    # The initial model is far outside the tolerance (so the test can fail) ...
    theta_init = natural_parameters(init.couplings, init.fields)
    assert np.max(np.abs(theta_init - theta_true) / se) > 3 * (Z_STAT + OPT_TOL_SE)
    # ... fit reaches the exact MLE of these data up to its optimization tolerance ...
    z_opt = (theta_fit - theta_mle) / se
    assert np.max(np.abs(z_opt)) < OPT_TOL_SE, z_opt
    # ... and so recovers the true parameters within the statistical plus that tolerance.
    z_fit = (theta_fit - theta_true) / se
    assert np.max(np.abs(z_fit)) < Z_STAT + OPT_TOL_SE, z_fit


def test_pcd_recovers_boltzmann_machine():
    """7 {0,1} units, dense couplings N(0, 0.8^2), fields N(0, 0.5^2): 28 + 7 parameters,
    standard errors 0.03-0.06 with 20,000 draws."""
    rng = np.random.default_rng(0)
    couplings = symmetric_zero_diagonal(rng, 7, 0.8)
    fields = 0.5 * rng.normal(size=7)
    check_recovery(BoltzmannMachine, couplings, fields, (0, 1), seed=10)


def test_pcd_recovers_ising_model():
    """8 spins, dense couplings N(0, 0.3^2), fields N(0, 0.2^2): 28 + 8 parameters,
    standard errors about 0.01 with 20,000 draws."""
    rng = np.random.default_rng(1)
    couplings = symmetric_zero_diagonal(rng, 8, 0.3)
    fields = 0.2 * rng.normal(size=8)
    check_recovery(IsingModel, couplings, fields, (-1, 1), seed=11)


@pytest.mark.parametrize("cls", [BoltzmannMachine, IsingModel])
def test_standard_errors_match_the_spread_of_exact_mles(cls):
    """The standard errors the tolerances use are right: over 500 independent data sets of
    a 3-unit model, the exact MLEs' z-scores have unit variance. The mean of 500 squared unit
    normals has standard error sqrt(2/500) = 0.063, and pooling the 6 parameters of a
    replicate (correlated) does not make it larger, so the pooled mean lies in 0.75-1.25 (4
    standard errors; p < 1e-4) unless the formula is wrong (a factor of 2 in the information
    would give 0.5 or 2)."""
    rng = np.random.default_rng(2)
    values = (0, 1) if cls is BoltzmannMachine else (-1, 1)
    theta_true = np.array([0.8, -0.5, 0.3, 0.2, -0.4, 0.1])
    states = np.asarray(list(itertools.product(values, repeat=3)), np.float64)
    stats = sufficient_statistics(states)
    probs = exact_probs(theta_true, stats)
    num_draws = 2000
    _, fisher = mean_and_fisher(theta_true, stats)
    se = np.sqrt(np.diag(np.linalg.inv(fisher)) / num_draws)
    z = []
    for _ in range(500):
        counts = rng.multinomial(num_draws, probs)
        mle = exact_mle(stats, counts @ stats / num_draws, theta_true)
        z.append((mle - theta_true) / se)
    variance = float(np.mean(np.square(z)))
    assert 0.75 < variance < 1.3, variance
