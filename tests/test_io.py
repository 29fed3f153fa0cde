"""Saving and loading models: exact round trips, refusals and damaged files."""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm import BernoulliRBM
from numpyro_ebm.io import METADATA_KEY, family_registry, load, save


def _rbm(batch=(), seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return BernoulliRBM(
        jax.random.normal(k1, (*batch, 5, 3)),
        jax.random.normal(k2, (*batch, 5)),
        jax.random.normal(k3, (*batch, 3)),
        num_sweeps=7,
    )


def _other_families():
    """One tiny model of every other family present in the package (skipped if absent)."""
    cases = {}
    ring = np.roll(np.eye(4), 1, axis=1)
    ring = 0.5 * (ring + ring.T)
    try:
        from numpyro_ebm.distributions.boltzmann import BoltzmannMachine, IsingModel

        cases["boltzmann"] = BoltzmannMachine(ring, jnp.arange(4.0) / 4)
        cases["boltzmann_batched"] = BoltzmannMachine(np.stack([ring, 2 * ring]), jnp.ones(4))
        cases["ising"] = IsingModel(ring, -jnp.ones(4))
        cases["ising_lattice"] = IsingModel.lattice((3, 4), 0.4, 0.1)
    except ImportError:
        pass
    try:
        from numpyro_ebm.distributions.potts import PottsModel

        cases["potts"] = PottsModel(ring, jnp.arange(12.0).reshape(4, 3) / 12)
        cases["potts_lattice"] = PottsModel.lattice((3, 3), 3, 0.5)
    except ImportError:
        pass
    try:
        from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM

        cases["gaussian_rbm"] = GaussianBernoulliRBM(
            jnp.ones((3, 2)), visible_scale=jnp.asarray([0.5, 1.0, 2.0])
        )
    except ImportError:
        pass
    return cases


MODELS = {
    "rbm": _rbm(),
    "rbm_batched": _rbm((2,)),
    "rbm_log_partition": _rbm().with_log_partition(3.25),
    **_other_families(),
}


def assert_same(a, b):
    """Same class, same static configuration (treedef, aux included), bitwise-equal arrays."""
    assert type(a) is type(b)
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_exact(tmp_path, name):
    model = MODELS[name]
    path = tmp_path / "model.npz"
    save(path, model)
    copy = load(path)
    assert_same(model, copy)
    x = model.random_state(jax.random.key(1), (4,))
    np.testing.assert_array_equal(model.energy(x), copy.energy(x))
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_registry_holds_the_families_and_not_user_code():
    registry = family_registry()
    assert registry["BernoulliRBM"] is BernoulliRBM
    assert "EnergyDistribution" not in registry
    assert all(cls.__module__.startswith("numpyro_ebm.") for cls in registry.values())


def test_round_trip_float64(tmp_path, x64):
    model = BernoulliRBM(jnp.asarray(np.linspace(-1, 1, 15).reshape(5, 3), jnp.float64))
    save(tmp_path / "m.npz", model)
    copy = load(tmp_path / "m.npz")
    assert copy.weights.dtype == jnp.float64
    assert_same(model, copy)


def test_refuses_user_energy_functions_and_subclasses(tmp_path):
    custom = pytest.importorskip("numpyro_ebm.distributions.custom")
    model = custom.EnergyDistribution(lambda x: jnp.sum(x), (3,), support_values=(0, 1))
    with pytest.raises(ValueError, match="energy function"):
        save(tmp_path / "c.npz", model)

    class MyRBM(BernoulliRBM):
        pass

    with pytest.raises(ValueError, match="only numpyro_ebm's own families"):
        save(tmp_path / "s.npz", MyRBM(jnp.ones((2, 2))))
    with pytest.raises(ValueError, match="EnergyBasedDistribution"):
        save(tmp_path / "n.npz", jnp.ones(3))
    assert os.listdir(tmp_path) == []


def test_no_overwrite_without_permission(tmp_path):
    path = tmp_path / "m.npz"
    save(path, _rbm(seed=0))
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        save(path, _rbm(seed=1))
    assert_same(load(path), _rbm(seed=0))
    save(path, _rbm(seed=1), overwrite=True)
    assert_same(load(path), _rbm(seed=1))
    assert os.listdir(tmp_path) == ["m.npz"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(path, _rbm(seed=0))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save(path, _rbm(seed=1), overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"]
    assert_same(load(path), _rbm(seed=0))


def _rewrite(path, target, edit):
    """Copy the archive at ``path`` to ``target`` with ``edit(entries)`` applied."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    edit(entries)
    with open(target, "wb") as f:
        np.savez(f, **entries)


def _edit_metadata(fn):
    def edit(entries):
        meta = json.loads(str(entries[METADATA_KEY][()]))
        fn(meta)
        entries[METADATA_KEY] = np.asarray(json.dumps(meta))

    return edit


def _set(path_keys, value):
    def fn(meta):
        d = meta
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value

    return fn


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "corrupt, truncated"),
        ("garbage", "corrupt, truncated"),
        ("flipped_byte", "not a readable"),
        ("no_metadata", "no '__numpyro_ebm__' metadata"),
        ("bad_json", "unreadable metadata"),
        ("wrong_class", "not one of numpyro_ebm's families"),
        ("user_class", "not one of numpyro_ebm's families"),
        ("future_version", "file-format version 99"),
        ("shape_mismatch", "metadata says"),
        ("inconsistent_shapes", "inconsistent"),
        ("missing_field", "do not match this version"),
        ("object_array", "not a readable"),
    ],
)
def test_damaged_files_raise_value_error_naming_the_file(tmp_path, case, message):
    good = tmp_path / "good.npz"
    save(good, _rbm())
    bad = tmp_path / f"bad_{case}.npz"
    raw = good.read_bytes()
    if case == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif case == "garbage":
        bad.write_bytes(b"definitely not a numpy archive" * 10)
    elif case == "flipped_byte":
        # Flip a byte inside the stored weights: the zip CRC check must catch it.
        with zipfile.ZipFile(good) as z:
            info = z.getinfo("weights.npy")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
        data = bytearray(raw)
        data[offset] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif case == "no_metadata":
        _rewrite(good, bad, lambda e: e.pop(METADATA_KEY))
    elif case == "bad_json":
        _rewrite(good, bad, lambda e: e.__setitem__(METADATA_KEY, np.asarray("{not json")))
    elif case == "wrong_class":
        _rewrite(good, bad, _edit_metadata(_set(["model", "class"], "Nonexistent")))
    elif case == "user_class":
        _rewrite(good, bad, _edit_metadata(_set(["model", "class"], "EnergyDistribution")))
    elif case == "future_version":
        _rewrite(good, bad, _edit_metadata(_set(["format_version"], 99)))
    elif case == "shape_mismatch":
        _rewrite(good, bad, lambda e: e.__setitem__("weights", np.zeros((4, 3), np.float32)))
    elif case == "inconsistent_shapes":

        def edit(entries):
            entries["weights"] = np.zeros((4, 3), np.float32)
            _edit_metadata(_set(["model", "data_fields", "weights", "shape"], [4, 3]))(entries)

        _rewrite(good, bad, edit)
    elif case == "missing_field":

        def drop(meta):
            del meta["model"]["data_fields"]["hidden_bias"]

        _rewrite(good, bad, _edit_metadata(drop))
    elif case == "object_array":
        entries = dict(np.load(good, allow_pickle=False))
        entries["weights"] = np.asarray([object()], dtype=object)
        with open(bad, "wb") as f:
            np.savez(f, **entries)
    with pytest.raises(ValueError, match=message) as info:
        load(bad)
    assert str(bad) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.npz")
