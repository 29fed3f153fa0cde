"""Negative-phase estimators at equal wall time: exact held-out log-likelihood on digits.

Binarized scikit-learn digits (``load_digits().data > 7``, 1,797 images of 64 pixels,
shuffled with a fixed seed: 1,437 for training, 360 held out), an RBM with 64 visible and
16 hidden units (``log Z`` exact: ``2**16`` hidden states), trained for the same wall-clock
budget (default 20 s, compilation included: it is part of what a user waits for) by

- scikit-learn's ``BernoulliRBM`` (PCD-1 with ``batch_size`` chains, constant learning rate
  chosen on a validation split from a grid, each candidate given the same budget);
- ``numpyro_ebm.train.fit`` with each estimator: ``CD(1)``, ``PCD()`` (100 chains, 1
  sweep: fit's default), ``ParallelTempering()`` (100 ladders of 10 temperatures down to
  0.1: its defaults), a cheaper ``ParallelTempering(num_temperatures=5, min_beta=0.3)``,
  and ``PCD(transition=RelaxedHMC())`` (HMC on the Gaussian-integral relaxation, if
  ``numpyro_ebm.infer.relaxed_hmc`` imports).

Every run starts from weights ``0.01 * normal`` (scikit-learn draws its own, same scale)
and zero biases, with minibatches of 32. fit uses its default optimizer (Adam, learning
rate 1e-2 decaying linearly to 0 over the run): the number of epochs that fits in the
budget is calibrated by a short untimed run of the same configuration (epoch time and
compilation time), and a callback stops training if the budget runs out first.
scikit-learn, which has no schedule, runs epochs until the budget is spent: the first
``fit(X)`` call with ``n_iter=1``, then further epochs with the same per-minibatch update
``fit`` runs (``BernoulliRBM._fit`` over the same minibatch slices), so no per-call
validation overhead is added. The parameters after every epoch are kept (with their time
since the start) and evaluated after training, outside the budget: the reported model is
the last one completed within the budget. The table also gives the share of the machine's
CPU that other processes used during each run (``common.Stopwatch``): on a shared machine
a run that competed for the cores did less work in its budget.

Run: ``python benchmarks/estimators_digits.py [--budget 20] [--seeds 2] [--json PATH]``
(about 6-8 minutes with the defaults on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time
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
from sklearn.utils import gen_even_slices
from sklearn.utils.validation import check_random_state

from numpyro_ebm import BernoulliRBM, exact_log_partition
from numpyro_ebm.infer import CD, PCD, ParallelTempering
from numpyro_ebm.train import fit

try:
    from numpyro_ebm.infer.relaxed_hmc import RelaxedHMC
except ImportError:  # not available in this version
    RelaxedHMC = None

NUM_HIDDEN = 16
BATCH_SIZE = 32
SKLEARN_LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1)


def load_data():
    images = (load_digits().data > 7).astype(np.int32)
    images = images[np.random.default_rng(0).permutation(len(images))]
    return images[:1437], images[1437:]


def log_likelihood(params, data) -> float:
    """Exact average log-likelihood per digit of ``params = (W, b, c)``."""
    rbm = BernoulliRBM(*(jnp.asarray(p, jnp.float32) for p in params))
    return float(jnp.mean(-rbm.free_energy(jnp.asarray(data))) - exact_log_partition(rbm))


def initial_rbm(num_visible: int, seed: int) -> BernoulliRBM:
    key = jax.random.key(100 + seed)
    return BernoulliRBM(0.01 * jax.random.normal(key, (num_visible, NUM_HIDDEN)))


# ---------------------------------------------------------------------- scikit-learn
def run_sklearn(train, learning_rate, seed, budget):
    """Epochs of scikit-learn's PCD until ``budget`` seconds; ``[(seconds, params)]``."""
    data = train.astype(np.float64)
    model = SklearnRBM(
        n_components=NUM_HIDDEN,
        batch_size=BATCH_SIZE,
        learning_rate=learning_rate,
        n_iter=1,
        random_state=seed,
    )
    n = data.shape[0]
    num_batches = math.ceil(n / BATCH_SIZE)
    slices = list(gen_even_slices(num_batches * BATCH_SIZE, num_batches, n_samples=n))
    rng = check_random_state(10_000 + seed)
    snapshots = []
    watch = Stopwatch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(data)  # initialization and the first epoch
        while True:
            elapsed = time.perf_counter() - start
            snapshots.append(
                (
                    elapsed,
                    (
                        model.components_.T.copy(),
                        model.intercept_visible_.copy(),
                        model.intercept_hidden_.copy(),
                    ),
                )
            )
            if elapsed >= budget:
                break
            for batch in slices:
                model._fit(data[batch], rng)
    return snapshots, num_batches, watch.read()[1]


def tune_sklearn(train, budget, seed=0):
    """Learning rate with the best validation log-likelihood after ``budget`` seconds of
    training on the first 1,150 training digits (validation: the other 287)."""
    subtrain, valid = train[:1150], train[1150:]
    scores = {}
    for lr in SKLEARN_LEARNING_RATES:
        snapshots, _, _ = run_sklearn(subtrain, lr, seed, budget)
        scores[lr] = log_likelihood(within(snapshots, budget)[1], valid)
        print(f"  sklearn lr={lr}: validation LL {scores[lr]:.3f}", flush=True)
    return max(scores, key=scores.get), scores


# ---------------------------------------------------------------------- numpyro_ebm
def run_fit(train, estimator, seed, budget, num_epochs):
    """fit for ``num_epochs`` epochs or until ``budget`` seconds: ``[(seconds, params)]``
    and the share of the machine other processes used meanwhile."""
    snapshots = []
    watch = Stopwatch()
    start = time.perf_counter()

    def record(epoch, model, history):
        elapsed = time.perf_counter() - start
        snapshots.append(
            (
                elapsed,
                (
                    np.asarray(model.weights),
                    np.asarray(model.visible_bias),
                    np.asarray(model.hidden_bias),
                ),
            )
        )
        return elapsed < budget  # False stops training

    fit(
        jax.random.key(seed),
        initial_rbm(train.shape[1], seed),
        train,
        estimator=estimator,
        num_epochs=num_epochs,
        batch_size=BATCH_SIZE,
        callbacks=record,
        progress_bar=False,
    )
    return snapshots, watch.read()[1]


def calibrate(train, estimator, budget, num_epochs=40):
    """Epochs that fit in ``budget`` (from a short run: compilation and epoch time)."""
    snapshots, _ = run_fit(train, estimator, 0, math.inf, num_epochs)
    times = np.array([t for t, _ in snapshots])
    # The median of the second half of the epochs (the first ones after compilation run
    # slower: planning from the median of 8 epochs left PCD a third of its budget unused)
    # plus a 5% margin, so that the learning-rate schedule ends inside the budget: a run
    # stopped before its schedule ends (learning rate not yet decayed) is much worse, e.g.
    # planning from the fastest epoch instead stopped CD-1 and PCD at 72-79% of their
    # schedules and cost them 0.5-6 nats per digit on this machine.
    epoch = 1.05 * float(np.median(np.diff(times)[num_epochs // 2 :]))
    compile_seconds = times[0] - epoch
    return max(1, int((budget - compile_seconds) / epoch)), compile_seconds, epoch


def within(snapshots, budget):
    """The last snapshot completed within ``budget`` (the first one if none is)."""
    inside = [s for s in snapshots if s[0] <= budget]
    return inside[-1] if inside else snapshots[0]


# ---------------------------------------------------------------------- main
def render(data: dict) -> dict[str, str]:
    """The markdown of a run from the JSON that ``--json`` writes: scikit-learn's validation
    scores (which chose its learning rate), then the table."""
    scores = " / ".join(f"{float(v):.2f}" for v in data["sklearn_validation_ll"].values())
    rates = " / ".join(data["sklearn_validation_ll"])
    return {
        "validation": (
            f"scikit-learn's learning rate was chosen on a validation split (each candidate "
            f"given the same {data['settings']['budget']:g} s): validation LL for {rates}: "
            f"{scores}."
        ),
        "rows": markdown_table(data["rows"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--seeds", type=int, default=2)
    args = parse_args(parser, render)
    if args is None:
        return

    train, test = load_data()
    num_batches = train.shape[0] // BATCH_SIZE
    estimators = {
        "numpyro_ebm CD-1": CD(num_sweeps=1),
        "numpyro_ebm PCD (100 chains, 1 sweep)": PCD(),
        "numpyro_ebm ParallelTempering (10 temperatures to 0.1)": ParallelTempering(),
        "numpyro_ebm ParallelTempering (5 temperatures to 0.3)": ParallelTempering(
            num_temperatures=5, min_beta=0.3
        ),
    }
    if RelaxedHMC is not None:
        estimators["numpyro_ebm PCD + RelaxedHMC (defaults)"] = PCD(transition=RelaxedHMC())

    print(f"tuning scikit-learn's learning rate ({args.budget:g} s per candidate) ...")
    best_lr, scores = tune_sklearn(train, args.budget)

    runs = {}
    print("scikit-learn ...", flush=True)
    runs[f"scikit-learn BernoulliRBM (lr={best_lr}, tuned)"] = [
        run_sklearn(train, best_lr, seed, args.budget) for seed in range(args.seeds)
    ]
    plans = {}
    for name, estimator in estimators.items():
        print(f"{name} ...", flush=True)
        plans[name] = calibrate(train, estimator, args.budget)
        num_epochs = plans[name][0]
        runs[name] = []
        for seed in range(args.seeds):
            snapshots, share = run_fit(train, estimator, seed, args.budget, num_epochs)
            runs[name].append((snapshots, num_batches, share))

    rows = []
    for name, results in runs.items():
        test_ll, train_ll, seconds, updates, shares = [], [], [], [], []
        for snapshots, batches_per_epoch, share in results:
            shares.append(share)
            t, params = within(snapshots, args.budget)
            index = [s[0] for s in snapshots].index(t)
            test_ll.append(log_likelihood(params, test))
            train_ll.append(log_likelihood(params, train))
            seconds.append(t)
            updates.append((index + 1) * batches_per_epoch)
        plan = plans.get(name)
        rows.append(
            {
                "method": name,
                "held-out LL (nats/digit)": float(np.mean(test_ll)),
                "per seed": ", ".join(f"{x:.2f}" for x in test_ll),
                "train LL": float(np.mean(train_ll)),
                "time (s)": float(np.mean(seconds)),
                "updates": int(np.mean(updates)),
                "epochs done / planned": (
                    f"{int(np.mean(updates)) // batches_per_epoch}/{plan[0]}" if plan else "-"
                ),
                "ms/update": 1e3 * float(np.mean(seconds)) / float(np.mean(updates)),
                "compile (s)": f"{plan[1]:.1f}" if plan else "-",
                "others' CPU": ", ".join(f"{100 * x:.0f}%" for x in shares),
            }
        )
    initial = [
        log_likelihood(
            (
                np.asarray(initial_rbm(64, s).weights),
                np.zeros(64),
                np.zeros(NUM_HIDDEN),
            ),
            test,
        )
        for s in range(args.seeds)
    ]

    info = machine_info()
    print(f"\n{describe_machine(info)}\n")
    print(
        f"Binarized digits, 64 visible x {NUM_HIDDEN} hidden, exact log-likelihood per digit "
        f"(nats, higher is better), {len(train)} train / {len(test)} held out, budget "
        f"{args.budget:g} s per run (compilation included), minibatch {BATCH_SIZE}, mean "
        f"of {args.seeds} seeds; initial model {np.mean(initial):.2f}. scikit-learn's "
        "learning rate was chosen on a validation split: "
        + ", ".join(f"{lr}: {s:.2f}" for lr, s in scores.items())
        + ".\n"
    )
    print(markdown_table(rows))
    write_json(
        args.json,
        {
            "benchmark": "estimators_digits",
            "settings": vars(args),
            "sklearn_validation_ll": {str(k): v for k, v in scores.items()},
            "plans": {
                k: {"epochs": v[0], "compile_s": v[1], "epoch_s": v[2]} for k, v in plans.items()
            },
            "rows": rows,
            "initial_ll": initial,
        },
    )


if __name__ == "__main__":
    main()
