"""Shared helpers of the benchmark scripts: machine description, timing, tables, JSON.

The scripts in ``benchmarks/`` are plain programs (not tests). Each prints a markdown
table and, with ``--json PATH``, writes its rows together with :func:`machine_info` to a
JSON file. Import this module from a script run as ``python benchmarks/<script>.py`` (the
script's folder is then on ``sys.path``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

PACKAGES = ("jax", "jaxlib", "numpyro", "optax", "numpy", "scikit-learn", "mlxtend")


def cpu_model() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """SIMD flags worth knowing for matrix products (AVX2, AVX-512 F)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16"})
    except OSError:
        pass
    return []


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores usable by this process, memory, load, package versions."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    import jax

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "memory": memory,
        "load_average_1_5_15_min": load,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": versions(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe_machine(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (
        f"{info['cpu']} ({', '.join(info['cpu_flags'])}), {info['cores']} cores, "
        f"{info['memory']}, load {info['load_average_1_5_15_min']}; Python {v['python']}, "
        f"jax {v['jax']}, numpyro {v['numpyro']}, optax {v['optax']}, numpy {v['numpy']}, "
        f"scikit-learn {v['scikit-learn']}, mlxtend {v['mlxtend']}; JAX backend "
        f"{info['jax_backend']}"
    )


def time_call(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn`` (which must block until its result is
    ready, e.g. with ``jax.block_until_ready``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: A measurement is "quiet" when other processes used less than this share of the
#: machine's CPU capacity while it ran (see :class:`Stopwatch`).
QUIET_SHARE = 0.10


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Stopwatch:
    """Wall time of a measurement and the share of the machine's CPU capacity that *other*
    processes used meanwhile (busy time of all CPUs from ``/proc/stat`` minus this process's
    own CPU time, over ``wall * cores``). On a shared machine this tells which timings were
    taken while others competed for the cores; ``/proc/stat`` ticks are 10 ms, so the share
    of a measurement shorter than about 0.1 s is coarse.

    >>> watch = Stopwatch()
    >>> _ = sum(range(1000))
    >>> seconds, others = watch.read()
    """

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self.start()

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._busy = _machine_busy_seconds()
        self._own = _own_cpu_seconds()

    def read(self, restart: bool = False) -> tuple[float, float]:
        """``(seconds, others_share)`` since :meth:`start` (NaN share where unknown)."""
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_seconds()
        own = _own_cpu_seconds() - self._own
        if busy is None or self._busy is None or wall <= 0:
            share = float("nan")
        else:
            share = max(0.0, (busy - self._busy - own) / (wall * self.cores))
        if restart:
            self.start()
        return wall, share


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(seconds, others_share)`` of one call of ``fn`` (see :class:`Stopwatch`)."""
    watch = Stopwatch()
    fn()
    return watch.read()


def quiet_median(samples: Sequence[tuple[float, float]], threshold: float = QUIET_SHARE):
    """Median seconds over the samples taken while others used less than ``threshold`` of
    the machine, and how many there were (``(nan, 0)`` if none)."""
    quiet = [t for t, share in samples if share < threshold]
    return (median(quiet) if quiet else float("nan")), len(quiet)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """``min to max`` of repeated figures, as a string."""
    return f"{min(xs):.4g} to {max(xs):.4g}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows`` (dicts); floats printed with 4 significant digits."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(x):
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with ``machine`` added if missing) to ``path`` when given."""
    if not path:
        return
    payload = {"machine": machine_info(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    print(f"\nwrote {path}")


def parse_args(parser, render: Callable[[dict], dict[str, str]]):
    """Add the options every script shares, ``--json PATH`` (write the rows there) and
    ``--markdown`` (print :func:`render` of the ``--json`` file and measure nothing), and
    parse the command line: the arguments, or None when ``--markdown`` printed the tables
    (the script then stops)."""
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the tables of the JSON file given by --json (no measurement)",
    )
    args = parser.parse_args()
    if not args.markdown:
        return args
    if not args.json:
        parser.error("--markdown renders the file given by --json PATH; pass both")
    with open(args.json) as f:
        print("\n\n".join(render(json.load(f)).values()))
    return None
