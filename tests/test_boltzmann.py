"""Boltzmann machines, Ising models and Ising lattices against exact enumeration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue, state_codes, stationary_defect
from jax import lax, random
from scipy.special import expit

from numpyro_ebm.distributions.boltzmann import (
    MAX_COLOR_BLOCKS,
    BoltzmannMachine,
    IsingLattice,
    IsingModel,
)
from numpyro_ebm.distributions.coloring import check_coloring, lattice_coloring
from numpyro_ebm.exact import all_states, exact_log_partition, exact_marginals

# A p-value below this fails a goodness-of-fit test: a correct sampler fails one such test
# with probability 1e-3 (the seeds are fixed, so a passing test keeps passing).
P_MIN = 1e-3
NUM_CHAINS = 4000


# ---------------------------------------------------------------------- tiny models
def random_couplings(seed, n, *, scale=0.7, density=1.0, batch=()):
    rng = np.random.default_rng(seed)
    j = rng.normal(scale=scale, size=(*batch, n, n))
    mask = np.triu(rng.uniform(size=(n, n)) < density, 1)
    j = np.where(mask | mask.T, j + np.swapaxes(j, -1, -2), 0.0) / 2
    return j, rng.normal(scale=0.5, size=(*batch, n))


def ring_couplings(n, value=0.8):
    """A ring of n units (even n: 2 colours) plus no other bonds."""
    j = np.zeros((n, n))
    for i in range(n):
        j[i, (i + 1) % n] = j[(i + 1) % n, i] = value * (-1) ** i
    return j


def dense_bm(dtype=np.float64):
    j, h = random_couplings(0, 5)
    return BoltzmannMachine(j.astype(dtype), h.astype(dtype), num_sweeps=30)


def dense_ising(dtype=np.float64):
    j, h = random_couplings(1, 5, scale=0.4)
    return IsingModel(j.astype(dtype), h.astype(dtype), num_sweeps=30)


def sparse_bm():
    rng = np.random.default_rng(2)
    return BoltzmannMachine(ring_couplings(8), rng.normal(size=8) * 0.3, num_sweeps=30)


def batched_bm():
    j, h = random_couplings(3, 4, batch=(2,))
    return BoltzmannMachine(j, h, num_sweeps=30)


def lattice(shape=(3, 3), periodic=True, field=0.1, coupling=0.35):
    return IsingModel.lattice(shape, coupling, field, periodic, num_sweeps=30)


def dense_from_bonds(shape, periodic, coupling):
    """The dense J of a lattice, built here from the bond list independently of the
    library: every site's forward neighbour along every axis of length > 1."""
    n = int(np.prod(shape))
    j = np.zeros((n, n))
    for site in itertools.product(*(range(s) for s in shape)):
        for axis, size in enumerate(shape):
            if size == 1 or (not periodic and site[axis] == size - 1):
                continue
            other = list(site)
            other[axis] = (site[axis] + 1) % size
            a, b = np.ravel_multi_index(site, shape), np.ravel_multi_index(other, shape)
            j[a, b] += coupling
            j[b, a] += coupling
    return j


# ---------------------------------------------------------------------- exact kernels
def transition_matrix(model, beta=1.0, blocks=None):
    """The exact one-sweep kernel composed over the update blocks, built from the per-unit
    conditionals the sweep uses (``conditional_logits``)."""
    states = np.asarray(all_states(model))
    m = states.shape[0]
    n = states[0].size
    high = model.support_values[1]
    logits = model.conditional_logits(jnp.asarray(states, model.chain_dtype), beta)
    p_high = expit(np.asarray(logits, np.float64).reshape(m, n))
    bits = (states.reshape(m, n) == high).astype(np.int64)
    weights = 2 ** np.arange(n - 1, -1, -1, dtype=np.int64)
    codes = bits @ weights
    assert np.array_equal(codes, np.arange(m))
    transition = np.eye(m)
    for block in model.update_blocks if blocks is None else blocks:
        block = np.asarray(block)
        step = np.zeros((m, m))
        base = codes - bits[:, block] @ weights[block]
        for assignment in itertools.product((0, 1), repeat=len(block)):
            a = np.asarray(assignment)
            prob = np.prod(np.where(a, p_high[:, block], 1 - p_high[:, block]), axis=1)
            step[np.arange(m), base + a @ weights[block]] += prob
        transition = transition @ step
    return transition


def exact_probs(model, beta=1.0):
    """exp(-beta E) over all states, normalized; unbatched models."""
    log_w = -beta * np.asarray(model.energy(all_states(model)), np.float64)
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


# ---------------------------------------------------------------------- normalization
NORMALIZED_CASES = {
    "dense_bm": dense_bm,
    "dense_ising": dense_ising,
    "lattice_3x3_periodic": lambda: lattice((3, 3)),
    "lattice_2x4_periodic": lambda: lattice((2, 4)),
    "lattice_3x3_open": lambda: lattice((3, 3), periodic=False),
    "lattice_3d_per_site_field": lambda: lattice(
        (2, 2, 3), field=np.linspace(-0.5, 0.5, 12).reshape(2, 2, 3)
    ),
}


@pytest.mark.parametrize("case", sorted(NORMALIZED_CASES))
def test_log_prob_normalized(x64, case):
    model = NORMALIZED_CASES[case]()
    log_p = model.log_prob(all_states(model))
    assert log_p.dtype == jnp.float64
    assert model.is_normalized
    np.testing.assert_allclose(jax.nn.logsumexp(log_p), 0.0, atol=1e-12)


def test_exact_marginals_shape_and_values(x64):
    model = lattice((2, 3))
    marg = exact_marginals(model)
    assert marg.shape == (2, 3, 2)
    states = np.asarray(all_states(model))
    probs = np.exp(np.asarray(model.log_prob(states)))
    expected = np.einsum("s,sij->ij", probs, (states == 1).astype(float))
    np.testing.assert_allclose(marg[..., 1], expected, atol=1e-12)


# ---------------------------------------------------------------------- lattice energy
@pytest.mark.parametrize(
    "shape,periodic",
    [((3, 3), True), ((2, 4), True), ((3, 4), False), ((2, 2, 3), True), ((4, 1), True)],
)
def test_lattice_energy_matches_dense_bonds(x64, shape, periodic):
    rng = np.random.default_rng(5)
    k = 0.37
    field = rng.normal(size=shape)
    model = IsingModel.lattice(shape, k, field, periodic)
    spins = rng.choice([-1, 1], size=(50, *shape))
    j = dense_from_bonds(shape, periodic, k)
    flat = spins.reshape(50, -1)
    expected = -0.5 * np.einsum("si,ij,sj->s", flat, j, flat) - flat @ field.ravel()
    np.testing.assert_allclose(model.energy(spins), expected, atol=1e-12)
    np.testing.assert_allclose(model.couplings, j, atol=0)
    # The local fields are the exact energy differences of a flip (s_i -> -s_i).
    local = np.asarray(model.local_fields(spins)).reshape(50, -1)
    np.testing.assert_allclose(local, flat @ j + field.ravel(), atol=1e-12)


def test_large_lattice_is_structural():
    model = IsingModel.lattice((1024, 1024), 0.44)
    assert jax.tree.leaves(model)[0].size == 1  # only K and h are stored
    spins = jnp.ones((1024, 1024))
    assert float(jax.jit(model.energy)(spins)) == pytest.approx(-0.44 * 2 * 1024**2, rel=1e-6)
    out = jax.jit(model.gibbs_sweep)(random.key(0), spins)
    assert out.shape == (1024, 1024)
    with pytest.raises(ValueError, match="small lattices"):
        _ = model.couplings
    with pytest.raises(ValueError, match="small lattices"):
        model.to_boltzmann()


# ---------------------------------------------------------------------- stationarity
STATIONARY_CASES = {
    "sparse_bm_blocks": sparse_bm,
    "dense_ising_sequential": dense_ising,
    "dense_bm_sequential": dense_bm,
    "lattice_3x3_periodic": lambda: lattice((3, 3), coupling=0.6),
    "lattice_2x3_open": lambda: lattice((2, 3), periodic=False, coupling=-0.5),
}


@pytest.mark.parametrize("beta", [1.0, 0.6])
@pytest.mark.parametrize("case", sorted(STATIONARY_CASES))
def test_block_kernel_is_stationary(x64, case, beta):
    model = STATIONARY_CASES[case]()
    transition = transition_matrix(model, beta)
    pi = exact_probs(model, beta)
    assert stationary_defect(pi, transition) < 1e-12


def test_sweep_modes_are_exercised():
    # The sparse ring sweeps block by block, the dense models unit by unit (lax.scan).
    blocks = sparse_bm().update_blocks
    assert len(blocks) == 2 and len(blocks) <= MAX_COLOR_BLOCKS
    assert dense_bm().update_blocks == tuple((i,) for i in range(5))


def test_improper_blocks_are_not_stationary(x64):
    # Control: the check can fail. Updating two coupled units together from their
    # conditionals is not a Gibbs step and breaks invariance.
    model = sparse_bm()
    bad = ((0, 1, 2, 4, 6), (3, 5, 7))  # 0 and 1 are coupled
    assert stationary_defect(exact_probs(model), transition_matrix(model, 1.0, bad)) > 1e-3


# ---------------------------------------------------------------------- the sweep itself
ONE_SWEEP_CASES = {
    "sparse_bm_blocks": (sparse_bm, 1.0),
    "dense_ising_sequential": (dense_ising, 1.0),
    "dense_bm_sequential_beta": (dense_bm, 0.5),
    "lattice_3x3_periodic": (lambda: lattice((3, 3), coupling=0.6), 1.0),
    "lattice_2x3_open_beta": (lambda: lattice((2, 3), periodic=False, coupling=-0.5), 1.7),
}


@pytest.mark.parametrize("case", sorted(ONE_SWEEP_CASES))
def test_one_sweep_matches_exact_kernel(x64, case):
    """From one fixed state, the next state of NUM_CHAINS independent sweeps is distributed
    as the row of the exact kernel: chi-square goodness of fit, p > P_MIN."""
    make, beta = ONE_SWEEP_CASES[case]
    model = make()
    transition = transition_matrix(model, beta)
    states = all_states(model)
    start = 5 % states.shape[0]
    x = jnp.broadcast_to(states[start], (NUM_CHAINS, *model.event_shape))
    out = jax.jit(model.gibbs_sweep)(random.key(11), x, beta)
    assert out.dtype == model.chain_dtype
    codes = state_codes(np.asarray(out), model.support_values)
    assert np.all(transition[start, codes] > 0), "a transition the kernel forbids"
    assert chi_square_pvalue(codes, transition[start]) > P_MIN


# ---------------------------------------------------------------------- long-run draws
SAMPLE_CASES = {
    "dense_bm": dense_bm,
    "dense_ising": dense_ising,
    "lattice_3x3": lambda: lattice((3, 3), coupling=0.25),
}


def batched_lattice():
    return IsingModel.lattice((2, 3), jnp.array([0.3, -0.4]), 0.2, num_sweeps=30)


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sample_matches_exact_distribution(case):
    """NUM_CHAINS independent chains of 30 sweeps against the enumerated distribution
    (chi-square, p > P_MIN). The second eigenvalue of the exact kernel (transition_matrix)
    of every model here is below 0.67, so 30 sweeps leave a bias below 1e-5: negligible
    against the sampling noise of 4000 draws."""
    model = SAMPLE_CASES[case]()
    draws = jax.jit(model.sample, static_argnums=1)(random.key(3), (NUM_CHAINS,))
    assert draws.dtype == jnp.int32
    assert draws.shape == (NUM_CHAINS, *model.event_shape)
    codes = state_codes(np.asarray(draws), model.support_values)
    assert chi_square_pvalue(codes, exact_probs(model)) > P_MIN


def test_batched_normalization_and_sample(x64):
    """batch_shape (2,): log_prob is normalized per batch member, and the draws of every
    member match its own exact distribution (chi-square, p > P_MIN)."""
    for model in (batched_bm(), batched_lattice()):
        assert model.batch_shape == (2,)
        states = all_states(model)
        log_p = model.log_prob(states.reshape((states.shape[0], 1, *model.event_shape)))
        assert log_p.shape == (states.shape[0], 2)
        np.testing.assert_allclose(jax.nn.logsumexp(log_p, axis=0), 0.0, atol=1e-12)
        draws = np.asarray(jax.jit(model.sample, static_argnums=1)(random.key(4), (NUM_CHAINS,)))
        assert draws.shape == (NUM_CHAINS, 2, *model.event_shape)
        for b in range(2):
            codes = state_codes(draws[:, b], model.support_values)
            assert chi_square_pvalue(codes, np.exp(np.asarray(log_p[:, b], np.float64))) > P_MIN


@pytest.mark.parametrize("make", [dense_bm, lambda: lattice((2, 3), coupling=0.15)])
def test_tempered_sweeps_match_exp_minus_beta_energy(make):
    """Per-chain beta (sample_shape broadcasting): half the chains at beta=0.4, half at
    beta=2; after 40 sweeps each half matches exp(-beta E) (chi-square, p > P_MIN). The
    exact kernels' second eigenvalues at beta=2 are below 0.67 (bias < 1e-6)."""
    model = make()
    betas = jnp.repeat(jnp.array([0.4, 2.0], model.chain_dtype), NUM_CHAINS)

    @jax.jit
    def run(key):
        key_init, key_run = random.split(key)
        x = model.random_state(key_init, (2 * NUM_CHAINS,))

        def body(x, k):
            return model.gibbs_sweep(k, x, betas), None

        return lax.scan(body, x, random.split(key_run, 40))[0]

    out = np.asarray(run(random.key(8)))
    for half, beta in enumerate((0.4, 2.0)):
        chunk = out[half * NUM_CHAINS : (half + 1) * NUM_CHAINS]
        codes = state_codes(chunk, model.support_values)
        assert chi_square_pvalue(codes, exact_probs(model, beta)) > P_MIN


# ---------------------------------------------------------------------- colourings
def test_greedy_coloring_is_proper_and_few_colors():
    j, h = random_couplings(6, 30, density=0.1)
    model = BoltzmannMachine(j, h)
    assert check_coloring(j != 0, model.coloring)
    assert len(model.update_blocks) < 30
    assert sorted(i for b in model.update_blocks for i in b) == list(range(30))


def test_dense_and_traced_couplings_get_sequential_coloring():
    assert dense_bm().coloring.tolist() == list(range(5))
    seen = []

    @jax.jit
    def energy(j):
        model = BoltzmannMachine(j)
        seen.append(model.coloring.tolist())
        return model.energy(jnp.ones(6))

    energy(jnp.asarray(ring_couplings(6)))
    assert seen == [list(range(6))]  # traced: always-valid one unit per colour


def test_user_coloring_is_validated():
    j = ring_couplings(6)
    model = BoltzmannMachine(j, coloring=[0, 1, 0, 1, 0, 1])
    assert model.update_blocks == ((0, 2, 4), (1, 3, 5))
    with pytest.raises(ValueError, match="coloring is not proper"):
        BoltzmannMachine(j, coloring=[0, 0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="coloring must hold one non-negative integer colour"):
        BoltzmannMachine(j, coloring=[0, 1, 0])


@pytest.mark.parametrize(
    "shape,periodic", [((3, 3), True), ((4, 4), True), ((3, 5), False), ((3, 4, 5), True)]
)
def test_lattice_coloring_is_proper(shape, periodic):
    model = IsingModel.lattice(shape, 1.0, periodic=periodic)
    j = dense_from_bonds(shape, periodic, 1.0)
    assert check_coloring(j != 0, model.coloring.ravel())
    np.testing.assert_array_equal(model.coloring, lattice_coloring(shape, periodic))


# ---------------------------------------------------------------------- conversions
def test_boltzmann_ising_conversion(x64):
    bm = dense_bm()
    ising = bm.to_ising()
    assert isinstance(ising, IsingModel)
    np.testing.assert_allclose(ising.couplings, bm.couplings / 4, atol=1e-15)
    x = all_states(bm)
    # log Z_B = log Z_I + 1.W.1/8 + 1.a/2 (the derived constant, exactly).
    offset = np.sum(bm.couplings) / 8 + np.sum(bm.fields) / 2
    np.testing.assert_allclose(
        exact_log_partition(bm) - exact_log_partition(ising), offset, atol=1e-12
    )
    np.testing.assert_allclose(bm.log_prob(x), ising.log_prob(2 * x - 1), atol=1e-12)
    np.testing.assert_allclose(bm.energy(x), ising.energy(2 * x - 1) - offset, atol=1e-12)
    back = ising.to_boltzmann()
    np.testing.assert_allclose(back.couplings, bm.couplings, atol=1e-14)
    np.testing.assert_allclose(back.fields, bm.fields, atol=1e-14)
    # An attached log Z is carried over with the offset.
    attached = bm.with_log_partition(exact_log_partition(bm)).to_ising()
    np.testing.assert_allclose(attached.log_partition, exact_log_partition(ising), atol=1e-12)


def test_ising_to_boltzmann_batched_and_coloring(x64):
    j, h = random_couplings(9, 4, batch=(2,), density=0.5)
    ising = IsingModel(j, h)
    bm = ising.to_boltzmann()
    assert bm.batch_shape == (2,)
    assert bm.update_blocks == ising.update_blocks
    s = all_states(ising)[:, None]
    offset = np.sum(h, -1) - np.sum(j, (-2, -1)) / 2
    np.testing.assert_allclose(
        exact_log_partition(bm) - exact_log_partition(ising), offset, atol=1e-12
    )
    np.testing.assert_allclose(ising.log_prob(s), bm.log_prob((s + 1) // 2), atol=1e-12)


def test_lattice_to_boltzmann(x64):
    lat = lattice((2, 3), field=np.arange(6.0).reshape(2, 3) / 10)
    bm = lat.to_boltzmann()
    assert bm.event_shape == (6,)
    s = all_states(lat)
    np.testing.assert_allclose(
        lat.log_prob(s), bm.log_prob((s.reshape(-1, 6) + 1) // 2), atol=1e-12
    )


# ---------------------------------------------------------------------- bad input
def test_bad_parameters_raise():
    j = ring_couplings(4)
    with pytest.raises(ValueError, match=r"couplings must be symmetric.*\(J \+ J.T\) / 2"):
        BoltzmannMachine(j + np.triu(np.ones((4, 4)), 1))
    with pytest.raises(ValueError, match=r"couplings must have a zero diagonal.*fields"):
        BoltzmannMachine(j + np.eye(4))
    with pytest.raises(ValueError, match="couplings must have shape"):
        BoltzmannMachine(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="couplings must have shape"):
        IsingModel(np.zeros(4))
    with pytest.raises(ValueError, match="fields must have shape"):
        IsingModel(j, np.zeros(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        BoltzmannMachine(np.stack([j, j]), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="couplings contains 6 non-finite"):
        BoltzmannMachine(np.where(np.eye(4, k=1) + np.eye(4, k=-1) > 0, np.nan, j))
    with pytest.raises(ValueError, match="fields contains"):
        IsingModel(j, np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape must have at least 2 dimensions.*\(L, 1\)"):
        IsingModel.lattice((8,), 0.3)
    with pytest.raises(ValueError, match="shape must hold positive"):
        IsingModel.lattice((3, 0), 0.3)
    with pytest.raises(ValueError, match="coupling contains"):
        IsingModel.lattice((3, 3), np.nan)
    with pytest.raises(ValueError, match="field contains"):
        IsingModel.lattice((3, 3), 0.3, np.full((3, 3), np.inf))
    with pytest.raises(ValueError, match="do not broadcast"):
        IsingModel.lattice((3, 3), np.zeros(2), np.zeros(3))


def test_bad_values_raise():
    bm, ising, lat = dense_bm(np.float32), dense_ising(np.float32), lattice((2, 2))
    with pytest.raises(ValueError, match=r"value must take values in \{0, 1\}"):
        bm.log_prob(jnp.array([0, 1, -1, 1, 0]))
    with pytest.raises(ValueError, match=r"value must take values in \{1, -1\}.*2\*x - 1"):
        ising.log_prob(jnp.array([0, 1, 1, 1, 0]))
    with pytest.raises(ValueError, match="2\\*x - 1"):
        lat.log_prob(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="value must have shape"):
        lat.log_prob(jnp.ones((4,)))
    with pytest.raises(ValueError, match="value must have shape"):
        bm.log_prob(jnp.ones((4,)))


# ---------------------------------------------------------------------- pytrees and dtypes
def test_pytree_round_trip_keeps_coloring():
    model = sparse_bm()
    x = model.random_state(random.key(0), (3,))
    seen = []

    @jax.jit
    def energy(d, v):
        seen.append(d.update_blocks)  # what the traced copy (rebuilt from leaves) sees
        return d.energy(v)

    def body(carry, _):
        return carry, None

    through_jit = jax.jit(lambda d: d)(model)
    through_scan, _ = lax.scan(body, model, None, length=2)
    for d in (through_jit, through_scan, model.with_log_partition(0.0)):
        assert d.update_blocks == model.update_blocks == ((0, 2, 4, 6), (1, 3, 5, 7))
        assert d.num_sweeps == model.num_sweeps
        np.testing.assert_allclose(energy(d, x), energy(model, x), rtol=1e-6)
    assert seen and all(blocks == model.update_blocks for blocks in seen)
    # vmap over fields with concrete couplings keeps the greedy colouring.
    j = jnp.asarray(ring_couplings(8))

    def blocks_and_energy(h):
        d = BoltzmannMachine(j, h)
        seen.append(d.update_blocks)
        return d.energy(x[0])

    seen.clear()
    assert jax.vmap(blocks_and_energy)(jnp.zeros((3, 8))).shape == (3,)
    assert seen == [model.update_blocks]


def test_lattice_pytree_round_trip():
    lat = IsingModel.lattice((2, 3), jnp.array([0.1, 0.2]), jnp.ones((2, 3)), periodic=False)
    back = jax.jit(lambda d: d)(lat)
    carried, _ = lax.scan(lambda d, _: (d, None), lat, None, length=1)
    s = lat.random_state(random.key(0), (4,))
    energy = jax.jit(lambda d, v: d.energy(v))
    for d in (back, carried):
        assert isinstance(d, IsingLattice) and isinstance(d, IsingModel)
        assert d.periodic is False and d.batch_shape == (2,) and d.event_shape == (2, 3)
        np.testing.assert_allclose(energy(d, s), energy(lat, s), rtol=1e-6)


def test_dtypes_float32_default_and_float64(x64):
    # (Sweeps and log_prob in float64 are checked by the x64 tests above.)
    for model in (dense_bm(np.float64), lattice((2, 3))):
        assert model.chain_dtype == jnp.float64
        assert model.random_state(random.key(0), (2,)).dtype == jnp.float64
    assert BoltzmannMachine(np.zeros((3, 3), np.float32)).chain_dtype == jnp.float32
    assert IsingModel.lattice((2, 2), 1).chain_dtype == jnp.float64  # ints -> default float


def test_shapes_and_infer_shapes():
    bm = batched_bm()
    assert BoltzmannMachine.infer_shapes(couplings=(2, 4, 4), fields=(2, 4)) == ((2,), (4,))
    assert IsingModel.infer_shapes(couplings=(4, 4)) == ((), (4,))
    assert IsingLattice.infer_shapes((3, 3), coupling=(2,), field=(2, 3, 3)) == ((2,), (3, 3))
    assert bm.enumerate_support().shape == (2, 2, 4)
    lat = lattice((2, 3))
    assert lat.support.event_dim == 2
    assert lat.enumerate_support(expand=False).shape == (2, 1, 1)
    assert lat.random_state(random.key(0), (5,)).shape == (5, 2, 3)
    assert lat.conditional_logits(jnp.ones((5, 2, 3)), jnp.ones(5)).shape == (5, 2, 3)


def test_log_prob_gradient_is_data_minus_model_statistics(x64):
    # d log p(x) / d a = x - E[x] for a {0,1} Boltzmann machine (exact log Z, differentiable).
    model = sparse_bm()
    x = jnp.asarray([1, 0, 0, 1, 1, 0, 1, 0])

    def log_p(fields):
        return BoltzmannMachine(model.couplings, fields).log_prob(x)

    grad = jax.grad(log_p)(model.fields)
    np.testing.assert_allclose(grad, x - exact_marginals(model)[..., 1], atol=1e-12)


# ---------------------------------------------------------------------- sublattice sweep
def zero_temperature_checkerboard(spins, shape, periodic, coupling, field):
    """A NumPy sweep at infinite beta (every site takes the sign of its local field), colour
    by colour of ``lattice_coloring`` (the checkerboard, plus seam colours on odd periodic
    sides): the reference for the site layout of the lattice sweeps, with neighbour sums
    written from the bond definition independently of the library."""
    s = np.array(spins, np.float64)
    colours = lattice_coloring(shape, periodic)
    d = len(shape)
    for colour in np.unique(colours):
        total = np.zeros_like(s)
        for axis, size in enumerate(shape):
            if size == 1:
                continue
            a = s.ndim - d + axis
            for step in (1, -1):
                neighbour = np.roll(s, -step, a)
                if not periodic:
                    edge = [slice(None)] * s.ndim
                    edge[a] = -1 if step == 1 else 0
                    neighbour[tuple(edge)] = 0
                total += neighbour
        s = np.where(colours == colour, np.sign(field + coupling * total), s)
    return s


@pytest.mark.parametrize(
    ("shape", "periodic", "per_site", "chains"),
    [
        ((4, 6), True, False, 3),  # two colours, even last side: the sublattice sweep
        ((6, 4), False, True, 2),
        ((2, 4, 2), True, True, 2),
        ((3, 2), False, False, 5),  # odd side, open: still two colours
        ((2, 2), True, False, 4),  # periodic sides of 2: both neighbours the same site
        ((5, 8), False, True, 1),
        ((3, 3), True, False, 2),  # odd periodic sides: more colours, the masked sweep
        ((4, 3), False, True, 2),  # odd last side: the masked sweep
    ],
)
def test_lattice_sweep_layout_at_zero_temperature(shape, periodic, per_site, chains):
    """At beta = 1e4 every conditional is exactly 0 or 1 in float32 (|local field| >= 0.05,
    so |logit| >= 1000), so one sweep is deterministic: it must equal the NumPy reference
    site for site, which checks the half-size colour layout and its neighbour sums."""
    rng = np.random.default_rng(sum(shape) + 10 * periodic)
    coupling = 0.3
    # |h + 0.3 n| >= 0.05 for every integer n: h in [0.05, 0.25] or 0.1
    field = rng.uniform(0.05, 0.25, size=shape) if per_site else 0.1
    lat = IsingModel.lattice(shape, coupling, field, periodic)
    spins = np.where(rng.uniform(size=(chains, *shape)) < 0.5, -1.0, 1.0).astype(np.float32)
    out = np.asarray(jax.jit(lat.gibbs_sweep)(random.key(1), spins, 1e4))
    expected = zero_temperature_checkerboard(spins, shape, periodic, coupling, field)
    np.testing.assert_array_equal(out, expected)


SUBLATTICE_CASES = {
    "2x4_periodic": (lambda c: IsingModel.lattice((2, 4), c, 0.2), 0.6, 1.0),
    "4x2_open_per_site_field_beta": (
        lambda c: IsingModel.lattice(
            (4, 2), c, np.linspace(-0.5, 0.5, 8, dtype=c.dtype).reshape(4, 2), False
        ),
        -0.5,
        1.7,
    ),
    "2x2x2_periodic": (lambda c: IsingModel.lattice((2, 2, 2), c, -0.1), 0.35, 1.0),
}


@pytest.mark.parametrize("case", sorted(SUBLATTICE_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sublattice_sweep_matches_exact_kernel(x64, case, dtype):
    """One sweep of NUM_CHAINS independent chains from a fixed state against the row of the
    exact one-sweep kernel (chi-square, p > P_MIN), in float32 (uniforms two per threefry
    block) and float64 (jax.random.uniform)."""
    make, coupling, beta = SUBLATTICE_CASES[case]
    model = make(np.asarray(coupling, dtype))
    assert model.chain_dtype == dtype
    transition = transition_matrix(model, beta)
    states = all_states(model)
    start = 37 % states.shape[0]
    x = jnp.broadcast_to(states[start], (NUM_CHAINS, *model.event_shape))
    out = jax.jit(model.gibbs_sweep)(random.key(12), x, beta)
    assert out.dtype == dtype
    codes = state_codes(np.asarray(out), model.support_values)
    assert np.all(transition[start, codes] > 0), "a transition the kernel forbids"
    assert chi_square_pvalue(codes, transition[start]) > P_MIN


def test_sublattice_batched_couplings_and_per_chain_beta():
    """float32, couplings of batch_shape (2,), half the chains at beta 0.5 and half at
    1.5: after 60 sweeps each (chain half, batch member) matches exp(-beta E) of its own
    lattice (chi-square, p > P_MIN; the exact kernels' second eigenvalues (transition_matrix)
    are at most 0.79, so 60 sweeps leave a bias of order 0.79**60 < 1e-6)."""
    couplings = np.array([0.25, -0.2], np.float32)
    lattices = IsingModel.lattice((2, 4), couplings, 0.15)
    betas = jnp.repeat(jnp.array([0.5, 1.5], jnp.float32), NUM_CHAINS)[:, None]

    @jax.jit
    def run(key):
        key_init, key_run = random.split(key)
        x = lattices.random_state(key_init, (2 * NUM_CHAINS,))

        def body(x, k):
            return lattices.gibbs_sweep(k, x, betas), None

        return lax.scan(body, x, random.split(key_run, 60))[0]

    out = np.asarray(run(random.key(9)))
    assert out.shape == (2 * NUM_CHAINS, 2, 2, 4)
    for half, beta in enumerate((0.5, 1.5)):
        for b, coupling in enumerate(couplings):
            single = IsingModel.lattice((2, 4), coupling, 0.15)
            chunk = out[half * NUM_CHAINS : (half + 1) * NUM_CHAINS, b]
            codes = state_codes(chunk, single.support_values)
            assert chi_square_pvalue(codes, exact_probs(single, beta)) > P_MIN


@pytest.mark.parametrize(
    "make",
    [
        lambda: IsingModel.lattice((2, 4), 0.6, 0.2),  # the sublattice sweep
        lambda: IsingModel.lattice((3, 3), 0.6, 0.1),  # the masked sweep
        sparse_bm,  # colour blocks
        dense_ising,  # sequential scan
    ],
)
def test_chains_from_beta_get_their_own_uniforms(make):
    """One state and NUM_CHAINS inverse temperatures (all 1): the chains come from beta's
    shape and must be independent draws from the row of the exact kernel (chi-square,
    p > P_MIN); shared uniforms would make them all equal."""
    model = make()
    transition = transition_matrix(model, 1.0)
    states = all_states(model)
    start = 21 % states.shape[0]
    betas = jnp.ones((NUM_CHAINS,), model.chain_dtype)
    out = jax.jit(model.gibbs_sweep)(random.key(13), states[start], betas)
    assert out.shape == (NUM_CHAINS, *model.event_shape)
    codes = state_codes(np.asarray(out), model.support_values)
    assert chi_square_pvalue(codes, transition[start]) > P_MIN
