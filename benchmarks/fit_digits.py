"""Exact held-out log-likelihood of RBMs fitted to binarized scikit-learn digits.

Compares ``numpyro_ebm.train.fit`` with its defaults (no tuning) against scikit-learn's
``BernoulliRBM`` tuned over a grid of learning rates, batch sizes and iteration counts.
Both models have the same number of hidden units, small enough that ``log Z`` is computed
exactly (``2 ** num_hidden`` states), so the table shows exact average log-likelihoods per
digit (nats, higher is better), not estimates. scikit-learn's fitted ``components_``,
``intercept_visible_`` and ``intercept_hidden_`` are evaluated as a numpyro_ebm
``BernoulliRBM(components_.T, intercept_visible_, intercept_hidden_)`` (same energy).

Data: ``load_digits().data > 7`` (1,797 images of 64 binary pixels), shuffled with a fixed
seed, 1,437 for training and 360 held out. scikit-learn's configuration is selected on a
validation split of the training set (the last 287 training digits), then refitted on the
whole training set with three seeds.

Run: ``python benchmarks/fit_digits.py [--num-hidden 16] [--seeds 3] [--json PATH]`` (about
80 s on 2 quiet CPU cores); ``--markdown`` with ``--json PATH`` prints the tables of an
earlier run's JSON (:func:`render`) without measuring.
"""

from __future__ import annotations

import argparse
import itertools
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
    write_json,
)
from sklearn.datasets import load_digits
from sklearn.neural_network import BernoulliRBM as SklearnRBM

from numpyro_ebm import BernoulliRBM, exact_log_partition
from numpyro_ebm.train import fit

GRID = {
    "learning_rate": (0.003, 0.01, 0.03, 0.1),
    "batch_size": (10, 32),
    "n_iter": (100, 300, 1000),
}


def log_likelihood(rbm: BernoulliRBM, data: np.ndarray) -> float:
    """Exact average log-likelihood per example."""
    return float(jnp.mean(-rbm.free_energy(data)) - exact_log_partition(rbm))


def from_sklearn(model: SklearnRBM) -> BernoulliRBM:
    return BernoulliRBM(
        jnp.asarray(model.components_.T, jnp.float32),
        jnp.asarray(model.intercept_visible_, jnp.float32),
        jnp.asarray(model.intercept_hidden_, jnp.float32),
    )


def fit_sklearn(data, num_hidden, seed, **params):
    """The fitted model, seconds and the share of the CPU others used meanwhile."""
    model = SklearnRBM(n_components=num_hidden, random_state=seed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watch = Stopwatch()
        model.fit(data)
        seconds, others = watch.read()
    return from_sklearn(model), seconds, others


def row(method, seed, model, train, test, seconds, others, notes):
    return {
        "method": method,
        "seed": seed,
        "train LL": f"{log_likelihood(model, train):.3f}",
        "test LL": f"{log_likelihood(model, test):.3f}",
        "time (s)": f"{seconds:.1f}",
        "others' CPU": "" if others is None else f"{others:.0%}",
        "notes": notes,
    }


def render(data: dict) -> dict[str, str]:
    """The markdown of a run from the JSON that ``--json`` writes: the rows, then the mean
    held-out log-likelihood of each library over seeds."""
    rows = data["rows"]

    def summary(prefix):
        test = [float(r["test LL"]) for r in rows if r["method"].startswith(prefix)]
        return f"{np.mean(test):.3f} +- {np.std(test):.3f}"

    return {
        "rows": markdown_table(rows),
        "summary": (
            f"Mean held-out LL (sd over {data['seeds']} seeds): numpyro_ebm "
            f"{summary('numpyro_ebm')}, scikit-learn tuned {summary('sklearn')}; the "
            f"scikit-learn grid of {data['grid_size']} configurations took "
            f"{data['grid_seconds']:.1f} s. Best configuration on the validation split: "
            f"{data['best']}."
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-hidden", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    args = parse_args(parser, render)
    if args is None:
        return

    info = machine_info()
    print(describe_machine(info), flush=True)
    images = (load_digits().data > 7).astype(np.int32)
    images = images[np.random.default_rng(0).permutation(len(images))]
    train, test = images[:1437], images[1437:]
    subtrain, valid = train[:1150], train[1150:]
    num_visible = images.shape[1]
    rows = []

    # numpyro_ebm with its defaults.
    for seed in range(args.seeds):
        init = BernoulliRBM(
            0.01 * jax.random.normal(jax.random.key(100 + seed), (num_visible, args.num_hidden))
        )
        watch = Stopwatch()
        model, history = fit(jax.random.key(seed), init, train, progress_bar=False)
        jax.block_until_ready(model.weights)
        seconds, others = watch.read()
        notes = f"{len(history.epoch)} epochs, compilation included"
        rows.append(
            row("numpyro_ebm fit (defaults)", seed, model, train, test, seconds, others, notes)
        )
        print(markdown_table(rows[-1:]), flush=True)

    # scikit-learn: grid on a validation split, refit on the training set.
    grid = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    watch = Stopwatch()
    scores = []
    for params in grid:
        model, _, _ = fit_sklearn(subtrain, args.num_hidden, 0, **params)
        scores.append(log_likelihood(model, valid))
    grid_seconds, _ = watch.read()
    best = grid[int(np.nanargmax(scores))]
    print("sklearn grid (validation LL):")
    for params, score in sorted(zip(grid, scores, strict=True), key=lambda t: -t[1])[:5]:
        print(f"  {score:9.3f}  {params}")
    best_text = ", ".join(f"{k}={v}" for k, v in best.items())
    for seed in range(args.seeds):
        model, seconds, others = fit_sklearn(train, args.num_hidden, seed, **best)
        rows.append(
            row("sklearn tuned (validation)", seed, model, train, test, seconds, others, best_text)
        )
    init_model = BernoulliRBM(
        0.01 * jax.random.normal(jax.random.key(100), (num_visible, args.num_hidden))
    )
    rows.append(row("initial model", 0, init_model, train, test, 0.0, None, ""))

    data = {
        "machine": info,
        "rows": rows,
        "seeds": args.seeds,
        "num_hidden": args.num_hidden,
        "grid_size": len(grid),
        "grid_seconds": grid_seconds,
        "grid_scores": [{**p, "validation LL": s} for p, s in zip(grid, scores, strict=True)],
        "best": best_text,
    }
    print(
        f"\nBinarized digits, {num_visible} visible x {args.num_hidden} hidden, exact "
        f"log-likelihood per digit (nats); {len(train)} train / {len(test)} held out.\n"
    )
    print("\n\n".join(render(data).values()))
    write_json(args.json, data)


if __name__ == "__main__":
    main()
