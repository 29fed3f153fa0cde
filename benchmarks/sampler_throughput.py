"""Sampler throughput: RBM block-Gibbs sweeps and Ising checkerboard updates per second.

Two workloads, float32, each timed as many sweeps inside one ``jit`` with ``lax.scan``
(what ``gibbs.kernel``, ``sample`` and the estimators compile), interleaved over repeated
rounds; medians. Only ratios measured in the same run mean anything on a shared machine.
Each timed call of a compiled program runs enough sweeps to take 30-40 ms (RBM: 40
sweeps at 100 chains, 4 at 1,000; Ising: 200 sweeps at 256 x 256, 20 at 1,024 x 1,024),
so that the fixed cost of a call (dispatch, the key, about 0.5-1 ms) weighs as little as
in the long runs the library compiles; NumPy's calls (10 and 1 sweeps) have no such cost.

RBM, 784 visible x 500 hidden, 100 and 1,000 chains (``BernoulliRBM.gibbs_sweep``,
``v -> h -> v``):

- the library's sweep (uniforms two per threefry block, :func:`numpyro_ebm.distributions.
  rbm.uniform`);
- the same sweep with its uniforms hashed by JAX's ``threefry2x32`` primitive (the same
  bits; on CPU the primitive runs its rounds in a rolled loop that stores both words after
  every group of four rounds, where the library's elementwise hash fuses into the sweep);
- the same sweep with ``jax.random.uniform`` (one threefry block per uniform: the library's
  sweep before it drew two uniforms per block), traced from the library's code with
  ``uniform`` swapped back;
- the same sweep without random numbers (the probabilities themselves: mean field; a
  diagnostic, not a sampler, to show what the random numbers cost);
- the matrix-multiply roofline: only the sweep's two products ``v W`` and ``h W^T``
  (2 x 2 x chains x 784 x 500 FLOP) in the same ``jit`` + ``lax.scan`` (``W`` with
  orthonormal columns, so the carried state neither grows nor decays). "of roofline" is
  the roofline's time over the row's time.

Ising, 256 x 256 and 1,024 x 1,024 periodic lattices at the critical coupling, one
lattice (``IsingLattice.gibbs_sweep``: checkerboard, both colours per sweep, on the two
colours stored as half-size arrays), against a vectorized NumPy checkerboard written below
(float32, ``np.roll`` neighbour sums, one ``Generator.random`` draw per site and sweep,
PCG64), the library's previous sweep (``IsingLattice._masked_sweep``: every colour computes
the conditionals of all sites and keeps its own, still used for odd periodic sides) and the
library's sweep with the primitive's hash and with ``jax.random.uniform``. Updates per
second count every site once per sweep.

Other samplers, uniforms two per threefry block against ``jax.random.uniform``: a dense
64-unit ``BoltzmannMachine`` (couplings N(0, 0.1^2): one unit per colour, the sequential
``lax.scan`` sweep) and a ring of 64 units (two colours, one matrix product per colour),
each with 1,000 chains, and a 3-state ``PottsModel.lattice`` of 256 x 256 sites (one
chain).

Ratios ("of roofline", "vs NumPy", speed-ups) are medians over rounds of the ratio of the
two measurements taken in the same round, which drifts less than a ratio of medians when the
load of a shared machine changes during the run.

With several devices (a GPU, or CPU host devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before the run), the RBM table
gets a row with the library's sweep run with its chains sharded over all of them
(:func:`numpyro_ebm.sharding.shard_chains`); every other row runs on the default device.

Every measurement records the share of the machine's CPU that other processes used meanwhile
(``common.Stopwatch``); the tables report medians over all rounds and that share. Peak
memory: the compiled programs' own estimate (``memory_analysis``: arguments, outputs and
temporaries) and the process's peak resident set size.

Run: ``python benchmarks/sampler_throughput.py [--repeats 7] [--json throughput.json]``
(about 3 minutes on 2 CPU cores); ``--markdown`` with ``--json PATH`` prints the tables of
an earlier run's JSON (:func:`render`) without measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import resource

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    median,
    parse_args,
    write_json,
)
from jax import lax, random
from jax.extend.random import threefry2x32_p

import numpyro_ebm.distributions.boltzmann as boltzmann_module
import numpyro_ebm.distributions.potts as potts_module
import numpyro_ebm.distributions.rbm as rbm_module
from numpyro_ebm import BernoulliRBM, BoltzmannMachine, IsingModel, PottsModel
from numpyro_ebm.sharding import shard_chains

NUM_VISIBLE, NUM_HIDDEN = 784, 500
K_CRITICAL = 0.5 * math.log(1 + math.sqrt(2))  # sinh(2 K) = 1
LIBRARY_RBM = "numpyro_ebm gibbs_sweep"
ROOFLINE = "matmul roofline (v W, h W^T only)"
NUMPY_ISING = "NumPy vectorized checkerboard (float32, PCG64)"
LIBRARY_ISING = "numpyro_ebm IsingLattice.gibbs_sweep"
PLAIN_UNIFORM = "with jax.random.uniform (before)"
ROLLED_HASH = "with JAX's threefry primitive (rolled loop on CPU) for its uniforms"
LIBRARY_OTHER = "numpyro_ebm gibbs_sweep"


@contextlib.contextmanager
def jax_random_uniform():
    """Trace the library's sweeps with ``jax.random.uniform`` (the code before this change)."""
    modules = (rbm_module, boltzmann_module, potts_module)
    saved = [m.uniform for m in modules]

    def plain(rng_key, shape, dtype):
        return random.uniform(rng_key, shape, dtype)

    for m in modules:
        m.uniform = plain
    try:
        yield
    finally:
        for m, f in zip(modules, saved, strict=True):
            m.uniform = f


@contextlib.contextmanager
def rolled_threefry():
    """Trace the library's sweeps with the uniforms two per block hashed by JAX's
    ``threefry2x32`` primitive (on CPU a rolled loop that stores both words after every
    group of rounds) instead of the library's elementwise :func:`~numpyro_ebm.distributions.
    rbm.threefry2x32` (the same bits, fused into the sweep)."""
    saved = rbm_module.threefry2x32
    rbm_module.threefry2x32 = threefry2x32_p.bind
    try:
        yield
    finally:
        rbm_module.threefry2x32 = saved


def compiled_scan(sweep, x0, num_sweeps):
    """A callable running ``num_sweeps`` of ``sweep(key, x) -> x`` in one jit + scan from the
    last state (each call continues the chains), and the program's memory estimate (MiB)."""

    def run_scan(x, key):
        def body(x, k):
            return sweep(k, x), None

        x, _ = lax.scan(body, x, random.split(key, num_sweeps))
        return x

    fn = jax.jit(run_scan, donate_argnums=0)
    key = random.key(0)
    compiled = fn.lower(x0, key).compile()
    mem = compiled.memory_analysis()
    mib = float("nan")
    if mem is not None:
        total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        mib = total / 2**20
    state = {"x": jax.block_until_ready(fn(jnp.copy(x0), key)), "i": 0}

    def run():
        state["i"] += 1
        state["x"] = jax.block_until_ready(fn(state["x"], random.fold_in(key, state["i"])))

    return run, mib


# ---------------------------------------------------------------------- RBM
def rbm_variants(num_chains: int, num_sweeps: int):
    k1, k2, k3, k4 = random.split(random.key(1), 4)
    rbm = BernoulliRBM(
        0.05 * random.normal(k1, (NUM_VISIBLE, NUM_HIDDEN)),
        0.5 * random.normal(k2, (NUM_VISIBLE,)),
        0.5 * random.normal(k3, (NUM_HIDDEN,)),
    )
    x0 = rbm.random_state(k4, (num_chains,))
    library, mem = compiled_scan(rbm.gibbs_sweep, x0, num_sweeps)
    with jax_random_uniform():
        previous, _ = compiled_scan(rbm.gibbs_sweep, x0, num_sweeps)
    with rolled_threefry():
        rolled, _ = compiled_scan(rbm.gibbs_sweep, x0, num_sweeps)

    def mean_field(key, v):
        del key
        h = jax.nn.sigmoid(rbm.visible_to_hidden(v))
        return jax.nn.sigmoid(rbm.hidden_to_visible(h))

    no_draws, _ = compiled_scan(mean_field, x0, num_sweeps)
    q, _ = jnp.linalg.qr(random.normal(k1, (NUM_VISIBLE, NUM_HIDDEN)))  # orthonormal columns

    def products_only(key, v):
        del key
        return (v @ q) @ q.T

    roofline, _ = compiled_scan(products_only, x0.astype(jnp.float32), num_sweeps)
    rows = {}
    num_devices = len(jax.devices())
    if num_devices > 1 and num_chains % num_devices == 0:
        sharded, _ = compiled_scan(rbm.gibbs_sweep, shard_chains(x0), num_sweeps)
        rows[f"gibbs_sweep, chains sharded over {num_devices} devices"] = (
            sharded,
            float("nan"),
        )
    return {
        **rows,
        LIBRARY_RBM: (library, mem),
        f"gibbs_sweep {ROLLED_HASH}": (rolled, float("nan")),
        "gibbs_sweep with jax.random.uniform (before)": (previous, float("nan")),
        "sweep without random numbers (mean field, diagnostic)": (no_draws, float("nan")),
        ROOFLINE: (roofline, float("nan")),
    }


# ---------------------------------------------------------------------- Ising
def numpy_checkerboard(side: int, num_sweeps: int, seed: int = 0):
    """Vectorized NumPy checkerboard Gibbs on a periodic ``side x side`` Ising lattice at
    ``K_CRITICAL`` (no field), float32; returns a callable running ``num_sweeps`` sweeps."""
    rng = np.random.default_rng(seed)
    s = np.where(rng.random((side, side)) < 0.5, -1.0, 1.0).astype(np.float32)
    i, j = np.indices((side, side))
    colours = [(i + j) % 2 == c for c in (0, 1)]
    two_k = np.float32(2 * K_CRITICAL)
    one, minus_one = np.float32(1), np.float32(-1)
    state = {"s": s}

    def run():
        s = state["s"]
        for _ in range(num_sweeps):
            u = rng.random((side, side), dtype=np.float32)
            for colour in colours:
                nb = np.roll(s, 1, 0) + np.roll(s, -1, 0) + np.roll(s, 1, 1) + np.roll(s, -1, 1)
                p = 1 / (1 + np.exp(-two_k * nb))
                s = np.where(colour, np.where(u < p, one, minus_one), s)
        state["s"] = s

    return run


def ising_variants(side: int, jax_sweeps: int, numpy_sweeps: int):
    lattice = IsingModel.lattice((side, side), coupling=K_CRITICAL)
    s0 = lattice.random_state(random.key(2), (1,))
    library, mem = compiled_scan(lattice.gibbs_sweep, s0, jax_sweeps)
    masked, masked_mem = compiled_scan(
        lambda key, s: lattice._masked_sweep(key, s, 1.0), s0, jax_sweeps
    )
    with jax_random_uniform():
        plain, _ = compiled_scan(lattice.gibbs_sweep, s0, jax_sweeps)
    with rolled_threefry():
        rolled, _ = compiled_scan(lattice.gibbs_sweep, s0, jax_sweeps)
    return {
        LIBRARY_ISING: (library, mem, jax_sweeps),
        f"gibbs_sweep {ROLLED_HASH}": (rolled, float("nan"), jax_sweeps),
        "whole-lattice masked sweep (the previous gibbs_sweep)": (masked, masked_mem, jax_sweeps),
        f"gibbs_sweep {PLAIN_UNIFORM}": (plain, float("nan"), jax_sweeps),
        NUMPY_ISING: (
            numpy_checkerboard(side, numpy_sweeps),
            float("nan"),
            numpy_sweeps,
        ),
    }


# ---------------------------------------------------------------------- other samplers
def other_variants():
    """Dense BM (sequential scan) and Potts lattice sweeps, with the library's uniforms and
    with ``jax.random.uniform``: ``{workload: {row: (callable, sweeps per call, units)}}``."""
    k1, k2, k3 = random.split(random.key(3), 3)
    n = 64
    j = 0.1 * random.normal(k1, (n, n))
    j = jnp.triu(j, 1) + jnp.triu(j, 1).T
    bm = BoltzmannMachine(j, 0.1 * random.normal(k2, (n,)), coloring=np.arange(n))
    ring = 0.3 * (jnp.roll(jnp.eye(n), 1, 0) + jnp.roll(jnp.eye(n), -1, 0))
    ring_bm = BoltzmannMachine(ring, 0.1 * random.normal(k2, (n,)))  # 2 colours: 2 blocks
    potts = PottsModel.lattice((256, 256), 3, 0.5, jnp.zeros(3))
    out = {}
    for name, model, chains, sweeps in (
        (f"dense BM, {n} units (sequential scan), 1000 chains", bm, (1000,), 20),
        (f"ring BM, {n} units (2 colour blocks), 1000 chains", ring_bm, (1000,), 20),
        ("Potts lattice 256x256, q=3", potts, (1,), 10),
    ):
        x0 = model.random_state(k3, chains).astype(model.chain_dtype)
        library, _ = compiled_scan(model.gibbs_sweep, x0, sweeps)
        with jax_random_uniform():
            plain, _ = compiled_scan(model.gibbs_sweep, x0, sweeps)
        with rolled_threefry():
            rolled, _ = compiled_scan(model.gibbs_sweep, x0, sweeps)
        units = math.prod(chains) * math.prod(model.event_shape)
        out[name] = {
            LIBRARY_OTHER: (library, sweeps, units),
            f"gibbs_sweep {ROLLED_HASH}": (rolled, sweeps, units),
            f"gibbs_sweep {PLAIN_UNIFORM}": (plain, sweeps, units),
        }
    return out


def render(data: dict) -> dict[str, str]:
    """The markdown of a run from the JSON that ``--json`` writes: RBM sweeps against the
    roofline, Ising lattices against NumPy, the other samplers' uniforms, and the
    programs' memory."""
    memory = ", ".join(f"{m['MiB']:.3g} MiB ({m['program']})" for m in data["memory"])
    return {
        "rbm": markdown_table(data["rbm"]),
        "ising": markdown_table(data["ising"]),
        "other": markdown_table(data.get("other", [])),
        "memory": (
            f"Memory (the compiled programs' own estimate: arguments + outputs + temporaries): "
            f"{memory}; the whole benchmark process peaked at {data['peak_rss_mib']:.0f} MiB "
            f"resident."
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    args = parse_args(parser, render)
    if args is None:
        return

    print("compiling ...", flush=True)
    # (workload, row) -> (callable, memory MiB, sweeps per call, units per sweep)
    workloads = {}
    for chains, sweeps in ((100, 40), (1000, 4)):
        for row, (run, mem) in rbm_variants(chains, sweeps).items():
            name = f"RBM 784x500, {chains} chains"
            workloads[(name, row)] = (run, mem, sweeps, chains)
    for side, jax_sweeps, numpy_sweeps in ((256, 200, 10), (1024, 20, 1)):
        for row, (run, mem, sweeps) in ising_variants(side, jax_sweeps, numpy_sweeps).items():
            workloads[(f"Ising {side}x{side}", row)] = (run, mem, sweeps, side * side)
    for name, rows in other_variants().items():
        for row, (run, sweeps, units) in rows.items():
            workloads[(name, row)] = (run, float("nan"), sweeps, units)

    samples = {key: [] for key in workloads}
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}", flush=True)
        for key, (run, *_rest) in workloads.items():
            watch = Stopwatch()
            run()
            samples[key].append(watch.read())

    rows = []
    for (name, row), (_, mem, sweeps, units) in workloads.items():
        seconds = median([t for t, _ in samples[(name, row)]])
        rows.append(
            {
                "workload": name,
                "implementation": row,
                "sweeps/s": sweeps / seconds,
                "units": units,
                "median ms/sweep": 1e3 * seconds / sweeps,
                "others' CPU (median)": f"{median([s for _, s in samples[(name, row)]]):.0%}",
                "program MiB": mem,
            }
        )

    def paired(name, row, reference):
        """Median over rounds of (reference's time / row's time) per sweep, each pair taken
        in the same round: steadier than a ratio of medians while the load drifts."""
        ref_sweeps, row_sweeps = workloads[(name, reference)][2], workloads[(name, row)][2]
        return median(
            [
                (t_ref / ref_sweeps) / (t_row / row_sweeps)
                for (t_ref, _), (t_row, _) in zip(
                    samples[(name, reference)], samples[(name, row)], strict=True
                )
            ]
        )

    rbm_table, ising_table, other_table = [], [], []
    for r in rows:
        name, row = r["workload"], r["implementation"]
        if name.startswith("RBM"):
            rbm_table.append(
                {
                    "workload": name,
                    "sweep": row,
                    "sweeps/s": r["sweeps/s"],
                    "of roofline": paired(name, row, ROOFLINE),
                    "speed-up of the library's sweep over this row": 1
                    / paired(name, row, LIBRARY_RBM),
                    "others' CPU (median)": r["others' CPU (median)"],
                }
            )
        elif name.startswith("Ising"):
            ising_table.append(
                {
                    "lattice": name,
                    "sweep": row,
                    "M spin updates/s": r["sweeps/s"] * r["units"] / 1e6,
                    "vs NumPy": paired(name, row, NUMPY_ISING),
                    "speed-up of the library's sweep over this row": 1
                    / paired(name, row, LIBRARY_ISING),
                    "others' CPU (median)": r["others' CPU (median)"],
                }
            )
        else:
            other_table.append(
                {
                    "workload": name,
                    "sweep": row,
                    "M unit updates/s": r["sweeps/s"] * r["units"] / 1e6,
                    "speed-up of the library's sweep over this row": 1
                    / paired(name, row, LIBRARY_OTHER),
                    "others' CPU (median)": r["others' CPU (median)"],
                }
            )
    info = machine_info()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB
    memory = [
        {"program": f"{r['workload']}: {r['implementation']}", "MiB": r["program MiB"]}
        for r in rows
        if not math.isnan(r["program MiB"])
    ]
    data = {
        "rows": rows,
        "rbm": rbm_table,
        "ising": ising_table,
        "other": other_table,
        "memory": memory,
        "peak_rss_mib": peak_rss,
        "samples": {f"{k[0]} | {k[1]}": v for k, v in samples.items()},
    }
    print("\n" + describe_machine(info) + "\n")
    print("\n\n".join(render(data).values()))
    write_json(args.json, data)


if __name__ == "__main__":
    main()
