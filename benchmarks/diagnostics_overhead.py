"""What mixing diagnostics cost: per-chain summaries while sampling, a report, the monitor.

Three measurements, each variant timed side by side in the same run (alternating, repeated)
so that the ratios compare like with like on a shared machine:

1. block Gibbs on a 64 x 16 RBM (100 chains, 1,000 sweeps in one ``lax.scan``), keeping
   nothing per step against :func:`numpyro_ebm.diagnostics.trace_gibbs`, which keeps the
   energy and mean activation of every chain at every step;
2. :func:`numpyro_ebm.diagnostics.report` on 8 chains x 1,000 draws of both quantities
   (ArviZ R-hat, bulk and tail ESS, MCSE, on the host), and one monitor diagnosis
   (:func:`numpyro_ebm.diagnostics.diagnose`: 100 PCD steps on a copy of 100 chains, then
   the report);
3. ``fit`` on binarized scikit-learn digits (1,437 examples, batch 32, PCD with 100 chains,
   20 epochs = 880 updates, compilation included) without a monitor, and with
   ``Monitor(every=10)`` and ``Monitor(every=1)`` (100 diagnostic steps each time).

Each row gives the median over repeats taken while other processes used less than 10% of
the machine ("quiet"), the median over all repeats, and the others' mean CPU share.

Run: ``python benchmarks/diagnostics_overhead.py [--repeats 5] [--json PATH]`` (a few
minutes on 2 cores); ``--markdown`` with ``--json PATH`` prints the table of an earlier
run's JSON (:func:`render`) without measuring.
"""

from __future__ import annotations

import argparse
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    parse_args,
    quiet_median,
    write_json,
)
from jax import lax, random
from sklearn.datasets import load_digits

from numpyro_ebm import BernoulliRBM
from numpyro_ebm.diagnostics import MixingWarning, Monitor, diagnose, report, trace_gibbs
from numpyro_ebm.infer import PCD
from numpyro_ebm.train import fit

COLUMNS = (
    "variant",
    "seconds (quiet median)",
    "quiet runs",
    "seconds (median, all)",
    "ratio to baseline (all)",
    "others' CPU",
)


def _row(name, samples, baseline=None):
    quiet, num_quiet = quiet_median(samples)
    all_median = float(np.median([t for t, _ in samples]))
    row = {
        "variant": name,
        "seconds (quiet median)": quiet,
        "quiet runs": f"{num_quiet}/{len(samples)}",
        "seconds (median, all)": all_median,
        "ratio to baseline (all)": "-" if baseline is None else all_median / baseline,
        "others' CPU": f"{100 * np.mean([s for _, s in samples]):.0f}%",
    }
    return row


def render(data: dict) -> dict[str, str]:
    """The markdown table of a run from the JSON that ``--json`` writes."""
    return {"rows": markdown_table(data["rows"], COLUMNS)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, render)
    if args is None:
        return
    info = machine_info()
    print(describe_machine(info), "\n")
    table = []

    def show(rows):
        table.extend(rows)
        print(markdown_table(rows, COLUMNS), "\n", flush=True)

    rbm = BernoulliRBM(0.1 * random.normal(random.key(0), (64, 16)))
    start = rbm.random_state(random.key(1), (100,))
    num_draws = 1000

    @jax.jit
    def plain(key, x):
        def body(x, k):
            return rbm.gibbs_sweep(k, x), None

        x, _ = lax.scan(body, x, random.split(key, num_draws))
        return x

    def run_plain(key):
        jax.block_until_ready(plain(key, start))

    def run_traced(key):
        jax.block_until_ready(trace_gibbs(key, rbm, start, num_draws))

    run_plain(random.key(2))  # compile both first
    run_traced(random.key(2))
    sampling = {"plain": [], "traced": []}
    for r in range(args.repeats):
        for name, fn in (("plain", run_plain), ("traced", run_traced)):
            watch = Stopwatch()
            fn(random.key(10 + r))
            sampling[name].append(watch.read())
    base = float(np.median([t for t, _ in sampling["plain"]]))
    show(
        [
            _row("Gibbs, 100 chains x 1,000 sweeps, nothing kept", sampling["plain"]),
            _row("the same keeping per-chain summaries (trace_gibbs)", sampling["traced"], base),
        ]
    )

    trace, _ = trace_gibbs(random.key(3), rbm, start[:8], num_draws)
    report(trace)  # import ArviZ first
    samples = []
    for _ in range(args.repeats):
        watch = Stopwatch()
        report(trace)
        samples.append(watch.read())
    show([_row("report, 8 chains x 1,000 draws, 2 quantities", samples)])

    # One monitor diagnosis on its own: 100 PCD steps on a copy of 100 chains, then the
    # report (compiled once; the fit rows below include compilation).
    pcd = PCD(num_chains=100)
    pcd_state = pcd.init(random.key(5), rbm)
    diagnose(random.key(6), pcd, pcd_state, rbm, num_draws=100)
    samples = []
    for r in range(args.repeats):
        watch = Stopwatch()
        diagnose(random.key(7 + r), pcd, pcd_state, rbm, num_draws=100)
        samples.append(watch.read())
    name = "one diagnosis: 100 PCD steps x 100 chains + report"
    show([_row(name, samples)])

    images = (load_digits().data > 7).astype(np.int32)
    data = jnp.asarray(images[np.random.default_rng(0).permutation(len(images))][:1437])
    variants = {
        "fit, 20 epochs, no monitor": None,
        "fit with Monitor(every=10)": Monitor(every=10),
        "fit with Monitor(every=1)": Monitor(every=1),
    }
    init = BernoulliRBM(0.01 * random.normal(random.key(4), (64, 16)))
    timings = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, monitor in variants.items():
            watch = Stopwatch()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MixingWarning)
                fit(
                    random.key(r),
                    init,
                    data,
                    estimator=PCD(num_chains=100),
                    num_epochs=20,
                    batch_size=32,
                    monitor=monitor,
                    progress_bar=False,
                )
            timings[name].append(watch.read())
    names = list(variants)
    base = float(np.median([t for t, _ in timings[names[0]]]))
    rows = [_row(names[0], timings[names[0]])]
    rows += [_row(name, timings[name], base) for name in names[1:]]
    show(rows)
    data = {"machine": info, "rows": table, "repeats": args.repeats}
    print("\n\n".join(render(data).values()))
    write_json(args.json, data)


if __name__ == "__main__":
    main()
