"""Relaxed HMC (Gaussian integral trick) against exact enumeration on tiny models."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes, stationary_defect

from numpyro_ebm import (
    BernoulliRBM,
    BoltzmannMachine,
    GaussianBernoulliRBM,
    IsingModel,
    all_states,
    exact_log_partition,
)
from numpyro_ebm.infer import CD, PCD, ParallelTempering
from numpyro_ebm.infer.relaxed_hmc import (
    RelaxedHMC,
    RelaxedHMCState,
    _leapfrog,
    relaxation,
    relaxed_log_partition,
)

NUM_CHAINS = 4000
P_MIN = 1e-3  # chi-square goodness-of-fit threshold (false alarm probability 1e-3 per test)


def _normal(seed, shape, scale=1.0, dtype=jnp.float32):
    return scale * jax.random.normal(jax.random.key(seed), shape, dtype)


def _symmetric(seed, n, scale=1.0, batch=(), dtype=jnp.float32):
    a = _normal(seed, batch + (n, n), scale, dtype)
    return (
        (a + jnp.swapaxes(a, -1, -2)) / jnp.sqrt(2.0).astype(dtype) * (1 - jnp.eye(n, dtype=dtype))
    )


def make_bm(n=6, batch=(), dtype=jnp.float32, scale=1.0):
    # Couplings N(0, scale^2) off the diagonal (symmetrized with variance preserved).
    return BoltzmannMachine(
        _symmetric(0, n, scale, batch, dtype), _normal(1, batch + (n,), 0.5, dtype)
    )


def make_rbm(nv=4, nh=3, scale=1.0, dtype=jnp.float32, seed=2):
    return BernoulliRBM(
        _normal(seed, (nv, nh), scale, dtype),
        _normal(seed + 1, (nv,), 0.5, dtype),
        _normal(seed + 2, (nh,), 0.5, dtype),
    )


def make_lattice(dtype=jnp.float32):
    return IsingModel.lattice((3, 3), coupling=jnp.asarray(0.3, dtype), field=0.1)


def make_ising(batch=(), dtype=jnp.float32):
    return IsingModel(_symmetric(5, 5, 0.4, batch, dtype), _normal(6, batch + (5,), 0.3, dtype))


def exact_probs(dist, beta=1.0):
    """Exact probabilities of every configuration (all_states order), float64."""
    states = all_states(dist)
    states = states.reshape(states.shape[:1] + (1,) * len(dist.batch_shape) + dist.event_shape)
    log_p = -dist.tempered_energy(states, beta)
    log_p = np.asarray(log_p, np.float64)
    return np.exp(log_p - np.logaddexp.reduce(log_p, axis=0))


def run_chains(transition, dist, num_steps, seed=0, num_chains=NUM_CHAINS):
    """num_chains independent chains from uniformly random states, num_steps steps each."""
    key_x, key_init, key_run = jax.random.split(jax.random.key(seed), 3)

    @jax.jit
    def go(key_x, key_init, key_run, dist):
        x = dist.random_state(key_x, (num_chains,))
        state = transition.init(key_init, dist, x)

        def body(state, key):
            return transition.step(key, state, dist), None

        state, _ = jax.lax.scan(body, state, jax.random.split(key_run, num_steps))
        return state

    return go(key_x, key_init, key_run, dist)


# ---------------------------------------------------------------------- exact identities
def dense_factor(rel):
    """``L`` as a dense matrix, built column by column with ``rel.lower``."""
    n = rel.num_units
    return jnp.swapaxes(jax.vmap(rel.lower, out_axes=-2)(jnp.eye(n, dtype=rel.bias.dtype)), -1, -2)


def relaxed_states(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def model_log_weight(dist, units, beta):
    """``-beta E`` of relaxed {0,1} units in the relaxation's order, for each family."""
    if isinstance(dist, BernoulliRBM):
        nv, nh = dist.num_visible, dist.num_hidden
        if nv >= nh:
            v, h = units[..., :nv], units[..., nv:]
        else:
            h, v = units[..., :nh], units[..., nh:]
        return -beta * dist.joint_energy(v, h)
    if isinstance(dist, IsingModel):
        spins = (2 * units - 1).reshape(units.shape[:-1] + dist.event_shape)
        return -beta * dist.energy(spins)
    return -beta * dist.energy(units)


IDENTITY_CASES = {
    "bm": lambda: make_bm(dtype=jnp.float64),
    "bm-batch": lambda: make_bm(n=4, batch=(2,), dtype=jnp.float64),
    "rbm-visible-first": lambda: make_rbm(dtype=jnp.float64),
    "rbm-hidden-first": lambda: make_rbm(nv=2, nh=5, dtype=jnp.float64),
    "ising": lambda: make_ising(dtype=jnp.float64),
    "lattice": lambda: make_lattice(jnp.float64),
}


@jax.jit
def _identity_terms(dist, beta, s, y):
    rel = relaxation(dist, beta)
    chol = dense_factor(rel)
    a_mat = chol @ jnp.swapaxes(chol, -1, -2)
    quad = 0.5 * jnp.einsum("k...i,...ij,k...j->k...", s, a_mat, s) + jnp.sum(s * rel.bias, -1)
    mean = jax.vmap(rel.upper)(jnp.broadcast_to(s, s.shape[:1] + rel.bias.shape))
    joint = quad[:, None] - 0.5 * jnp.sum((y[None] - mean[:, None]) ** 2, -1)
    return dict(
        a_mat=a_mat,
        shift=rel.shift,
        quad=quad,
        log_weight=model_log_weight(dist, s, beta),
        marginal=jax.nn.logsumexp(joint, 0),
        potential=rel.potential(y),
    )


@pytest.mark.parametrize("beta", [1.0, 0.6])
@pytest.mark.parametrize("case", sorted(IDENTITY_CASES))
def test_relaxation_reproduces_the_model_exactly(x64, case, beta):
    """No Monte Carlo: for every relaxed state s, s.A.s/2 + b.s equals -beta E(s) up to one
    constant (zero except for Ising models, whose {0,1} form drops E(-1)); A = L L^T is the
    shifted coupling matrix with the smallest safe shift; and summing s out of
    exp(s.A.s/2 + b.s - |y - L^T s|^2/2) gives the relaxed density exp(-potential(y))."""
    dist = IDENTITY_CASES[case]()
    n = relaxation(dist).num_units
    batch_ndim = len(dist.batch_shape)
    s = jnp.asarray(relaxed_states(n))[(slice(None),) + (None,) * batch_ndim]
    y = jax.random.normal(jax.random.key(3), (5, *dist.batch_shape, n), jnp.float64)
    t = _identity_terms(dist, jnp.asarray(beta), s, y)
    # The smallest eigenvalue of A is the margin (0.1) plus a rounding guard of ~1e-13.
    np.testing.assert_allclose(jnp.linalg.eigvalsh(t["a_mat"])[..., 0], 0.1, atol=1e-9)
    np.testing.assert_allclose(
        jnp.diagonal(t["a_mat"], 0, -2, -1), t["shift"][..., None] * jnp.ones(n)
    )
    diff = t["quad"] - t["log_weight"]
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-10)
    expected_offset = (
        beta * dist.energy(-jnp.ones(dist.event_shape)) if isinstance(dist, IsingModel) else 0.0
    )
    np.testing.assert_allclose(diff[0], expected_offset, atol=1e-10)
    np.testing.assert_allclose(t["marginal"], -t["potential"], rtol=1e-12, atol=1e-10)


def gauss_hermite_kernel(rel, units, num_nodes=40, bias=None):
    """T[s, s'] = E_{xi ~ N(0, I)} p(s' | y = L^T s + xi): the y | s refresh followed by the
    exact draw of s | y, by tensor-product Gauss-Hermite quadrature (3 relaxed units)."""
    bias = rel.bias if bias is None else bias
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    weights = weights / weights.sum()
    n = units.shape[-1]
    grid = np.stack(np.meshgrid(*([nodes] * n), indexing="ij"), -1).reshape(-1, n)
    w = np.prod(np.stack(np.meshgrid(*([weights] * n), indexing="ij"), -1).reshape(-1, n), -1)
    y = rel.upper(jnp.asarray(units))[:, None, :] + grid[None]  # (states, nodes, n)
    logits = rel.lower(y) + bias
    # log p(s' | y) for every s': sum_i s'_i z_i - softplus(z_i).
    log_cond = (
        jnp.einsum("tn,skn->skt", units, logits) - jnp.sum(jax.nn.softplus(logits), -1)[..., None]
    )
    return np.asarray(jnp.einsum("k,skt->st", w, jnp.exp(log_cond)))


@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_refresh_then_conditional_leaves_pi_invariant_by_quadrature(x64, beta):
    """Steps 1 and 3 of a transition (y ~ p(y | s), then s ~ p(s | y)), integrated over y by
    Gauss-Hermite quadrature on a 3-unit Boltzmann machine and on a 2 x 1 RBM (visible
    marginal, hidden unit drawn from p(h | v)): pi T == pi to quadrature precision. A
    relaxation that forgets the -d/2 bias correction is caught."""
    bm = BoltzmannMachine(
        jnp.array([[0.0, 1.5, -1.0], [1.5, 0.0, 0.8], [-1.0, 0.8, 0.0]]),
        jnp.array([0.3, -0.5, 0.2]),
    )
    rel = relaxation(bm, beta)
    units = relaxed_states(3)
    pi = exact_probs(bm, beta)
    kernel = gauss_hermite_kernel(rel, units)
    assert stationary_defect(pi, kernel) < 1e-10
    # More nodes change nothing: the quadrature has converged.
    np.testing.assert_allclose(kernel, gauss_hermite_kernel(rel, units, 60), atol=1e-12)
    # Negative control: the bias without the shift correction breaks invariance.
    wrong = gauss_hermite_kernel(rel, units, bias=beta * bm.fields)
    assert stationary_defect(pi, wrong) > 1e-3

    rbm = BernoulliRBM(jnp.array([[1.2], [-0.9]]), jnp.array([0.2, -0.4]), jnp.array([0.5]))
    rel = relaxation(rbm, beta)
    units = relaxed_states(3)  # (v0, v1, h): the visible layer is the larger, first block
    joint = kernel_rbm = gauss_hermite_kernel(rel, units)
    v_states = relaxed_states(2)
    p_h = np.asarray(jax.nn.sigmoid(beta * rbm.visible_to_hidden(jnp.asarray(v_states))))[:, 0]
    # T_v[v, v'] = sum_h p(h | v) sum_h' joint[(v, h), (v', h')].
    kernel_v = np.zeros((4, 4))
    for i in range(4):
        for h, ph in ((0, 1 - p_h[i]), (1, p_h[i])):
            row = joint[2 * i + h].reshape(4, 2).sum(-1)
            kernel_v[i] += ph * row
    pi_v = exact_probs(rbm, beta)
    assert stationary_defect(pi_v, kernel_v) < 1e-10
    assert kernel_rbm.shape == (8, 8)


def test_leapfrog_is_reversible_and_volume_preserving(x64):
    """The HMC proposal is exact only if the integrator is a volume-preserving involution
    (with the momentum flip); both checked to float64 precision, and the potential it
    returns is the relaxed potential."""
    for dist in (make_bm(dtype=jnp.float64), make_rbm(nv=2, nh=5, dtype=jnp.float64)):
        rel = relaxation(dist)
        n = rel.num_units
        key_y, key_p = jax.random.split(jax.random.key(0))
        y0 = jax.random.normal(key_y, (n,), jnp.float64)
        p0 = jax.random.normal(key_p, (n,), jnp.float64)

        def flow(z, rel=rel, n=n):
            y, p, _, _ = _leapfrog(rel, z[:n], z[n:], 0.3, 4)
            return jnp.concatenate([y, p])

        flow = jax.jit(flow)
        z1 = flow(jnp.concatenate([y0, p0]))
        back = flow(jnp.concatenate([z1[:n], -z1[n:]]))
        np.testing.assert_allclose(back[:n], y0, atol=1e-12)
        np.testing.assert_allclose(-back[n:], p0, atol=1e-12)
        jac = jax.jit(jax.jacfwd(flow))(jnp.concatenate([y0, p0]))
        np.testing.assert_allclose(jnp.linalg.det(jac), 1.0, atol=1e-10)
        y1, _, potential, logits = jax.jit(_leapfrog, static_argnums=(3, 4))(rel, y0, p0, 0.3, 4)
        np.testing.assert_allclose(potential, rel.potential(y1), rtol=1e-12)
        np.testing.assert_allclose(logits, rel.logits(y1), atol=1e-12)


# ---------------------------------------------------------------------- chains vs exact
CHI_SQUARE_CASES = {
    # The visible-first RBM block order is checked statistically by the PCD gradient test.
    "bm6": make_bm,
    "rbm2x5": lambda: make_rbm(nv=2, nh=5, scale=1.5),
    "lattice3x3": make_lattice,
}


@pytest.mark.parametrize("case", sorted(CHI_SQUARE_CASES))
def test_chains_match_exact_distribution(case):
    """4000 independent chains after 60 steps from uniform starts: chi-square goodness of
    fit against exact enumeration, p > 1e-3."""
    dist = CHI_SQUARE_CASES[case]()
    state = run_chains(RelaxedHMC(), dist, num_steps=60)
    assert isinstance(state, RelaxedHMCState)
    x = np.asarray(state.position)
    assert x.shape == (NUM_CHAINS, *dist.event_shape)
    codes = state_codes(x, dist.support_values)
    assert chi_square_pvalue(codes, exact_probs(dist)) > P_MIN
    # Diagnostics are per chain; the default step size accepts most trajectories on these
    # mildly coupled models (a property of the default, not of exactness).
    accept = np.asarray(state.accept_prob)
    assert accept.shape == (NUM_CHAINS,) and np.all((accept >= 0) & (accept <= 1))
    assert accept.mean() > 0.5 and not np.any(state.diverging)


def test_batched_float64_chains_match_exact_distribution(x64):
    """A batch of two Boltzmann machines in float64: each member passes chi-square."""
    dist = make_bm(n=5, batch=(2,), dtype=jnp.float64)
    state = run_chains(RelaxedHMC(), dist, num_steps=60, num_chains=3000)
    assert state.position.dtype == jnp.float64 and state.y.shape == (3000, 2, 5)
    probs = exact_probs(dist)
    for b in range(2):
        codes = state_codes(np.asarray(state.position[:, b]), dist.support_values)
        assert chi_square_pvalue(codes, probs[:, b]) > P_MIN


def test_step_is_markov_in_the_position_with_per_replica_temperatures():
    """A step depends on the chain state only through the position (y and the hidden layer
    are redrawn from it): the same key gives the same result whatever the stored y. This is
    what keeps the kernel exact when PCD changes the parameters between steps and when
    parallel tempering swaps replicas. Checked on a batched RBM (hidden layer first) with
    temperatures shaped as parallel tempering passes them, (num_temperatures, 1, 1)."""
    w = _normal(8, (2, 3, 5))  # batch_shape (2,), 3 visible < 5 hidden
    rbm = BernoulliRBM(w, _normal(9, (2, 3), 0.5), _normal(10, (5,), 0.5))
    transition = RelaxedHMC(num_leapfrog=3, num_trajectories=2)
    betas = jnp.array([1.0, 0.5, 0.25]).reshape(3, 1, 1)
    x = rbm.random_state(jax.random.key(0), (3, 7))
    state = transition.init(jax.random.key(1), rbm, x)
    assert state.y.shape == (3, 7, 2, 8) and state.accept_prob.shape == (3, 7, 2)
    step = jax.jit(transition.step)
    garbage = state._replace(y=100.0 * jax.random.normal(jax.random.key(2), state.y.shape))
    out = step(jax.random.key(3), state, rbm, betas)
    out_garbage = step(jax.random.key(3), garbage, rbm, betas)
    np.testing.assert_array_equal(out.position, out_garbage.position)
    np.testing.assert_array_equal(out.y, out_garbage.y)
    assert out.position.shape == x.shape and set(np.unique(out.position)) <= {0.0, 1.0}
    # A huge step size is flagged: trajectories diverge and are rejected.
    wild = jax.jit(RelaxedHMC(step_size=50.0, num_leapfrog=2).step)(
        jax.random.key(4), state, rbm, betas
    )
    assert bool(jnp.any(wild.diverging)) and float(jnp.mean(wild.accept_prob)) < 0.1


# ---------------------------------------------------------------------- estimators
RBM_DATA = jnp.asarray(
    [[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
)


def test_pcd_gradient_matches_exact_within_monte_carlo_error():
    """PCD with relaxed HMC on a 6 x 4 RBM (weights N(0, 1.5^2)): after 150 updates at fixed
    parameters the chains are (nearly) independent exact draws, so each of the 24 weight
    gradient entries is off by about N(0, stderr^2); 5 standard errors bound all of them
    with a false-alarm probability near 1.4e-5 (the pattern of test_estimators)."""
    rbm = make_rbm(nv=6, nh=4, scale=1.5, seed=7)
    params = (rbm.weights, rbm.visible_bias, rbm.hidden_bias)

    def loss(params, samples=None):
        model = BernoulliRBM(*params)
        if samples is not None:
            model = model.with_negative_samples(samples)
        return -jnp.mean(model.log_prob(RBM_DATA))

    # 2**4 hidden states: log Z is exact and differentiable.
    exact = jax.jit(jax.grad(loss))(params)
    pcd = PCD(num_chains=NUM_CHAINS, transition=RelaxedHMC())

    @jax.jit
    def run(key):
        key_init, key_run = jax.random.split(key)
        state = pcd.init(key_init, rbm, RBM_DATA)

        def body(state, key):
            samples, state, _ = pcd.step(key, state, rbm)
            return state, samples

        state, samples = jax.lax.scan(body, state, jax.random.split(key_run, 150))
        return samples[-1], state

    @jax.jit
    def gradients(samples):
        per_sample = jax.vmap(lambda x: jax.grad(loss)(params, x[None])[0])(samples)
        return jax.grad(loss)(params, samples), per_sample

    samples, state = run(jax.random.key(0))
    grad, per_sample = gradients(samples)
    stderr = jnp.std(per_sample, 0) / jnp.sqrt(per_sample.shape[0])
    z = (grad[0] - exact[0]) / jnp.maximum(stderr, 1e-6)
    assert jnp.max(jnp.abs(z)) < 5, z
    assert float(state.chains.accept_prob.mean()) > 0.5


def test_parallel_tempering_with_relaxed_hmc_matches_tempered_distributions():
    """Replicas of a strongly coupled 6-unit Boltzmann machine (couplings N(0, 2)) at
    betas 1, 0.6, 0.3, each relaxed at its own temperature: every replica passes chi-square
    against exp(-beta E) (p > 1e-3), and swaps are accepted."""
    bm = make_bm(scale=np.sqrt(2.0))
    pt = ParallelTempering(num_chains=NUM_CHAINS, betas=(1.0, 0.6, 0.3), transition=RelaxedHMC())

    @jax.jit
    def run(key):
        key_init, key_run = jax.random.split(key)
        state = pt.init(key_init, bm)

        def body(state, key):
            _, state, _ = pt.step(key, state, bm)
            return state, None

        state, _ = jax.lax.scan(body, state, jax.random.split(key_run, 100))
        return state

    state = run(jax.random.key(1))
    assert state.chains.y.shape == (3, NUM_CHAINS, 6)
    for k, beta in enumerate(pt.betas):
        codes = state_codes(np.asarray(state.chains.position[k]), bm.support_values)
        assert chi_square_pvalue(codes, exact_probs(bm, beta)) > P_MIN, beta
    rates = ParallelTempering.swap_rates(state)
    assert rates.shape == (2,) and bool(jnp.all((rates > 0) & (rates <= 1)))


def test_cd_runs_relaxed_hmc_from_the_data():
    rbm = make_rbm(nv=6, nh=4)
    cd = CD(num_sweeps=2, transition=RelaxedHMC(num_leapfrog=3))
    samples, state, info = cd.step(
        jax.random.key(0), cd.init(jax.random.key(1), rbm), rbm, RBM_DATA
    )
    assert samples.shape == RBM_DATA.shape and set(np.unique(samples)) <= {0.0, 1.0}
    assert int(state.step) == 1 and np.isfinite(info.energy)


# ---------------------------------------------------------------------- log Z cross-check
LOG_Z_CASES = {
    "bm-batch": lambda: make_bm(n=4, batch=(2,)),
    "rbm4x3": make_rbm,
    "lattice3x3": make_lattice,
}


@pytest.mark.parametrize("case", sorted(LOG_Z_CASES))
def test_relaxed_log_partition_matches_exact(x64, case):
    """log Z = log E_{y ~ N(0, I)} prod_i (1 + exp((L y)_i + b_i)) (+ the Ising offset): the
    Monte Carlo estimate agrees with enumeration within 5 delta-method standard errors
    (200k draws; the weights' effective sample size is large, so the standard error is
    reliable)."""
    dist = LOG_Z_CASES[case]()
    dist64 = jax.tree.map(
        lambda v: v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v, dist
    )
    est = relaxed_log_partition(jax.random.key(4), dist64, 200_000)
    exact = exact_log_partition(dist64)
    assert est.log_partition.shape == dist.batch_shape
    assert bool(jnp.all(est.ess > 1000)), est.ess
    z = (est.log_partition - exact) / est.stderr
    assert bool(jnp.all(jnp.abs(z) < 5)), (est, exact)


# ---------------------------------------------------------------------- bad inputs
def test_unsupported_families_and_bad_settings_raise():
    gb = GaussianBernoulliRBM(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="distribution"):
        RelaxedHMC().init(jax.random.key(0), gb, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="distribution"):
        relaxed_log_partition(jax.random.key(0), gb, 10)
    big = IsingModel.lattice((40, 40), coupling=0.3)
    with pytest.raises(ValueError, match="distribution .*1600 sites"):
        RelaxedHMC().init(jax.random.key(0), big, big.random_state(jax.random.key(1), (2,)))
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step_size"):
            RelaxedHMC(step_size=bad)
    with pytest.raises(ValueError, match="num_leapfrog"):
        RelaxedHMC(num_leapfrog=0)
    with pytest.raises(ValueError, match="num_trajectories"):
        RelaxedHMC(num_trajectories=1.5)
    with pytest.raises(ValueError, match="shift"):
        RelaxedHMC(shift=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        relaxed_log_partition(jax.random.key(0), make_bm(), 0)


def test_potts_models_are_refused():
    potts = pytest.importorskip("numpyro_ebm.distributions.potts")
    model = potts.PottsModel.lattice((2, 2), 3, 0.5)
    with pytest.raises(ValueError, match="distribution must be a BoltzmannMachine"):
        relaxation(model)


def test_transition_is_hashable():
    # Estimators are static arguments of jit: their transition must hash by value.
    assert hash(RelaxedHMC(step_size=0.3)) == hash(RelaxedHMC(step_size=0.3))
    assert RelaxedHMC(num_leapfrog=4) != RelaxedHMC(num_leapfrog=5)
    assert hash(PCD(transition=RelaxedHMC())) == hash(PCD(transition=RelaxedHMC()))
