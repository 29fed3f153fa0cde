"""AIS on a large Ising lattice: how many temperatures give a stable ``log Z``.

A periodic 256 x 256 Ising lattice at ``K = 0.4`` (critical 0.4407) without field, from the
uniform base (independent spins), 16 chains, linear schedules of ``--temperatures``
inverse temperatures, two seeds each, ``num_checkpoints=5``. The reference is Onsager's
infinite-lattice ``log Z`` per site (finite-size corrections of a periodic 256 x 256 lattice
this far from the critical point are far below the figures shown). Each row reports the
estimate per site, its error against Onsager's value in total nats (per-site error times
the 65,536 sites), the effective sample size of the 16 weights, the standard deviation of
the accumulated log weights at each fifth of the schedule, the wall time (including
compilation) and the share of the machine other processes used, and the peak resident
memory of the process.

    python benchmarks/ais_ising.py [--temperatures 4000,16000] [--json out.json]
    python benchmarks/ais_ising.py --json out.json --markdown   # tables of a stored run
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from ais_rbm import onsager_log_partition_per_site, peak_memory_mib
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    parse_args,
    write_json,
)
from jax import random

from numpyro_ebm import IsingModel, ais

SIZE = 256
COUPLING = 0.4
NUM_CHAINS = 16


def render(data: dict) -> dict[str, str]:
    """The markdown table of a run from the JSON that ``--json`` writes."""
    return {"rows": markdown_table(data["rows"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--temperatures", default="4000,16000")
    args = parse_args(parser, render)
    if args is None:
        return

    info = machine_info()
    print(describe_machine(info), flush=True)
    ising = IsingModel.lattice((SIZE, SIZE), COUPLING, 0.0, True)
    exact = onsager_log_partition_per_site(COUPLING)
    sites = SIZE * SIZE
    rows = []
    for num_temperatures in (int(t) for t in args.temperatures.split(",")):
        for seed in (1, 2):
            watch = Stopwatch()
            result = jax.block_until_ready(
                ais(
                    random.key(seed),
                    ising,
                    num_chains=NUM_CHAINS,
                    schedule="linear",
                    num_temperatures=num_temperatures,
                    num_checkpoints=5,
                )
            )
            seconds, others = watch.read()
            per_site = float(result.log_partition) / sites
            spread = np.std(np.asarray(result.log_weight_trace), axis=1)
            rows.append(
                {
                    "temperatures": f"{num_temperatures:,}",
                    "seed": seed,
                    "log Z / site": f"{per_site:.6f}",
                    "error (nats, total)": f"{(per_site - exact) * sites:+.2f}",
                    "ESS of 16": f"{float(result.ess):.1f}",
                    "log-weight sd at beta = 0.2, 0.4, 0.6, 0.8, 1": " ".join(
                        f"{s:.2f}" for s in spread
                    ),
                    "seconds": f"{seconds:.0f}",
                    "others' CPU": f"{others:.0%}",
                    "peak RSS (MiB)": f"{peak_memory_mib():.0f}",
                }
            )
            print(markdown_table(rows[-1:]), flush=True)
    print(f"\nOnsager: {exact:.6f} per site\n")
    print(markdown_table(rows))
    write_json(args.json, {"machine": info, "rows": rows, "onsager_per_site": exact})


if __name__ == "__main__":
    main()
