"""Relaxed HMC (Gaussian integral trick) against block Gibbs on strongly coupled dense
Boltzmann machines: effective sample size of the energy per second.

Models: dense ``{0, 1}`` Boltzmann machines with ``n`` units, couplings ``N(0, 2)``
(symmetric, zero diagonal) and balanced fields ``a = -W 1 / 2`` (the ``{0, 1}`` form of a
zero-field spin glass, so every state and its complement are equally likely: the hard,
bimodal case). Samplers, in one run on the same models:

- block Gibbs (``GibbsTransition``): one sweep per draw; dense couplings give one unit per
  colour, so a sweep is a ``lax.scan`` over units;
- ``RelaxedHMC`` at a few step sizes / trajectory lengths and shift margins: one trajectory
  per draw (the relaxation, an eigendecomposition and a Cholesky factorization, is rebuilt
  at every step, as under PCD, where the parameters change between steps).

Each runs ``--chains`` chains (vectorized, one ``lax.scan`` under ``jit``) for ``--warmup``
steps, then records the energy for ``--draws`` steps. ESS is ``arviz.ess`` (rank-normalized
bulk ESS) of the ``(chain, draw)`` energy array; time is the wall time of the compiled
warm-up plus sampling run (compilation excluded, measured on a second call), the best of
``--repeats``. The mean energy is compared with the exact value (enumeration, ``n <= 20``)
in units of its Monte Carlo standard error (``z``), a check that every sampler is right.

Run: ``python benchmarks/relaxed_hmc_vs_gibbs.py [--sizes 16 32] [--chains 64] [--json
PATH]``; ``--markdown`` with ``--json PATH`` prints the table of an earlier run's JSON
(:func:`render`) without measuring.
"""

from __future__ import annotations

import argparse

import arviz
import jax
import jax.numpy as jnp
import numpy as np
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    parse_args,
    write_json,
)

from numpyro_ebm import BoltzmannMachine, all_states
from numpyro_ebm.infer import GibbsTransition
from numpyro_ebm.infer.relaxed_hmc import RelaxedHMC


def make_model(n: int, seed: int) -> BoltzmannMachine:
    a = jax.random.normal(jax.random.key(seed), (n, n))
    couplings = (a + a.T) * (1 - jnp.eye(n))  # off-diagonal variance 2
    fields = -jnp.sum(couplings, -1) / 2
    return BoltzmannMachine(couplings, fields)


def exact_mean_energy(bm: BoltzmannMachine) -> float | None:
    if bm.num_units > 20:
        return None
    energy = np.asarray(bm.energy(all_states(bm, max_states=2**20)), np.float64)
    log_w = -energy - np.max(-energy)
    w = np.exp(log_w)
    return float(np.sum(w * energy) / np.sum(w))


def sampler(transition, num_chains: int, num_warmup: int, num_draws: int):
    @jax.jit
    def run(rng_key, bm):
        key_x, key_init, key_warm, key_draw = jax.random.split(rng_key, 4)
        x = bm.random_state(key_x, (num_chains,))
        state = transition.init(key_init, bm, x)

        def step(state, key):
            state = transition.step(key, state, bm)
            x = transition.position(state)
            accept = getattr(state, "accept_prob", jnp.ones(num_chains))
            diverging = getattr(state, "diverging", jnp.zeros(num_chains, bool))
            return state, (bm.energy(x), accept, diverging)

        state, _ = jax.lax.scan(step, state, jax.random.split(key_warm, num_warmup))
        _, (energy, accept, diverging) = jax.lax.scan(
            step, state, jax.random.split(key_draw, num_draws)
        )
        return energy.T, jnp.mean(accept), jnp.sum(diverging)  # (chain, draw)

    return run


def measure(name, transition, bm, args, exact):
    run = sampler(transition, args.chains, args.warmup, args.draws)
    jax.block_until_ready(run(jax.random.key(0), bm))  # compile
    best, others = np.inf, float("nan")
    for r in range(args.repeats):
        watch = Stopwatch()
        energy, accept, divergences = jax.block_until_ready(run(jax.random.key(r + 1), bm))
        seconds, share = watch.read()
        if seconds < best:
            best, others = seconds, share
    energy = np.asarray(energy, np.float64)
    ess = float(arviz.ess(energy))
    z = np.nan
    if exact is not None:
        mcse = float(arviz.mcse(energy))
        z = (energy.mean() - exact) / mcse
    return {
        "n": bm.num_units,
        "sampler": name,
        "ESS": f"{ess:.0f}",
        "ESS/draw": f"{ess / energy.size:.3f}",
        "seconds (best)": f"{best:.3f}",
        "ESS/s": f"{ess / best:.3g}",
        "accept": "-" if name.startswith("block Gibbs") else f"{float(accept):.2f}",
        "divergences": int(divergences),
        "z of mean energy": "-" if np.isnan(z) else f"{z:+.2f}",
        "others' CPU": f"{others:.0%}",
    }


def render(data: dict) -> dict[str, str]:
    """The markdown table of a run from the JSON that ``--json`` writes."""
    return {"rows": markdown_table(data["rows"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, render)
    if args is None:
        return

    samplers = {
        "block Gibbs (1 sweep)": GibbsTransition(),
        "relaxed HMC (default)": RelaxedHMC(),  # step_size 0.5, 12 leapfrog steps
        "relaxed HMC eps=0.25 L=24": RelaxedHMC(step_size=0.25, num_leapfrog=24),
        "relaxed HMC eps=0.8 L=8": RelaxedHMC(step_size=0.8, num_leapfrog=8),
        "relaxed HMC margin=0.01": RelaxedHMC(shift=0.01),
        "relaxed HMC margin=1": RelaxedHMC(shift=1.0),
    }
    info = machine_info()
    print(describe_machine(info), flush=True)
    print(
        f"{args.chains} chains, {args.warmup} warm-up + {args.draws} draws; ESS = arviz.ess "
        "of the energy",
        flush=True,
    )
    rows = []
    for n in args.sizes:
        bm = make_model(n, args.seed)
        exact = exact_mean_energy(bm)
        for name, transition in samplers.items():
            rows.append(measure(name, transition, bm, args, exact))
            print(markdown_table(rows[-1:]), flush=True)
    data = {"machine": info, "rows": rows, "args": vars(args)}
    print("\n" + "\n\n".join(render(data).values()))
    write_json(args.json, data)


if __name__ == "__main__":
    main()
