"""The ``numpyro-ebm`` command line.

Subcommands:

- ``demo``: train an RBM on scikit-learn's bundled digits end to end, report its exact
  held-out log-likelihood and AIS estimates of it, diagnose block-Gibbs chains with ArviZ,
  and write figures and a text report to an output folder.
- ``train``: train an RBM on a binary ``.npy`` or ``.csv`` file and save it.
- ``sample``: draw samples from a saved model into a ``.npy`` file.
- ``logz``: the log partition function of a saved model: exact for small models, annealed
  importance sampling otherwise.

Nothing is overwritten without ``--overwrite`` (or a yes at an interactive prompt); files are
read without pickle.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# ---------------------------------------------------------------------- helpers
def _confirm_overwrite(path: Path, overwrite: bool) -> None:
    if not path.exists() or overwrite:
        return
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"{path} exists. Overwrite? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
    raise CLIError(f"{path} exists; pass --overwrite to replace it.")


def _load_binary_data(path: Path) -> np.ndarray:
    if not path.exists():
        raise CLIError(f"data file {path} does not exist.")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            data = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise CLIError(f"data file {path} must end in .npy or .csv.")
    except CLIError:
        raise
    except Exception as err:  # numpy raises several types for malformed files
        raise CLIError(f"could not read data file {path}: {err}") from None
    if data.ndim != 2:
        raise CLIError(
            f"data in {path} must be a 2-D array (examples x units); got shape {data.shape}."
        )
    if not np.all(np.isin(data, (0, 1))):
        lo, hi = np.nanmin(data), np.nanmax(data)
        raise CLIError(
            f"data in {path} must be 0/1 valued; got values in [{lo}, {hi}]: binarize first "
            f"(for example data > threshold)."
        )
    return data.astype(np.int32)


def _digits(seed: int, num_test: int = 297):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CLIError('the demo needs scikit-learn: pip install "numpyro-ebm[examples]"') from None
    images = load_digits().data
    data = (images > 7).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(data))
    return data[order[num_test:]], data[order[:num_test]]


def _initial_rbm(data: np.ndarray, num_hidden: int, seed: int):
    import jax
    import jax.numpy as jnp

    from numpyro_ebm import BernoulliRBM

    mean = np.clip(data.mean(0), 1e-3, 1 - 1e-3)
    weights = 0.01 * jax.random.normal(jax.random.key(seed), (data.shape[1], num_hidden))
    return BernoulliRBM(weights, jnp.log(mean / (1 - mean)), jnp.zeros(num_hidden))


def _exact_log_likelihood(model, data) -> float:
    import jax.numpy as jnp

    from numpyro_ebm import exact_log_partition

    return float(jnp.mean(-model.free_energy(data)) - exact_log_partition(model))


# ---------------------------------------------------------------------- demo
def _plot_samples(samples: np.ndarray, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    n = min(len(samples), 64)
    side = int(np.sqrt(samples.shape[-1]))
    cols = 16
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4))
    for ax, image in zip(axes.ravel(), samples[:n], strict=False):
        ax.imshow(image.reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _plot_history(history, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ok = np.isfinite(history.eval_metric)
    axes[0].plot(history.epoch[ok], history.eval_metric[ok], marker="o", ms=3)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel(f"held-out {history.eval_metric_name.replace('_', ' ')}")
    axes[1].plot(history.epoch, history.grad_norm)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("gradient norm")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(args) -> int:
    import arviz as az
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from numpyro.infer import MCMC

    from numpyro_ebm import exact_log_partition, io
    from numpyro_ebm.infer import BlockGibbs, log_likelihood
    from numpyro_ebm.train import fit

    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        _confirm_overwrite(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)

    train, test = _digits(args.seed)
    print(f"digits: {train.shape[0]} training and {test.shape[0]} held-out images, 64 pixels")
    rbm = _initial_rbm(train, args.num_hidden, args.seed)
    key_fit, key_mcmc, key_sample, key_ais = jax.random.split(jax.random.key(args.seed), 4)
    start = time.perf_counter()
    kwargs = {} if args.epochs is None else {"num_epochs": args.epochs}
    model, history = fit(key_fit, rbm, train, eval_data=test, **kwargs)
    train_time = time.perf_counter() - start

    ll_test = _exact_log_likelihood(model, test)
    ll_train = _exact_log_likelihood(model, train)
    ll_init = _exact_log_likelihood(rbm, test)

    # Annealed importance sampling, as for a model too large to enumerate: forward AIS
    # (too high on average) and reverse AIS from the held-out images (too low on average).
    print("annealed importance sampling (forward, and reverse from the held-out images) ...")
    estimate = log_likelihood(
        key_ais,
        model,
        test,
        num_chains=100,
        base_data=train,
        **_ais_schedule(args.ais_temperatures),
    )
    forward = estimate.forward_result
    lo, hi = (float(v) for v in forward.log_partition_interval)
    log_z = float(exact_log_partition(model))

    # Block Gibbs under numpyro's MCMC, diagnosed with ArviZ on the free energy.
    mcmc = MCMC(
        BlockGibbs(model),
        num_warmup=200,
        num_samples=args.num_draws,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=True,
    )
    mcmc.run(key_mcmc, extra_fields=("energy",))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    energy = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["energy"])
    idata = az.from_dict(posterior={"free_energy": energy})
    summary = az.summary(idata, var_names=["free_energy"])
    rhat = float(summary["r_hat"].iloc[0])
    ess_bulk = float(summary["ess_bulk"].iloc[0])
    ess_tail = float(summary["ess_tail"].iloc[0])

    independent = np.asarray(model.sample(key_sample, (64,)))
    _plot_samples(
        independent, out / "samples.png", f"64 model samples ({model.num_sweeps} sweeps each)"
    )
    _plot_samples(
        draws[0, :: max(1, args.num_draws // 64)], out / "chain.png", "one chain, thinned"
    )
    _plot_samples(test, out / "data.png", "held-out data")
    _plot_history(history, out / "training.png")
    az.plot_trace(idata, var_names=["free_energy"])
    plt.savefig(out / "trace.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    az.plot_rank(idata, var_names=["free_energy"])
    plt.savefig(out / "rank.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    io.save(out / "model.npz", model, overwrite=True)

    lines = [
        "numpyro-ebm demo: a Bernoulli RBM on scikit-learn's digits (pixels > 7)",
        f"model: 64 visible x {args.num_hidden} hidden units; {len(history.epoch)} epochs "
        f"in {train_time:.1f} s",
        f"exact held-out log-likelihood: {ll_test:.3f} nats/image "
        f"(initial model {ll_init:.3f}; training set {ll_train:.3f})",
        f"AIS held-out log-likelihood: forward {float(estimate.forward):.3f}, reverse "
        f"{float(estimate.reverse):.3f} nats/image (the exact value lies between on average)",
        f"AIS log Z: {float(forward.log_partition):.3f}, 95% interval [{lo:.3f}, {hi:.3f}], "
        f"ESS {float(forward.ess):.0f} of 100 chains; exact log Z {log_z:.3f}",
        f"block Gibbs, 4 chains x {args.num_draws} draws: free energy R-hat {rhat:.3f}, "
        f"bulk ESS {ess_bulk:.0f}, tail ESS {ess_tail:.0f}",
        "files: samples.png chain.png data.png training.png trace.png rank.png model.npz",
    ]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/")
    return 0


# ---------------------------------------------------------------------- other commands
def run_train(args) -> int:
    import jax

    from numpyro_ebm import io
    from numpyro_ebm.train import fit

    output = Path(args.output)
    _confirm_overwrite(output, args.overwrite)
    data = _load_binary_data(Path(args.data))
    rbm = _initial_rbm(data, args.num_hidden, args.seed)
    kwargs = {} if args.epochs is None else {"num_epochs": args.epochs}
    model, history = fit(jax.random.key(args.seed), rbm, data, **kwargs)
    io.save(output, model, overwrite=True)
    print(f"trained {len(history.epoch)} epochs; saved {output}")
    return 0


def _load_model(path: Path):
    from numpyro_ebm import io

    if not path.exists():
        raise CLIError(f"model file {path} does not exist.")
    try:
        return io.load(path)
    except ValueError as err:
        raise CLIError(str(err)) from None


def run_sample(args) -> int:
    import jax

    model = _load_model(Path(args.model))
    output = Path(args.output)
    _confirm_overwrite(output, args.overwrite)
    if args.num_sweeps is not None:
        model = model.with_num_sweeps(args.num_sweeps)
    draws = np.asarray(model.sample(jax.random.key(args.seed), (args.num_samples,)))
    tmp = output.with_name(output.name + ".tmp.npy")
    np.save(tmp, draws, allow_pickle=False)
    os.replace(tmp, output)
    print(f"wrote {draws.shape} samples to {output}")
    return 0


def _ais_schedule(num_temperatures: int | None) -> dict:
    if num_temperatures is None:
        return {"schedule": "rbm"}
    if num_temperatures < 2:
        raise CLIError(f"--ais-temperatures must be at least 2; got {num_temperatures}.")
    return {"schedule": "linear", "num_temperatures": num_temperatures}


def run_logz(args) -> int:
    import jax

    from numpyro_ebm import ais, exact_log_partition

    model = _load_model(Path(args.model))
    method = args.method
    if method == "auto":
        try:
            small = model.num_enumerated_states <= 2**25
        except NotImplementedError:
            small = False
        method = "exact" if small else "ais"
    if method == "exact":
        try:
            value = exact_log_partition(model)
        except ValueError as err:
            raise CLIError(f"{err} Use --method ais for an estimate.") from None
        print(f"exact log Z = {np.asarray(value)}")
        return 0
    try:
        result = ais(
            jax.random.key(args.seed),
            model,
            num_chains=args.num_chains,
            base=args.ais_base,
            **_ais_schedule(args.ais_temperatures),
        )
    except ValueError as err:
        raise CLIError(f"{err}") from None
    lo, hi = (np.asarray(v) for v in result.log_partition_interval)
    print(
        f"AIS log Z = {np.asarray(result.log_partition)} "
        f"({100 * result.level:.0f}% interval [{lo}, {hi}]; ESS {np.asarray(result.ess)} of "
        f"{args.num_chains} chains, {result.num_temperatures} temperatures)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numpyro-ebm", description="Energy-based models as NumPyro distributions."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train an RBM on scikit-learn's digits, end to end")
    demo.add_argument("--output", default="demo-output", help="output folder")
    demo.add_argument("--num-hidden", type=int, default=16)
    demo.add_argument("--epochs", type=int, default=None, help="default: fit's default")
    demo.add_argument("--num-draws", type=int, default=1000, help="MCMC draws per chain")
    demo.add_argument(
        "--ais-temperatures",
        type=int,
        default=None,
        help="AIS: that many evenly spaced temperatures (default: the classic 14,500 schedule)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true")
    demo.set_defaults(func=run_demo)

    train = sub.add_parser("train", help="train an RBM on a binary .npy or .csv file")
    train.add_argument("data")
    train.add_argument("--output", default="model.npz")
    train.add_argument("--num-hidden", type=int, default=16)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(func=run_train)

    sample = sub.add_parser("sample", help="draw samples from a saved model")
    sample.add_argument("model")
    sample.add_argument("--num-samples", type=int, default=100)
    sample.add_argument("--num-sweeps", type=int, default=None)
    sample.add_argument("--output", default="samples.npy")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--overwrite", action="store_true")
    sample.set_defaults(func=run_sample)

    logz = sub.add_parser(
        "logz", help="log partition function of a saved model: exact, or AIS for large models"
    )
    logz.add_argument("model")
    logz.add_argument(
        "--method",
        choices=("auto", "exact", "ais"),
        default="auto",
        help="auto: exact when at most 2**25 states are enumerated, else AIS",
    )
    logz.add_argument("--num-chains", type=int, default=100, help="AIS chains")
    logz.add_argument(
        "--ais-temperatures",
        type=int,
        default=None,
        help="AIS: that many evenly spaced temperatures (default: the classic 14,500 schedule)",
    )
    logz.add_argument(
        "--ais-base",
        choices=("uniform", "model"),
        default="uniform",
        help="AIS base model: independent units with zero fields, or with the model's own "
        "fields (only the couplings annealed); on large models try both and keep the higher "
        "estimate",
    )
    logz.add_argument("--seed", type=int, default=0)
    logz.set_defaults(func=run_logz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"numpyro-ebm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
