"""Saving and loading energy-based distributions without pickle.

A model is stored as one ``.npz`` file: every array of the distribution's pytree *data*
(``weights``, ``fields``, an attached ``log_partition``, ...) as an array entry, and one
JSON metadata entry holding the file-format version, the package version, the class name
(looked up in a registry of this package's own families) and the pytree *aux* fields (the
static configuration: shapes, colourings, ``num_sweeps``, ...), with tuples preserved.
:func:`load` reads it with ``numpy.load(..., allow_pickle=False)`` and rebuilds the object
with ``cls.tree_unflatten``, so loading a file never runs code from the file, and the round
trip is exact (bitwise-equal arrays, same class, same static configuration).

Writes are atomic: the file is written to a temporary file in the same directory, flushed
and ``fsync``-ed, then moved over the target with ``os.replace``, so a crash leaves either
the old file or the new one, never a torn one. :mod:`numpyro_ebm.train` stores its
checkpoints with the same machinery.

Only this package's families can be saved: an
:class:`~numpyro_ebm.distributions.custom.EnergyDistribution` holds a Python energy function,
which cannot be stored without pickling code; save its ``params`` yourself and rebuild it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
import warnings
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_ebm.distributions.base import EnergyBasedDistribution

__all__ = ["FORMAT_VERSION", "load", "save"]

#: Version of the file layout written by :func:`save`; files of a newer version are refused.
FORMAT_VERSION = 1

#: Name of the JSON metadata entry inside the ``.npz`` archive.
METADATA_KEY = "__numpyro_ebm__"

#: Modules holding the package's families (imported, when present, to fill the registry).
_FAMILY_MODULES = (
    "numpyro_ebm.distributions.rbm",
    "numpyro_ebm.distributions.boltzmann",
    "numpyro_ebm.distributions.potts",
    "numpyro_ebm.distributions.gaussian_rbm",
    "numpyro_ebm.distributions.custom",
)

#: Families whose static configuration holds user code; they are never saved.
_UNSERIALIZABLE = {
    "LatentEnergyDistribution": (
        "it holds a Python energy function (energy_fn), which cannot be stored without "
        "pickling code. Save its params yourself (for example with numpy.savez) and rebuild "
        "it with LatentEnergyDistribution(energy_fn, ..., params=params)"
    ),
    "EnergyDistribution": (
        "it holds a Python energy function (energy_fn), which cannot be stored without "
        "pickling code. Save its params yourself (for example with numpy.savez) and rebuild "
        "it with EnergyDistribution(energy_fn, ..., params=params)"
    ),
}


# ---------------------------------------------------------------------- class registry
def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def family_registry() -> dict[str, type]:
    """The classes :func:`load` may instantiate: this package's public families, by name."""
    for module in _FAMILY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    registry = {}
    for cls in _subclasses(EnergyBasedDistribution):
        if not cls.__module__.startswith("numpyro_ebm."):
            continue
        if cls.__name__.startswith("_") or cls.__name__ in _UNSERIALIZABLE:
            continue
        registry.setdefault(cls.__name__, cls)
    return registry


def _check_savable(distribution: Any) -> type:
    cls = type(distribution)
    if not isinstance(distribution, EnergyBasedDistribution):
        raise ValueError(
            "distribution must be a numpyro_ebm EnergyBasedDistribution (for example "
            f"BernoulliRBM); got {cls.__name__}."
        )
    if cls.__name__ in _UNSERIALIZABLE:
        raise ValueError(f"cannot save a {cls.__name__}: {_UNSERIALIZABLE[cls.__name__]}.")
    if family_registry().get(cls.__name__) is not cls:
        raise ValueError(
            f"cannot save a {cls.__module__}.{cls.__qualname__}: only numpyro_ebm's own "
            "families can be saved (loading must never run code from outside the package). "
            "Save the parameters of your subclass yourself."
        )
    return cls


# ---------------------------------------------------------------------- JSON encoding
def encode_static(value: Any, where: str) -> Any:
    """A JSON-able form of a static (aux) value; tuples, dtypes and numpy scalars tagged so
    that :func:`decode_static` restores them exactly."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return {"__float__": repr(float(value))}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_static(v, where) for v in value]}
    if isinstance(value, list):
        return [encode_static(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode_static(v, where) for k, v in value.items()}}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": encode_static(value.tolist(), where), "dtype": value.dtype.name}
    raise ValueError(
        f"cannot save {where}: a value of type {type(value).__name__} has no portable "
        "encoding (only numbers, strings, tuples, lists, dicts and dtypes do)."
    )


def decode_static(value: Any) -> Any:
    """Inverse of :func:`encode_static`."""
    if isinstance(value, list):
        return [decode_static(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(decode_static(v) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__dict__" in value:
            return {k: decode_static(v) for k, v in value["__dict__"].items()}
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__ndarray__" in value:
            return np.asarray(decode_static(value["__ndarray__"]), dtype=value["dtype"])
        raise ValueError(f"unknown tagged value {sorted(value)}")
    return value


def _package_version() -> str:
    import numpyro_ebm

    return str(getattr(numpyro_ebm, "__version__", "unknown"))


# ---------------------------------------------------------------------- atomic npz files
def write_npz(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Write ``arrays`` and the JSON ``metadata`` to ``path`` atomically.

    The archive is written to a temporary file in the target's directory, flushed and
    ``fsync``-ed, then renamed over ``path`` (``os.replace``); the temporary file is removed
    if anything fails. Refuses an existing ``path`` unless ``overwrite=True``.
    """
    path = os.fspath(path)
    if METADATA_KEY in arrays:
        raise ValueError(f"{METADATA_KEY!r} is reserved for the metadata entry.")
    if not overwrite and os.path.exists(path):
        raise ValueError(
            f"{path} already exists; pass overwrite=True to replace it, or choose another path."
        )
    directory = os.path.dirname(os.path.abspath(path))
    entries = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in entries.items():
        if value.dtype == object:
            raise ValueError(f"cannot save entry {name!r} of {path}: object arrays need pickle.")
    entries[METADATA_KEY] = np.asarray(json.dumps(metadata, sort_keys=True, allow_nan=True))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every entry of a file written by :func:`write_npz` (no pickle, fully loaded and
    CRC-checked); any defect becomes a ``ValueError`` naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path} is not a readable numpyro_ebm file (corrupt, truncated or not an .npz "
            f"archive): {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:  # e.g. zlib.error from a damaged member
        raise ValueError(
            f"{path} is not a readable numpyro_ebm file: {type(exc).__name__}: {exc}"
        ) from None
    raw = arrays.pop(METADATA_KEY, None)
    if raw is None:
        raise ValueError(
            f"{path} is an .npz archive but not a numpyro_ebm file: it has no "
            f"{METADATA_KEY!r} metadata entry."
        )
    try:
        metadata = json.loads(str(raw[()]))
        if not isinstance(metadata, dict):
            raise TypeError("metadata is not a JSON object")
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path} has unreadable metadata: {exc}") from None
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path} has file-format version {version!r}; this numpyro_ebm reads versions up "
            f"to {FORMAT_VERSION}. Upgrade numpyro_ebm to read it."
        )
    return arrays, metadata


# ---------------------------------------------------------------------- models
def model_entries(distribution: EnergyBasedDistribution, prefix: str = "") -> tuple[dict, dict]:
    """``(arrays, metadata)`` describing ``distribution``; array names start with ``prefix``."""
    cls = _check_savable(distribution)
    data, aux = distribution.tree_flatten()
    data_names = cls.gather_pytree_data_fields()
    aux_names = cls.gather_pytree_aux_fields()
    arrays, fields = {}, {}
    for name, value in zip(data_names, data, strict=True):
        if value is None:
            fields[name] = None
            continue
        if not isinstance(value, jax.Array | np.ndarray | np.generic | int | float):
            raise ValueError(
                f"cannot save {cls.__name__}: its data field {name!r} is a "
                f"{type(value).__name__}, not an array."
            )
        arr = np.asarray(value)
        arrays[prefix + name] = arr
        fields[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape)}
    static = {
        name: encode_static(value, f"{cls.__name__}.{name}")
        for name, value in zip(aux_names, aux, strict=True)
    }
    metadata = {
        "class": cls.__name__,
        "module": cls.__module__,
        "data_fields": fields,
        "aux_fields": static,
    }
    return arrays, metadata


def model_from_entries(path: str, arrays: dict, metadata: dict, prefix: str = ""):
    """Rebuild the distribution described by :func:`model_entries` output read from ``path``."""
    name = metadata.get("class")
    registry = family_registry()
    if name not in registry:
        raise ValueError(
            f"{path} holds a model of class {name!r}, which is not one of numpyro_ebm's "
            f"families ({', '.join(sorted(registry))})."
        )
    cls = registry[name]
    fields = metadata.get("data_fields")
    static = metadata.get("aux_fields")
    data_names = cls.gather_pytree_data_fields()
    aux_names = cls.gather_pytree_aux_fields()
    if not isinstance(fields, dict) or set(fields) != set(data_names):
        raise ValueError(
            f"{path}: the data fields stored for {name} ({sorted(fields or {})}) do not match "
            f"this version of the class ({sorted(data_names)})."
        )
    if not isinstance(static, dict) or set(static) != set(aux_names):
        raise ValueError(
            f"{path}: the static fields stored for {name} ({sorted(static or {})}) do not "
            f"match this version of the class ({sorted(aux_names)})."
        )
    data = []
    for field in data_names:
        spec = fields[field]
        if spec is None:
            data.append(None)
            continue
        key = prefix + field
        if key not in arrays:
            raise ValueError(f"{path} is missing the array {key!r} of its {name}.")
        arr = arrays[key]
        if arr.dtype.name != spec.get("dtype") or list(arr.shape) != spec.get("shape"):
            raise ValueError(
                f"{path}: array {key!r} has dtype {arr.dtype.name} and shape "
                f"{list(arr.shape)}, but the metadata says {spec.get('dtype')} and "
                f"{spec.get('shape')}; the file is corrupt or was edited."
            )
        data.append(_to_jax(path, key, arr))
    try:
        aux = [decode_static(static[field]) for field in aux_names]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable static configuration: {exc}") from None
    try:
        distribution = cls.tree_unflatten(tuple(aux), tuple(data))
        _check_loaded(distribution)
    except Exception as exc:
        raise ValueError(
            f"{path}: the stored {name} is inconsistent (shapes or values that the class does "
            f"not accept): {type(exc).__name__}: {exc}"
        ) from None
    return distribution


def _to_jax(path: str, key: str, arr: np.ndarray) -> jax.Array:
    out = jnp.asarray(arr)
    if out.dtype != arr.dtype:
        warnings.warn(
            f"{path}: array {key!r} is stored as {arr.dtype.name} but loads as "
            f"{out.dtype.name} because jax_enable_x64 is off; enable it "
            "(jax.config.update('jax_enable_x64', True)) before loading for an exact copy.",
            stacklevel=4,
        )
    return out


def _check_loaded(distribution: EnergyBasedDistribution) -> None:
    """Shapes and constraints of a rebuilt model (cheap, runs only this package's code)."""
    shape = distribution.batch_shape + distribution.event_shape
    for name, value in distribution.energy_parameters().items():
        if value is None:
            continue
        constraint = distribution.arg_constraints.get(name)
        if constraint is not None and not bool(np.all(np.asarray(constraint(value)))):
            raise ValueError(f"{name} violates its constraint {constraint}")
        check = getattr(value, "shape", ())
        if len(check) > len(shape) + 2:
            raise ValueError(f"{name} has too many axes ({check}) for {shape}")
    # Evaluating the energy of one configuration checks that all the shapes agree.
    energy = distribution.energy(distribution.random_state(jax.random.key(0)))
    if jnp.shape(energy) != distribution.batch_shape:
        raise ValueError(
            f"energy has shape {jnp.shape(energy)}, expected batch_shape {distribution.batch_shape}"
        )


def save(
    path: str | os.PathLike, distribution: EnergyBasedDistribution, *, overwrite: bool = False
) -> None:
    """Save ``distribution`` to ``path`` (an ``.npz`` file), atomically and without pickle.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; used as given (no suffix is added).
    distribution : EnergyBasedDistribution
        One of numpyro_ebm's families (not an ``EnergyDistribution``, whose energy function
        is Python code).
    overwrite : bool
        Replace an existing file (default ``False``: refuse).

    Examples
    --------
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.io import load, save
    >>> rbm = BernoulliRBM(jnp.ones((3, 2)), jnp.zeros(3), jnp.arange(2.0))
    >>> path = os.path.join(tempfile.mkdtemp(), "rbm.npz")
    >>> save(path, rbm)
    >>> copy = load(path)
    >>> type(copy).__name__, bool((copy.hidden_bias == rbm.hidden_bias).all())
    ('BernoulliRBM', True)
    """
    arrays, model = model_entries(distribution)
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": "model",
        "package_version": _package_version(),
        "model": model,
    }
    write_npz(path, arrays, metadata, overwrite=overwrite)


def load(path: str | os.PathLike) -> EnergyBasedDistribution:
    """Load a distribution saved by :func:`save` (or the model of a training checkpoint).

    Never unpickles and never imports anything outside numpyro_ebm. A corrupt, truncated,
    foreign or inconsistent file raises ``ValueError`` naming the file and the defect.

    Examples
    --------
    >>> import os, tempfile
    >>> from numpyro_ebm import IsingModel
    >>> from numpyro_ebm.io import load, save
    >>> lattice = IsingModel.lattice((4, 4), coupling=0.25, field=0.5)
    >>> path = os.path.join(tempfile.mkdtemp(), "ising.npz")
    >>> save(path, lattice)
    >>> copy = load(path)
    >>> copy
    IsingLattice(shape=(4, 4), periodic=True, batch_shape=())
    >>> float(copy.coupling), float(copy.field)
    (0.25, 0.5)
    """
    path = os.fspath(path)
    arrays, metadata = read_npz(path)
    model = metadata.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path} is a numpyro_ebm file without a model entry.")
    prefix = metadata.get("model_prefix", "")
    return model_from_entries(path, arrays, model, prefix=prefix)
