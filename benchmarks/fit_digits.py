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

Run: ``python benchmarks/fit_digits.py [--num-hidden 16] [--seeds 3]`` (a few minutes on
2 CPU cores).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
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
    model = SklearnRBM(n_components=num_hidden, random_state=seed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(data)
    return from_sklearn(model), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-hidden", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

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
        start = time.perf_counter()
        model, history = fit(jax.random.key(seed), init, train, progress_bar=False)
        jax.block_until_ready(model.weights)
        seconds = time.perf_counter() - start
        rows.append(
            (
                "numpyro_ebm fit (defaults)",
                seed,
                log_likelihood(model, train),
                log_likelihood(model, test),
                seconds,
                f"{len(history.epoch)} epochs",
            )
        )

    # scikit-learn: grid on a validation split, refit on the training set.
    grid = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    start = time.perf_counter()
    scores = []
    for params in grid:
        model, _ = fit_sklearn(subtrain, args.num_hidden, 0, **params)
        scores.append(log_likelihood(model, valid))
    grid_seconds = time.perf_counter() - start
    best = grid[int(np.nanargmax(scores))]
    print("sklearn grid (validation LL):")
    for params, score in sorted(zip(grid, scores, strict=True), key=lambda t: -t[1])[:5]:
        print(f"  {score:9.3f}  {params}")
    for seed in range(args.seeds):
        model, seconds = fit_sklearn(train, args.num_hidden, seed, **best)
        rows.append(
            (
                "sklearn tuned (validation)",
                seed,
                log_likelihood(model, train),
                log_likelihood(model, test),
                seconds,
                ", ".join(f"{k}={v}" for k, v in best.items()),
            )
        )
    init_model = BernoulliRBM(
        0.01 * jax.random.normal(jax.random.key(100), (num_visible, args.num_hidden))
    )
    rows.append(
        (
            "initial model",
            0,
            log_likelihood(init_model, train),
            log_likelihood(init_model, test),
            0.0,
            "",
        )
    )

    print(
        f"\nBinarized digits, {num_visible} visible x {args.num_hidden} hidden, exact "
        f"log-likelihood per digit (nats); {len(train)} train / {len(test)} held out; "
        f"sklearn grid of {len(grid)} configurations took {grid_seconds:.1f} s."
    )
    header = f"{'method':<32}{'seed':>5}{'train LL':>10}{'test LL':>10}{'time (s)':>10}  notes"
    print(header)
    print("-" * len(header))
    for name, seed, tr, te, sec, notes in rows:
        print(f"{name:<32}{seed:>5}{tr:>10.3f}{te:>10.3f}{sec:>10.1f}  {notes}")
    ours = [r[3] for r in rows if r[0].startswith("numpyro_ebm")]
    theirs = [r[3] for r in rows if r[0].startswith("sklearn tuned")]
    print(
        f"\nmean held-out LL: numpyro_ebm {np.mean(ours):.3f} +- {np.std(ours):.3f}, "
        f"sklearn tuned {np.mean(theirs):.3f} +- {np.std(theirs):.3f}"
    )


if __name__ == "__main__":
    main()
