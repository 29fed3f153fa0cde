"""Potts models: exact normalization, energies against independent references, exact
stationarity of the block-Gibbs kernel, chi-square goodness of fit of many chains, input
validation and pytree round trips."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from helpers import chi_square_pvalue, state_codes, stationary_defect
from jax import lax

from numpyro_ebm import all_states, exact_log_partition, exact_marginals
from numpyro_ebm.distributions import potts
from numpyro_ebm.distributions.coloring import check_coloring, lattice_coloring
from numpyro_ebm.distributions.potts import PottsLattice, PottsModel

# A p-value threshold for chi-square goodness of fit: a correct sampler fails one such test
# with probability 1e-3 (the seeds are fixed, so a pass is reproducible).
P_MIN = 1e-3


# ---------------------------------------------------------------------- references
# Model methods run under jit here: one compilation per model structure instead of one per
# primitive keeps the file fast.
energy_of = jax.jit(lambda model, x: model.energy(x))
logits_of = jax.jit(lambda model, x, beta: model.conditional_logits(x, beta))
log_prob_of = jax.jit(lambda model, x: model.log_prob(x))


def states_of(model):
    """Every configuration, ``(q ** num_units,) + event_shape``, unit 0 varying slowest
    (the order of ``all_states``), built with NumPy."""
    states = itertools.product(range(model.num_states), repeat=model.num_units)
    return np.array(list(states)).reshape((-1, *model.event_shape))


def random_couplings(seed, n, *, pattern=None, scale=0.8, batch=()):
    """Symmetric, zero-diagonal couplings, nonzero only on ``pattern`` (default: dense)."""
    rng = np.random.default_rng(seed)
    j = rng.normal(scale=scale, size=(*batch, n, n))
    j = 0.5 * (j + np.swapaxes(j, -1, -2))
    if pattern is None:
        pattern = ~np.eye(n, dtype=bool)
    return np.where(pattern, j, 0.0)


def ring_pattern(n):
    """The edges of a cycle of ``n`` units (odd ``n``: 3 colours)."""
    adjacency = np.zeros((n, n), dtype=bool)
    i = np.arange(n)
    adjacency[i, (i + 1) % n] = adjacency[(i + 1) % n, i] = True
    return adjacency


def dense_energy_by_definition(couplings, fields, x):
    """``-sum_{i<j} J_ij [x_i = x_j] - sum_i h_{i, x_i}`` with plain loops."""
    n = len(x)
    total = -sum(fields[i, x[i]] for i in range(n))
    for i in range(n):
        for j in range(i + 1, n):
            total -= couplings[i, j] * (x[i] == x[j])
    return total


def lattice_as_dense(shape, coupling, periodic):
    """The coupling matrix of a lattice, built bond by bond: every site and every axis gives
    a bond to the forward neighbour (wrapping when periodic, none past an open edge)."""
    num_sites = int(np.prod(shape))
    j = np.zeros((num_sites, num_sites))
    for site in np.ndindex(*shape):
        for axis in range(len(shape)):
            other = list(site)
            other[axis] += 1
            if other[axis] == shape[axis]:
                if not periodic:
                    continue
                other[axis] = 0
            a = np.ravel_multi_index(site, shape)
            b = np.ravel_multi_index(tuple(other), shape)
            j[a, b] += coupling
            j[b, a] += coupling
    return j


def exact_probs(model, beta=1.0):
    """Exact ``p_beta`` over ``all_states`` order: shape ``(num_states,) + batch_shape``."""
    states = states_of(model)
    nb = len(model.batch_shape)
    states = states.reshape(states.shape[:1] + (1,) * nb + model.event_shape)
    log_w = -beta * np.asarray(energy_of(model, states), np.float64)
    log_w = np.broadcast_to(log_w, log_w.shape[:1] + model.batch_shape)
    w = np.exp(log_w - log_w.max(0))
    return w / w.sum(0)


def transition_matrix(model, beta=1.0):
    """The exact one-sweep kernel of an unbatched model, composed over its update blocks:
    within a block every unit is redrawn from ``softmax(conditional_logits)`` evaluated at the
    state before the block (units of one block are uncoupled), the others stay."""
    states = states_of(model)
    num_states = states.shape[0]
    flat = states.reshape(num_states, -1)
    n, q = flat.shape[1], model.num_states
    logits = np.asarray(logits_of(model, states, beta), np.float64)
    logits = logits.reshape(num_states, n, q)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    kernel = np.eye(num_states)
    for block in model.update_blocks:
        block = np.asarray(block)
        rest = np.setdiff1d(np.arange(n), block)
        same_rest = np.all(flat[:, None, rest] == flat[None, :, rest], axis=-1)
        # moves[x, y, j] = P(unit block[j] becomes y[block[j]] | x)
        moves = probs[:, block, :][:, np.arange(len(block))[None, :], flat[:, block]]
        kernel = kernel @ (same_rest * moves.prod(-1))
    return kernel


@functools.partial(jax.jit, static_argnames=("num_chains", "num_sweeps", "sweep_path"))
def _chains(model, rng_key, beta, start, *, num_chains, num_sweeps, sweep_path):
    del sweep_path  # only part of the cache key, so that a monkeypatched path retraces
    key_init, key_run = jax.random.split(rng_key)
    if start is None:
        x = model.random_state(key_init, (num_chains,))
    else:
        x = jnp.broadcast_to(start, (num_chains, *start.shape))

    def body(x, key):
        return model.gibbs_sweep(key, x, beta), None

    return lax.scan(body, x, jax.random.split(key_run, num_sweeps))[0]


def run_chains(model, seed, num_chains, num_sweeps, beta=1.0, start=None):
    """``num_chains`` independent chains from uniformly random states (or all from
    ``start``), ``num_sweeps`` sweeps each, in one compiled program."""
    out = _chains(
        model,
        jax.random.key(seed),
        jnp.asarray(beta),
        None if start is None else jnp.asarray(start, model.chain_dtype),
        num_chains=num_chains,
        num_sweeps=num_sweeps,
        sweep_path=potts.MAX_UNROLLED_COLORS,
    )
    return np.asarray(out).astype(np.int64)


def dense_model(seed=0, n=4, q=3, pattern=None, batch=(), **kwargs):
    rng = np.random.default_rng(seed + 100)
    couplings = random_couplings(seed, n, pattern=pattern, batch=batch)
    fields = rng.normal(scale=0.5, size=(*batch, n, q))
    return PottsModel(couplings, fields, **kwargs)


def lattice_model(shape, q, periodic=True, seed=0, coupling=0.6, per_site=True, batch=()):
    rng = np.random.default_rng(seed)
    site = shape if per_site else (1,) * len(shape)
    fields = rng.normal(scale=0.4, size=(*batch, *site, q))
    return PottsModel.lattice(shape, q, coupling, fields, periodic=periodic)


# ---------------------------------------------------------------------- shapes, support
def test_shapes_support_and_enumerate_support():
    model = dense_model(batch=(2,))
    assert model.batch_shape == (2,) and model.event_shape == (4,)
    assert model.num_states == 3 and model.support_values == (0, 1, 2)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (5, 2, 4)), jnp.int32)
    assert bool(jnp.all(model.support(x)))
    assert not bool(jnp.all(model.support(jnp.full((2, 4), 3))))
    values = model.enumerate_support()
    assert values.shape == (3, 2, 4)
    np.testing.assert_array_equal(values[:, 0, 0], [0, 1, 2])
    assert PottsModel.infer_shapes((2, 4, 4), (2, 4, 3)) == ((2,), (4,))

    lat = lattice_model((2, 3), 3, batch=(2,))
    assert isinstance(lat, PottsLattice) and isinstance(lat, PottsModel)
    assert lat.batch_shape == (2,) and lat.event_shape == (2, 3)
    y = jax.jit(lat.sample, static_argnums=1)(jax.random.key(1), (4,))
    assert y.shape == (4, 2, 2, 3) and y.dtype == jnp.int32
    assert lat.support.event_dim == 2
    assert lat.enumerate_support().shape == (3, 2, 2, 3)
    assert PottsLattice.infer_shapes((2, 3), 3, (2,), (2, 2, 3, 3)) == ((2,), (2, 3))
    # Site-independent fields: (q,) unbatched, or batch + (1, 1, q).
    assert PottsModel.lattice((4, 4), 3, 0.5, jnp.ones(3)).batch_shape == ()
    assert PottsModel.lattice((4, 4), 3, 0.5, jnp.ones((5, 1, 1, 3))).batch_shape == (5,)
    assert PottsModel(jnp.zeros((3, 3)), num_states=4).fields.shape == (3, 4)


def test_energy_matches_definition(x64):
    model = dense_model(n=5, q=3, pattern=ring_pattern(5))
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 3, size=(20, 5))
    energies = np.asarray(energy_of(model, xs))
    j, h = np.asarray(model.couplings), np.asarray(model.fields)
    expected = [dense_energy_by_definition(j, h, x) for x in xs]
    np.testing.assert_allclose(energies, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- normalization
@pytest.mark.parametrize("batch", [(), (2,)])
def test_dense_normalization(x64, batch):
    model = dense_model(n=4, q=3, batch=batch)
    assert model.is_normalized  # 3**4 states: log Z exact inside log_prob
    states = states_of(model).reshape((81,) + (1,) * len(batch) + (4,))
    total = jax.nn.logsumexp(log_prob_of(model, states), axis=0)
    np.testing.assert_allclose(total, np.zeros(batch), atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "q", "periodic"),
    [((3, 3), 3, True), ((2, 3), 3, True), ((2, 3), 3, False), ((3, 3), 2, False)],
)
def test_lattice_normalization(x64, shape, q, periodic):
    model = lattice_model(shape, q, periodic)
    if not model.is_normalized:  # 3**9 states is beyond the automatic limit
        model = model.with_log_partition(exact_log_partition(model))
    total = jax.nn.logsumexp(log_prob_of(model, states_of(model)))
    np.testing.assert_allclose(total, 0.0, atol=1e-10)


def test_exact_marginals_and_log_prob_gradient(x64):
    model = dense_model(n=4, q=3)
    probs = exact_probs(model)
    np.testing.assert_array_equal(all_states(model), states_of(model))
    onehot = np.eye(3)[states_of(model)]  # (81, 4, 3)
    np.testing.assert_allclose(exact_marginals(model), np.einsum("s,sik->ik", probs, onehot))
    # d log p(x) / d h_ik = [x_i = k] - P(x_i = k): the positive minus the negative phase.
    x = jnp.asarray([0, 2, 1, 1])

    def log_prob(fields):
        return PottsModel(model.couplings, fields).log_prob(x)

    grad = jax.jit(jax.grad(log_prob))(model.fields)
    np.testing.assert_allclose(grad, np.eye(3)[np.asarray(x)] - exact_marginals(model), atol=1e-12)


# ---------------------------------------------------------------------- energies
@pytest.mark.parametrize(
    ("shape", "periodic"),
    [((2, 3), True), ((3, 4), True), ((3, 4), False), ((2, 2, 3), True), ((3, 3, 2), False)],
)
def test_lattice_energy_equals_dense_equivalent(x64, shape, periodic):
    q, coupling = 3, 0.7
    lat = lattice_model(shape, q, periodic, coupling=coupling)
    dense = PottsModel(
        lattice_as_dense(shape, coupling, periodic), np.asarray(lat.fields).reshape(-1, q)
    )
    xs = np.random.default_rng(2).integers(0, q, size=(30, *shape))
    flat = xs.reshape(30, -1)
    np.testing.assert_allclose(energy_of(lat, xs), energy_of(dense, flat), rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(logits_of(lat, xs, 0.8)).reshape(30, -1, q),
        logits_of(dense, flat, 0.8),
        rtol=1e-12,
    )
    # The lattice colouring is proper for the dense-equivalent graph.
    assert check_coloring(dense.couplings != 0, lat.coloring.reshape(-1))


def test_q2_potts_is_ising_with_half_couplings(x64):
    # With s = 2x - 1, [x_i = x_j] = (1 + s_i s_j) / 2 and
    # h_i[x_i] = (h_i0 + h_i1) / 2 + s_i (h_i1 - h_i0) / 2, so
    #   E_potts(x) = -sum_{i<j} (J_ij / 2) s_i s_j - sum_i ((h_i1 - h_i0) / 2) s_i + C,
    #   C = -(1/2) sum_{i<j} J_ij - sum_i (h_i0 + h_i1) / 2:
    # an Ising model with couplings J / 2 and fields (h1 - h0) / 2, up to the constant C.
    model = dense_model(n=5, q=2)
    j, h = np.asarray(model.couplings), np.asarray(model.fields)
    x = states_of(model)
    s = 2 * x - 1
    ising_energy = -0.5 * np.einsum("si,ij,sj->s", s, j / 2, s) - s @ ((h[:, 1] - h[:, 0]) / 2)
    const = -0.5 * np.sum(np.triu(j, 1)) - np.sum(h) / 2
    np.testing.assert_allclose(energy_of(model, x), ising_energy + const, atol=1e-12)
    ising_log_prob = -ising_energy - jax.nn.logsumexp(-ising_energy)
    np.testing.assert_allclose(log_prob_of(model, x), ising_log_prob, atol=1e-12)


# ---------------------------------------------------------------------- stationarity
STATIONARITY_CASES = {
    # 5-cycle: 3 colour classes, updated as blocks.
    "dense-sparse": lambda: dense_model(n=5, q=3, pattern=ring_pattern(5)),
    # Dense couplings: one unit per colour (sequential Gibbs).
    "dense-full": lambda: dense_model(n=4, q=3),
    # Odd periodic sides: the checkerboard breaks across the seams, 7 colours.
    "lattice-3x3-q2": lambda: lattice_model((3, 3), 2, periodic=True),
    "lattice-2x3-q3": lambda: lattice_model((2, 3), 3, periodic=True),
    "lattice-2x3-open": lambda: lattice_model((2, 3), 3, periodic=False),
}


@pytest.mark.parametrize("case", sorted(STATIONARITY_CASES))
@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_transition_kernel_is_exactly_stationary(x64, case, beta):
    model = STATIONARITY_CASES[case]()
    pi = exact_probs(model, beta)
    kernel = transition_matrix(model, beta)
    assert stationary_defect(pi, kernel) < 1e-12
    # The sweep visits every unit exactly once.
    assert sorted(i for block in model.update_blocks for i in block) == list(range(model.num_units))


def test_stationarity_check_detects_an_improper_block(x64):
    # Negative control: updating coupled units together as if independent is not
    # stationary, and the check above sees it.
    model = dense_model(n=5, q=3, pattern=ring_pattern(5))
    pi = exact_probs(model)
    model._coloring = (0,) * 5
    assert stationary_defect(pi, transition_matrix(model)) > 1e-3


def one_sweep_codes(model, start, seed, num_chains):
    return state_codes(run_chains(model, seed, num_chains, 1, start=start), model.support_values)


@pytest.mark.parametrize("path", ["unrolled", "scan"])
def test_one_sweep_follows_the_exact_kernel(x64, monkeypatch, path):
    # One sweep of 4000 chains from a fixed state, against the exact row T[x0] (chi-square).
    if path == "scan":
        monkeypatch.setattr(potts, "MAX_UNROLLED_COLORS", 0)
    model = dense_model(n=5, q=3, pattern=ring_pattern(5))
    start = np.array([0, 1, 2, 1, 0])
    row = transition_matrix(model)[state_codes(start[None], model.support_values)[0]]
    codes = one_sweep_codes(model, start, seed=3, num_chains=4000)
    assert chi_square_pvalue(codes, row) > P_MIN


def test_one_lattice_sweep_follows_the_exact_kernel(x64):
    model = lattice_model((2, 3), 3, periodic=True, coupling=1.0)
    start = np.array([[0, 1, 2], [2, 2, 0]])
    row = transition_matrix(model)[state_codes(start[None], model.support_values)[0]]
    codes = one_sweep_codes(model, start, seed=4, num_chains=4000)
    assert chi_square_pvalue(codes, row) > P_MIN


# ---------------------------------------------------------------------- chi-square
NUM_CHAINS = 4000
NUM_SWEEPS = 30  # the tiny models below mix in a few sweeps; 30 leaves no visible bias


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_dense_chains_match_exact_distribution(beta):
    model = dense_model(n=4, q=3, seed=5)
    x = run_chains(model, 6, NUM_CHAINS, NUM_SWEEPS, beta)
    codes = state_codes(x, model.support_values)
    assert chi_square_pvalue(codes, exact_probs(model, beta)) > P_MIN


def test_dense_sequential_scan_chains_match_exact_distribution(monkeypatch):
    monkeypatch.setattr(potts, "MAX_UNROLLED_COLORS", 2)
    model = dense_model(n=5, q=2, seed=7, pattern=ring_pattern(5))  # 3 colours: scan path
    x = run_chains(model, 8, NUM_CHAINS, NUM_SWEEPS)
    codes = state_codes(x, model.support_values)
    assert chi_square_pvalue(codes, exact_probs(model)) > P_MIN


def test_batched_dense_chains_match_exact_distribution():
    model = dense_model(n=4, q=3, seed=9, batch=(2,))
    beta = jnp.asarray([1.0, 0.7])  # one inverse temperature per batch member
    x = run_chains(model, 10, NUM_CHAINS, NUM_SWEEPS, beta)
    assert x.shape == (NUM_CHAINS, 2, 4)
    probs = np.stack([exact_probs(model, b)[:, i] for i, b in enumerate([1.0, 0.7])], 1)
    for i in range(2):
        codes = state_codes(x[:, i], model.support_values)
        assert chi_square_pvalue(codes, probs[:, i]) > P_MIN


@pytest.mark.parametrize(("periodic", "beta"), [(True, 1.0), (False, 0.7)])
def test_lattice_chains_match_exact_distribution(periodic, beta):
    model = lattice_model((2, 3), 3, periodic, seed=11, coupling=0.8)
    x = run_chains(model, 12, NUM_CHAINS, NUM_SWEEPS, beta)
    codes = state_codes(x, model.support_values)
    assert chi_square_pvalue(codes, exact_probs(model, beta)) > P_MIN


def test_batched_lattice_chains_match_exact_distribution():
    model = lattice_model((3, 3), 2, seed=13, batch=(2,), per_site=False)
    model = PottsModel.lattice((3, 3), 2, jnp.asarray([0.4, -0.5]), model.fields)
    x = run_chains(model, 14, NUM_CHAINS, NUM_SWEEPS)
    probs = exact_probs(model)
    for i in range(2):
        codes = state_codes(x[:, i], model.support_values)
        assert chi_square_pvalue(codes, probs[:, i]) > P_MIN


def test_sample_matches_exact_distribution():
    model = dense_model(n=3, q=3, seed=15, num_sweeps=20)
    x = jax.jit(model.sample, static_argnums=1)(jax.random.key(16), (NUM_CHAINS,))
    assert x.dtype == jnp.int32 and x.shape == (NUM_CHAINS, 3)
    x = np.asarray(x)
    assert chi_square_pvalue(state_codes(x, model.support_values), exact_probs(model)) > P_MIN


# ---------------------------------------------------------------------- implementation paths
@pytest.mark.parametrize("num_states", [3, 40])
def test_categorical_draw_inverts_the_cdf(x64, num_states):
    # Stratified uniforms (k + 1/2) / M hit each state k in a fraction p_k of the draws, up
    # to rounding at the 2 ends of its interval: |fraction - p_k| <= 2 / M, deterministically.
    logits = jnp.asarray(np.random.default_rng(0).normal(size=num_states) * 2)
    m = 20000
    u = (jnp.arange(m) + 0.5) / m
    draws = jax.jit(potts.categorical_draw)(u, jnp.broadcast_to(logits, (m, num_states)))
    draws = np.asarray(draws)
    freq = np.bincount(draws.astype(int), minlength=num_states) / m
    np.testing.assert_allclose(freq, jax.nn.softmax(logits), atol=2 / m)


def test_many_states_path_matches_unrolled_path(x64, monkeypatch):
    # Above _MAX_UNROLLED_STATES the draw uses a cumsum and the lattice one-hot neighbour
    # counts; with the same uniforms both paths must give the same states.
    lat = lattice_model((3, 4), 4, periodic=False)
    dense = dense_model(n=5, q=4, pattern=ring_pattern(5))
    key = jax.random.key(0)
    rng = np.random.default_rng(1)
    x_lat = jnp.asarray(rng.integers(0, 4, (50, 3, 4)), jnp.float64)
    x_dense = jnp.asarray(rng.integers(0, 4, (50, 5)), jnp.float64)

    def run(lat, dense):  # traced afresh for each path (a new jit wrapper each call)
        return jax.jit(
            lambda lat, dense: (
                lat.conditional_logits(x_lat, 0.7),
                lat.gibbs_sweep(key, x_lat, 0.7),
                dense.gibbs_sweep(key, x_dense, 0.7),
            )
        )(lat, dense)

    unrolled = run(lat, dense)
    monkeypatch.setattr(potts, "_MAX_UNROLLED_STATES", 2)
    general = run(lat, dense)
    np.testing.assert_allclose(general[0], unrolled[0], rtol=1e-12)
    np.testing.assert_array_equal(general[1], unrolled[1])
    np.testing.assert_array_equal(general[2], unrolled[2])


def test_broadcast_couplings_give_the_same_sweep():
    # Unbatched couplings with batched fields (one matrix product) and the same couplings
    # broadcast to the batch (a batched product) are the same kernel: same uniforms, same
    # states (float rounding could only matter at a CDF boundary, which these draws miss).
    model = dense_model(n=5, q=3, pattern=ring_pattern(5), batch=(2,))
    shared = PottsModel(model.couplings[0], model.fields)
    broadcast = PottsModel(jnp.broadcast_to(model.couplings[0], (2, 5, 5)), model.fields)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (64, 2, 5)), jnp.float32)
    sweep = jax.jit(lambda d, k, x: d.gibbs_sweep(k, x))
    np.testing.assert_array_equal(
        sweep(shared, jax.random.key(1), x), sweep(broadcast, jax.random.key(1), x)
    )
    np.testing.assert_allclose(energy_of(shared, x), energy_of(broadcast, x), rtol=1e-6)


def test_numpyro_sample_site_log_density():
    from numpyro.infer.util import log_density

    model = dense_model(n=4, q=3)
    x = jnp.asarray([0, 2, 1, 1])

    def program():
        numpyro.sample("x", model, obs=x)

    value, _ = log_density(program, (), {}, {})
    np.testing.assert_allclose(value, model.log_prob(x), rtol=1e-6)


# ---------------------------------------------------------------------- colourings
def test_colorings():
    sparse = dense_model(n=5, q=3, pattern=ring_pattern(5))
    assert sparse.num_colors == 3
    assert check_coloring(ring_pattern(5), sparse.coloring)
    assert dense_model(n=4, q=3).num_colors == 4  # every pair coupled
    chosen = dense_model(n=5, q=3, pattern=ring_pattern(5), coloring=np.arange(5))
    assert chosen.update_blocks == tuple((i,) for i in range(5))
    cases = [((4, 4), True), ((3, 3), True), ((2, 3), False), ((3, 5, 4), True), ((3, 3, 3), True)]
    for shape, periodic in cases:
        lat = PottsModel.lattice(shape, 3, 0.5, periodic=periodic)
        expected = lattice_coloring(shape, periodic)
        np.testing.assert_array_equal(lat.coloring, expected)
        assert lat.num_colors == len(np.unique(expected))
        # The sweep computes the colour map in the program: it must be the same one.
        np.testing.assert_array_equal(jax.jit(lat._color_map)(), expected)


# ---------------------------------------------------------------------- validation
def _sym(a):
    a = np.asarray(a, float)
    return a + a.T


BAD_PARAMETERS = [
    ("couplings", lambda: PottsModel(np.triu(np.ones((3, 3)), 1), np.zeros((3, 2)))),
    ("couplings", lambda: PottsModel(np.eye(3) + _sym(np.triu(np.ones((3, 3)), 1)), num_states=2)),
    ("couplings", lambda: PottsModel(np.zeros((3, 4)), num_states=2)),
    ("couplings", lambda: PottsModel(np.full((3, 3), np.nan), num_states=2)),
    ("fields", lambda: PottsModel(np.zeros((3, 3)), np.zeros((4, 2)))),
    ("fields", lambda: PottsModel(np.zeros((3, 3)), np.zeros((3, 1)))),
    ("fields", lambda: PottsModel(np.zeros((3, 3)), np.array([[0.0, np.nan]] * 3))),
    ("num_states", lambda: PottsModel(np.zeros((3, 3)))),
    ("num_states", lambda: PottsModel(np.zeros((3, 3)), np.zeros((3, 2)), num_states=3)),
    (
        "coloring",
        lambda: PottsModel(_sym(np.triu(np.ones((3, 3)), 1)), coloring=[0, 0, 1], num_states=2),
    ),
    ("coloring", lambda: PottsModel(np.zeros((3, 3)), num_states=2, coloring=[0, 1])),
    ("shape", lambda: PottsModel.lattice((5,), 3, 0.5)),
    ("shape", lambda: PottsModel.lattice((5, 1), 3, 0.5)),
    ("num_states", lambda: PottsModel.lattice((3, 3), 1, 0.5)),
    ("coupling", lambda: PottsModel.lattice((3, 3), 2, np.inf)),
    ("fields", lambda: PottsModel.lattice((3, 3), 2, 0.5, 0.3)),
    ("fields", lambda: PottsModel.lattice((3, 3), 2, 0.5, np.zeros(3))),
    ("fields", lambda: PottsModel.lattice((3, 3), 2, 0.5, np.zeros((2, 3, 2)))),
    ("batch shapes", lambda: PottsModel.lattice((3, 3), 2, np.zeros(3), np.zeros((2, 1, 1, 2)))),
]


@pytest.mark.parametrize(("name", "build"), BAD_PARAMETERS)
def test_bad_parameters_raise_value_error_naming_the_argument(name, build):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize("value", [[0, 1, 3, 0], [0, -1, 1, 2], [0, 0.5, 1, 2]])
def test_log_prob_rejects_values_outside_support(value):
    model = dense_model(n=4, q=3)
    with pytest.raises(ValueError, match=r"value must take values.*integers 0\.\.2"):
        model.log_prob(jnp.asarray(value))
    lat = lattice_model((2, 2), 3)
    with pytest.raises(ValueError, match="value must take values"):
        lat.log_prob(jnp.asarray(value).reshape(2, 2))
    with pytest.raises(ValueError, match="shape"):
        lat.log_prob(jnp.zeros((4,), jnp.int32))


def test_validate_args_false_skips_checks_and_traced_couplings_stay_consistent(x64):
    # Unvalidated (or traced) couplings are used through their symmetric, zero-diagonal part,
    # so the energy and the conditionals the sampler uses still agree.
    raw = np.triu(random_couplings(0, 4), 1) * 2 + 3 * np.eye(4)
    model = PottsModel(raw, np.zeros((4, 3)), validate_args=False)
    clean = PottsModel(random_couplings(0, 4), np.zeros((4, 3)))
    x = states_of(model)
    np.testing.assert_allclose(energy_of(model, x), energy_of(clean, x), atol=1e-12)
    np.testing.assert_allclose(logits_of(model, x, 1.0), logits_of(clean, x, 1.0))


# ---------------------------------------------------------------------- pytrees, dtypes
def test_jit_vmap_scan_round_trip_keeps_static_coloring():
    model = dense_model(n=5, q=3, pattern=ring_pattern(5), batch=(2,))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (3, 2, 5)))
    expected = energy_of(model, x)
    via_jit = jax.jit(lambda d: d)(model)
    assert via_jit._coloring == model._coloring and via_jit.num_states == 3
    carried, _ = lax.scan(lambda d, _: (d, None), model, None, length=2)
    assert carried._coloring == model._coloring

    @jax.jit
    def batched(model, keys, x):
        energies = jax.vmap(lambda d, x: d.energy(x), in_axes=(None, 0))(model, x)
        return energies, jax.vmap(lambda k: model.gibbs_sweep(k, x))(keys)

    energies, swept = batched(model, jax.random.split(jax.random.key(1), 4), x)
    np.testing.assert_allclose(energies, expected, rtol=1e-6)
    assert swept.shape == (4, 3, 2, 5)

    # Traced couplings cannot be coloured on the host: one colour per unit, still valid.
    def build(couplings):
        inner = PottsModel(couplings, model.fields)
        assert inner.update_blocks == tuple((i,) for i in range(5))
        return inner.energy(x)

    np.testing.assert_allclose(jax.jit(build)(model.couplings), expected, rtol=1e-6)

    lat = lattice_model((4, 4), 2, batch=(2,))
    y = jnp.zeros((3, 2, 4, 4))
    lat_out, y = jax.jit(lambda d, k, x: (d, d.gibbs_sweep(k, x)))(lat, jax.random.key(3), y)
    assert lat_out.periodic and lat_out.event_shape == (4, 4) and lat_out.num_states == 2
    assert y.shape == (3, 2, 4, 4)


def test_float64_and_float32(x64):
    model = dense_model(n=4, q=3)
    assert model.chain_dtype == jnp.float64
    assert log_prob_of(model, jnp.zeros(4, jnp.int32)).dtype == jnp.float64

    @jax.jit
    def run(model, key):
        x = model.random_state(key, (2,))
        return x, model.gibbs_sweep(key, x)

    x, y = run(model, jax.random.key(0))
    assert x.dtype == y.dtype == jnp.float64
    lat = PottsModel.lattice((4, 4), 3, jnp.float32(0.5), jnp.zeros(3, jnp.float32))
    assert lat.chain_dtype == jnp.float32
    x, y = run(lat, jax.random.key(1))
    assert x.dtype == y.dtype == jnp.float32
    assert jax.jit(lat.energy)(y).dtype == jnp.float32


def test_large_lattice_is_stored_structurally():
    shape = (1024, 1024)
    lat = PottsModel.lattice(shape, 3, 0.5, jnp.asarray([0.1, 0.0, -0.1]))
    assert sum(np.size(leaf) for leaf in jax.tree.leaves(lat)) < 10
    energy = jax.jit(lat.energy)(jnp.zeros(shape, jnp.int32))
    # 2 * 1024**2 bonds, all satisfied, and the field of state 0 at every site.
    np.testing.assert_allclose(energy, -0.5 * 2 * 1024**2 - 0.1 * 1024**2, rtol=1e-6)
