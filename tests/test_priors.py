"""EBM priors inside NumPyro models: EBMGibbs / EBMSiteGibbs against exact enumeration."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import stationary_defect
from numpyro.infer import MCMC, Predictive
from numpyro.infer.gibbs import conditioned

from numpyro_ebm import BernoulliRBM, BoltzmannMachine, IsingModel, PottsModel, all_states
from numpyro_ebm.infer import EBMGibbs, EBMSiteGibbs
from numpyro_ebm.infer.priors import (
    _sum_log_probs,
    _trace_at,
    gwg_flip_log_probs,
    per_unit_evidence,
    unit_evidence,
)

# ---------------------------------------------------------------------------- models
RBM = BernoulliRBM(
    1.0 * jax.random.normal(jax.random.key(0), (10, 3)),
    0.3 * jax.random.normal(jax.random.key(1), (10,)),
    0.2 * jax.random.normal(jax.random.key(2), (3,)),
)
RBM_Y = jnp.asarray([0.9, 0.1, 1.2, -0.2, 0.4, 0.8, 1.1, 0.0, 0.5, 0.7])
ISING = IsingModel.lattice((3, 3), coupling=0.3, field=0.1, periodic=False)
MIX = 0.7 * jax.random.normal(jax.random.key(3), (4, 9))  # couples all spins: no factorization
WEAK_MIX = 0.2 * MIX  # still couples all spins, but weakly: block proposals get accepted
MID_MIX = 0.4 * MIX  # a unimodal enough posterior for single flips to mix in a short run
ISING_Y = jnp.asarray([1.0, -0.5, 0.3, 2.0])
NOISE = 0.6  # observation noise
PRIOR_SCALE = 1.0  # mu ~ Normal(0, PRIOR_SCALE)


def rbm_model(y=None):
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v + mu, NOISE).to_event(1), obs=y)


def ising_model(y=None, mix=MIX):
    s = numpyro.sample("s", ISING)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(mix @ s.reshape(-1) + mu, NOISE).to_event(1), obs=y)


def weakly_mixing_ising_model(y=None):
    ising_model(y, WEAK_MIX)


def mixing_ising_model(y=None):
    ising_model(y, MID_MIX)


BM_COUPLINGS = 0.8 * jax.random.normal(jax.random.key(12), (6, 6))
BM = BoltzmannMachine(
    (BM_COUPLINGS + BM_COUPLINGS.T) * (1 - jnp.eye(6)),
    0.3 * jax.random.normal(jax.random.key(13), (6,)),
)
BM_Y = jnp.asarray([1.1, -0.1, 0.9, 0.3, 0.6, 1.4])
SMALL_RBM = BernoulliRBM(
    jax.random.normal(jax.random.key(14), (4, 2)), jnp.asarray([0.3, -0.2, 0.1, 0.0])
)
PLATE_Y = jnp.asarray([[0.9, 0.1, 1.2, -0.2], [0.4, 0.8, 1.1, 0.0]])


def bm_model(y=None):
    v = numpyro.sample("v", BM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v + mu, NOISE).to_event(1), obs=y)


def plate_model(y=None):
    with numpyro.plate("images", 2):  # two independent images, one prior
        v = numpyro.sample("v", SMALL_RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v + mu, NOISE).to_event(2), obs=y)


class _PlatePrior:
    """Two independent draws of SMALL_RBM, seen as one prior over 8 units (for enumeration)."""

    @staticmethod
    def states_and_log_prob():
        states = np.asarray(all_states(SMALL_RBM), np.float64)
        log_prob = np.asarray(SMALL_RBM.log_prob(all_states(SMALL_RBM)), np.float64)
        joint = np.concatenate(
            [np.repeat(states, len(states), 0), np.tile(states, (len(states), 1))], 1
        )
        return joint, (log_prob[:, None] + log_prob[None, :]).reshape(-1)


def exact_posterior(prior, design, y):
    """Posterior of the binary site and of mu for ``y ~ Normal(design(x) + mu, NOISE)``,
    ``mu ~ Normal(0, PRIOR_SCALE)``: enumeration over x times the conjugate Gaussian integral
    over mu. Returns the mean of every unit, their sd, the mean and sd of mu (float64)."""
    if isinstance(prior, _PlatePrior):
        flat, log_prior = prior.states_and_log_prob()
    else:
        states = np.asarray(all_states(prior), np.float64)
        flat = states.reshape(len(states), -1)
        log_prior = np.asarray(prior.log_prob(all_states(prior)), np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    m = y.size
    resid = y[None, :] - np.stack([np.asarray(design(s), np.float64) for s in flat])
    # y - design(x) ~ N(0, NOISE^2 I + PRIOR_SCALE^2 11^T): Sherman-Morrison in closed form
    s2, t2 = NOISE**2, PRIOR_SCALE**2
    quad = (resid**2).sum(1) / s2 - t2 * resid.sum(1) ** 2 / (s2 * (s2 + m * t2))
    logdet = m * np.log(s2) + np.log1p(m * t2 / s2)
    log_post = log_prior - 0.5 * quad - 0.5 * logdet
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    precision = 1 / t2 + m / s2
    mu_mean = resid.sum(1) / s2 / precision
    mean_mu = w @ mu_mean
    var_mu = w @ (1 / precision + mu_mean**2) - mean_mu**2
    mean_x = w @ flat
    var_x = w @ flat**2 - mean_x**2
    return mean_x, np.sqrt(var_x), mean_mu, np.sqrt(var_mu)


# ---------------------------------------------------------------------------- posterior
CASES = {
    "rbm-factorized": (rbm_model, RBM_Y, "v", RBM, lambda x: x, dict(factorized=True)),
    "rbm-metropolized": (rbm_model, RBM_Y, "v", RBM, lambda x: x, dict(factorized=None)),
    "dense-bm-factorized": (bm_model, BM_Y, "v", BM, lambda x: x, dict(factorized=True)),
    "rbm-under-plate-factorized": (
        plate_model,
        PLATE_Y,
        "v",
        _PlatePrior(),
        lambda x: x,
        dict(factorized=True),
    ),
    "ising-weak-mixing-metropolized": (
        weakly_mixing_ising_model,
        ISING_Y,
        "s",
        ISING,
        lambda x: np.asarray(WEAK_MIX, np.float64) @ x,
        dict(factorized=None),
    ),
    "ising-mixing-gwg": (
        mixing_ising_model,
        ISING_Y,
        "s",
        ISING,
        lambda x: np.asarray(MID_MIX, np.float64) @ x,
        dict(factorized=False, num_flips=9),
    ),
}


NUM_DRAWS = 1000


@pytest.mark.parametrize("case", list(CASES))
def test_posterior_marginals_match_enumeration(case):
    """Posterior means of every binary unit and of the continuous mu against enumeration over
    2^10 (RBM), 2^9 (Ising), 2^6 (dense Boltzmann machine) or 2^8 (two RBM images under a
    plate) states times the conjugate Gaussian integral over mu. Each error must be within 4
    Monte Carlo standard errors, sd_exact / sqrt(ESS) with the bulk ESS of arviz over 2
    chains: at most 11 checks at 4 sigma give a family-wise false-alarm rate below 1e-3.
    ESS must exceed 150 so that the check has power. Where the likelihood factorizes, the
    Metropolis-Hastings-tested block proposals must all be accepted."""
    model, y, site, prior, design, options = CASES[case]
    mcmc = MCMC(
        EBMGibbs(model, **options),
        num_warmup=200,
        num_samples=NUM_DRAWS,
        num_chains=2,
        chain_method=jax.vmap,
        progress_bar=False,
    )
    mcmc.run(jax.random.key(5), y, extra_fields=("ebm_accept_prob",))
    draws = mcmc.get_samples(group_by_chain=True)
    mean_x, sd_x, mean_mu, sd_mu = exact_posterior(prior, design, y)
    x = np.asarray(draws[site], np.float64).reshape(2, NUM_DRAWS, -1)
    for i in range(x.shape[-1]):
        ess = float(az.ess(x[..., i])) if sd_x[i] > 1e-3 else x[..., i].size
        assert ess > 150, (case, i, ess)
        err = abs(x[..., i].mean() - mean_x[i])
        assert err < 4 * sd_x[i] / np.sqrt(ess) + 1e-6, (case, i, err, sd_x[i], ess)
    mu = np.asarray(draws["mu"], np.float64)
    ess = float(az.ess(mu))
    assert ess > 150
    assert abs(mu.mean() - mean_mu) < 4 * sd_mu / np.sqrt(ess)
    accept = np.asarray(mcmc.get_extra_fields()["ebm_accept_prob"])
    if case.startswith(("rbm", "dense")):
        # the likelihood factorizes: the block proposal is the exact conditional
        np.testing.assert_allclose(accept, 1.0, atol=1e-4)
    else:
        print(case, "mean acceptance", accept.mean())


def test_predictive_and_arviz_on_ebm_sites():
    """Prior and posterior predictive draws of the EBM site; ArviZ conversion of an
    EBMGibbs run with the usual sample stats."""
    prior = Predictive(rbm_model, num_samples=30)(jax.random.key(6))
    assert prior["v"].shape == (30, 10) and prior["y"].shape == (30, 10)
    assert set(np.unique(np.asarray(prior["v"]))) <= {0, 1}

    mcmc = MCMC(
        EBMGibbs(rbm_model, factorized=True),
        num_warmup=20,
        num_samples=40,
        num_chains=2,
        chain_method=jax.vmap,
        progress_bar=False,
    )
    mcmc.run(
        jax.random.key(7),
        RBM_Y,
        extra_fields=("potential_energy", "accept_prob", "diverging", "ebm_accept_prob"),
    )
    posterior = mcmc.get_samples()
    predictive = Predictive(rbm_model, posterior_samples=posterior)(jax.random.key(8))
    assert predictive["y"].shape == (80, 10)
    idata = az.from_numpyro(mcmc)
    assert idata.posterior["v"].shape == (2, 40, 10)
    assert idata.posterior["mu"].shape == (2, 40)
    for stat in ("lp", "acceptance_rate", "diverging", "ebm_accept_prob"):
        assert stat in idata.sample_stats, stat
    # lp is the model's log density (up to log Z and the Jacobian of mu's identity transform)
    v, mu = posterior["v"][-1], posterior["mu"][-1]
    log_joint = (
        -RBM.free_energy(v)
        - RBM.log_partition
        + dist.Normal(0, 1).log_prob(mu)
        + dist.Normal(v + mu, NOISE).to_event(1).log_prob(RBM_Y)
    )
    np.testing.assert_allclose(idata.sample_stats["lp"].values[-1, -1], log_joint, rtol=1e-4)


# ---------------------------------------------------------------------------- invariance
def test_rbm_block_update_leaves_conditional_invariant():
    """The factorized RBM update (h ~ p(h | v), v ~ Bernoulli(b + W h + l)) as an exact
    transition matrix over the 2^4 visible states, with a per-unit Gaussian likelihood
    evaluated through unit_evidence: pi T == pi to float precision."""
    rbm = BernoulliRBM(
        jax.random.normal(jax.random.key(9), (4, 2)), jnp.asarray([0.3, -0.2, 0.1, 0.0])
    )
    y = jnp.asarray([0.8, 0.2, -0.4, 1.3])

    def log_rest(v):
        return dist.Normal(v, 0.7).log_prob(y).sum()

    vs = all_states(rbm).astype(jnp.float32)  # (16, 4)
    hs = jnp.asarray([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
    log_pi = np.asarray(-rbm.free_energy(vs) + jax.vmap(log_rest)(vs), np.float64)
    pi = np.exp(log_pi - log_pi.max())
    pi /= pi.sum()
    evidence = jax.vmap(lambda v: unit_evidence(log_rest, v, 0.0, 1.0)[0])(vs)  # (16, 4)
    p_h = jax.nn.sigmoid(rbm.visible_to_hidden(vs))  # (16, 2)
    w_h = jnp.prod(jnp.where(hs[None] > 0, p_h[:, None], 1 - p_h[:, None]), -1)  # (16, 4)
    p_v = jax.nn.sigmoid(rbm.hidden_to_visible(hs)[None] + evidence[:, None])  # (16, 4, 4)
    q = jnp.prod(jnp.where(vs[None, None] > 0, p_v[:, :, None], 1 - p_v[:, :, None]), -1)
    transition = np.einsum("ak,akb->ab", np.asarray(w_h, np.float64), np.asarray(q, np.float64))
    assert stationary_defect(pi, transition) < 1e-6


def test_gibbs_with_gradients_leaves_conditional_invariant():
    """One Gibbs-with-gradients flip (proposal softmax(d/2), Metropolis-Hastings test) as an
    exact transition matrix over the 2^4 states of an Ising model with a likelihood that
    couples all spins (so the per-unit evidence is not exact): pi T == pi."""
    a = 0.4 * jax.random.normal(jax.random.key(10), (4, 4))
    ising = IsingModel((a + a.T) * (1 - jnp.eye(4)), jnp.full(4, 0.1))
    mix = jax.random.normal(jax.random.key(11), (2, 4))
    y = jnp.asarray([0.5, -1.0])

    def log_target(x):
        return -ising.energy(x) + dist.Normal(mix @ x, 0.8).log_prob(y).sum()

    xs = all_states(ising).astype(jnp.float32)
    log_pi = np.asarray(jax.vmap(log_target)(xs), np.float64)
    pi = np.exp(log_pi - log_pi.max())
    pi /= pi.sum()
    codes = {tuple(np.asarray(x).tolist()): k for k, x in enumerate(xs)}
    transition = np.zeros((16, 16))
    for a, x in enumerate(xs):
        log_q = gwg_flip_log_probs(jax.grad(log_target)(x), x, -1.0, 1.0)
        for i in range(4):
            new = x.at[i].set(-x[i])
            log_q_back = gwg_flip_log_probs(jax.grad(log_target)(new), new, -1.0, 1.0)[i]
            log_ratio = log_pi[codes[tuple(np.asarray(new).tolist())]] - log_pi[a]
            accept = min(1.0, float(np.exp(log_ratio + log_q_back - log_q[i])))
            transition[a, codes[tuple(np.asarray(new).tolist())]] += (
                float(np.exp(log_q[i])) * accept
            )
        transition[a, a] += 1 - transition[a].sum()
    assert stationary_defect(pi, transition) < 1e-6


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_are_refused():
    def no_ebm():
        numpyro.sample("x", dist.Normal())

    with pytest.raises(ValueError, match="EnergyBasedDistribution"):
        EBMSiteGibbs(no_ebm).init(jax.random.key(0), 0, None, (), {})
    with pytest.raises(ValueError, match="inner_kernel"):
        EBMGibbs(rbm_model, inner_kernel=EBMSiteGibbs(rbm_model))
    with pytest.raises(ValueError, match="factorized"):
        EBMSiteGibbs(rbm_model, factorized="yes")

    potts = PottsModel(jnp.zeros((3, 3)), jnp.zeros((3, 3)))

    def potts_model():
        numpyro.sample("x", potts)

    with pytest.raises(ValueError, match="binary families"):
        EBMSiteGibbs(potts_model).init(jax.random.key(0), 0, None, (), {})


# ---------------------------------------------------------------------------- O(n) evidence
def _summed_model(y=None):
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v.sum() + mu, NOISE), obs=y[0])


def _permuted_model(y=None):
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v[::-1] + mu, NOISE).to_event(1), obs=y)


def _broadcast_model(y=None):
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    numpyro.sample("y", dist.Normal(v.mean() + mu, NOISE).expand([10]).to_event(1), obs=y)


def _indexed_model(y=None):  # a permutation through integer indexing: no gradient to see
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    means = jnp.asarray([0.0, 1.0])[v[::-1].astype(jnp.int32)]
    numpyro.sample("y", dist.Normal(means + mu, NOISE).to_event(1), obs=y)


def _masked_scaled_model(y=None):  # per unit, with a partial mask, a scale, a second site
    v = numpyro.sample("v", RBM)
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    mask = jnp.arange(10) % 3 != 0
    with numpyro.handlers.scale(scale=0.7):
        numpyro.sample("y", dist.Normal(v + mu, NOISE).mask(mask).to_event(1), obs=y)
    with numpyro.plate("repeats", 2, dim=-2):
        numpyro.sample("z", dist.Bernoulli(probs=0.2 + 0.6 * v), obs=jnp.ones((2, 10)))


def _init_block(model, y, factorized=True):
    kernel = EBMGibbs(model, factorized=factorized)
    kernel.init(jax.random.key(0), 0, None, (y,), {})
    return kernel.blocks[0][0]


@pytest.mark.parametrize("model", [rbm_model, _masked_scaled_model])
def test_per_unit_fast_path_is_taken_and_exact(model):
    """On per-unit likelihoods (the denoising model; a masked, scaled one with a second
    observed site under a plate) EBMSiteGibbs reads the evidence off elementwise, and that
    equals the general pass (n + 1 evaluations) at random configurations and values of mu:
    a deterministic check, to float32 rounding of sums of about 10 terms."""
    block = _init_block(model, RBM_Y)
    expected = ("y",) if model is rbm_model else ("y", "z")
    assert block.per_unit_sites == {"v": expected}
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = jnp.asarray(rng.integers(0, 2, 10), jnp.float32)
        values = {"mu": jnp.asarray(rng.normal(), jnp.float32)}

        def log_rest(x, values=values):
            model_trace = _trace_at(conditioned(model), (RBM_Y,), {}, {**values, "v": x})
            return _sum_log_probs(model_trace, exclude=("v",))

        general, _ = unit_evidence(log_rest, v, 0.0, 1.0)
        fast = per_unit_evidence(conditioned(model), (RBM_Y,), {}, values, "v", expected, v, 0, 1)
        np.testing.assert_allclose(fast, general, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "model", [_summed_model, _permuted_model, _broadcast_model, _indexed_model]
)
def test_coupled_likelihoods_get_the_general_pass(model):
    """Likelihoods in which a unit enters other elements (a sum, a permutation, a broadcast
    mean, a permutation through integer indexing, invisible to gradients) are refused the
    elementwise path, in both modes that use it."""
    for factorized in (True, None):
        assert _init_block(model, RBM_Y, factorized).per_unit_sites == {"v": None}


def test_masked_or_scaled_ebm_site_is_refused():
    def masked(y=None):
        v = numpyro.sample("v", RBM.mask(jnp.asarray(False)))
        numpyro.sample("y", dist.Normal(v, NOISE).to_event(1), obs=y)

    def scaled(y=None):
        with numpyro.handlers.scale(scale=2.0):
            v = numpyro.sample("v", RBM)
        numpyro.sample("y", dist.Normal(v, NOISE).to_event(1), obs=y)

    for model in (masked, scaled):
        with pytest.raises(ValueError, match="masked or scaled"):
            EBMSiteGibbs(model).init(jax.random.key(0), 0, None, (RBM_Y,), {})
