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

from numpyro_ebm import BernoulliRBM, IsingModel, PottsModel, all_states
from numpyro_ebm.infer import EBMGibbs, EBMSiteGibbs
from numpyro_ebm.infer.priors import gwg_flip_log_probs, unit_evidence

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


def exact_posterior(prior, design, y):
    """Posterior of the binary site and of mu for ``y ~ Normal(design(x) + mu, NOISE)``,
    ``mu ~ Normal(0, PRIOR_SCALE)``: enumeration over x times the conjugate Gaussian integral
    over mu. Returns the mean of every unit, their sd, the mean and sd of mu (float64)."""
    states = np.asarray(all_states(prior), np.float64)
    flat = states.reshape(len(states), -1)
    log_prior = np.asarray(prior.log_prob(all_states(prior)), np.float64)
    y = np.asarray(y, np.float64)
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
    2^10 (RBM) or 2^9 (Ising) states times the conjugate Gaussian integral over mu. Each
    error must be within 4 Monte Carlo standard errors, sd_exact / sqrt(ESS) with the bulk
    ESS of arviz over 2 chains: 11 or 10 checks at 4 sigma give a family-wise false-alarm
    rate below 1e-3. ESS must exceed 150 so that the check has power. Where the likelihood
    factorizes, the Metropolis-Hastings-tested block proposals must all be accepted."""
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
    if case.startswith("rbm"):
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
