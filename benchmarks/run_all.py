"""Run the benchmark scripts and write their tables into ``BENCHMARKS.md``.

Each script listed in :data:`SCRIPTS` writes its measurements with ``--json
benchmarks/results/<name>.json`` and exposes ``render(data) -> {part: markdown}``, which
turns such a file into its tables. ``BENCHMARKS.md`` marks every generated table::

    <!-- generated: sampler_throughput/ising -->
    | lattice | sweep | ... |
    <!-- end generated -->

and this command rewrites what lies between the two comments from the JSON files; text
outside the markers (the prose that reads the figures) is kept as it is, so a rerun that
changes the figures still needs its reading checked by hand. The block ``<!-- generated:
header -->`` lists, for every stored run, when and on which machine it was measured, the
package versions and the command that reproduces it.

Run from the repository root::

    python benchmarks/run_all.py                         # every script (about 35 minutes, quiet)
    python benchmarks/run_all.py --only sampler_throughput,pcd_mnist
    python benchmarks/run_all.py --dry-run               # re-render from the stored JSONs
    python benchmarks/run_all.py --dry-run --check       # exit 1 if BENCHMARKS.md is stale

Every script in ``benchmarks/`` except this one and ``common.py`` is listed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks") / "results"
DOCUMENT = "BENCHMARKS.md"

#: Script name -> the arguments it runs with (besides ``--json``): the commands of the
#: sections of BENCHMARKS.md.
SCRIPTS: dict[str, list[str]] = {
    "pcd_mnist": [],
    "estimators_digits": ["--seeds", "4"],
    "fit_digits": [],
    "relaxed_hmc_vs_gibbs": [],
    "diagnostics_overhead": ["--repeats", "5"],
    "prior_denoising": ["--large"],
    "ais_rbm": [],
    "ais_paths": [],
    "ais_ising": [],
    "sampler_throughput": ["--repeats", "11"],
}

#: A marked block: its start line, then anything (possibly nothing) up to the next end
#: marker, never across another start marker.
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w/]+) -->\n)"
    r"(?P<body>(?:(?!<!-- generated: ).)*?)"
    r"(<!-- end generated -->)",
    re.DOTALL,
)


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def command(name: str) -> str:
    """The command line that measures ``name`` as this script runs it."""
    args = " ".join([*SCRIPTS[name], "--json", result_path(name).as_posix()])
    return f"python benchmarks/{name}.py {args}"


def run(name: str) -> None:
    """Run one script (from the repository root, so the JSON records relative paths)."""
    (ROOT / RESULTS).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, f"benchmarks/{name}.py", *SCRIPTS[name]]
    cmd += ["--json", result_path(name).as_posix()]
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def load(name: str) -> dict | None:
    path = ROOT / result_path(name)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def render_header(results: dict[str, dict]) -> str:
    """The generated header: one row per stored run."""
    intro = (
        "Tables between `<!-- generated -->` markers are written by "
        "`python benchmarks/run_all.py` from the JSON files in `benchmarks/results/` "
        "(`--only NAME[,NAME]` reruns some scripts, `--dry-run` only re-renders); the prose "
        "around them is written by hand. The stored runs:"
    )
    lines = [
        textwrap.fill(intro, width=90, break_long_words=False, break_on_hyphens=False),
        "",
        "| script | measured | machine | versions | command |",
        "|---|---|---|---|---|",
    ]
    for name, data in results.items():
        m = data["machine"]
        v = m["versions"]
        machine = f"{m['cpu']}, {m['cores']} cores, {m['memory']}, JAX backend {m['jax_backend']}"
        packages = ", ".join(
            f"{k} {v[k]}" for k in ("python", "jax", "numpyro", "numpy", "scikit-learn") if k in v
        )
        lines.append(f"| {name} | {m['time']} | {machine} | {packages} | `{command(name)}` |")
    return "\n".join(lines)


def render_all(results: dict[str, dict]) -> dict[str, str]:
    """Every block this command can write: ``header`` and ``<script>/<part>``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    blocks = {"header": render_header(results)}
    for name, data in results.items():
        module = importlib.import_module(name)
        for part, text in module.render(data).items():
            blocks[f"{name}/{part}"] = text
    return blocks


def rewrite(text: str, blocks: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """``text`` with every marked block replaced; also the names rewritten and the names
    left alone (no stored run)."""
    done, missing = [], []

    def replace(match):
        name = match["name"]
        if name not in blocks:
            missing.append(name)
            return match[0]
        done.append(name)
        return match[1] + blocks[name] + "\n" + match[4]

    return BLOCK.sub(replace, text), done, missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated scripts to rerun (of {', '.join(SCRIPTS)}); default all",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="measure nothing: re-render BENCHMARKS.md from the stored JSON files",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when BENCHMARKS.md differs from the rendering",
    )
    args = parser.parse_args()
    selected = list(SCRIPTS) if args.only is None else args.only.split(",")
    unknown = [name for name in selected if name not in SCRIPTS]
    if unknown:
        parser.error(f"--only: unknown scripts {unknown}; choose from {list(SCRIPTS)}")
    if not args.dry_run:
        for name in selected:
            run(name)
    results = {name: data for name in SCRIPTS if (data := load(name)) is not None}
    path = ROOT / DOCUMENT
    text = path.read_text()
    blocks = render_all(results)
    new, done, missing = rewrite(text, blocks)
    print(f"rendered: {', '.join(done) or 'nothing'}")
    if missing:
        print(f"left as they are (no stored run): {', '.join(missing)}")
    unplaced = [name for name in blocks if name not in done]
    if unplaced:
        print(f"stored but without a marker in {DOCUMENT}: {', '.join(unplaced)}")
    if args.check:
        if new != text:
            print(f"{DOCUMENT} differs from the rendering of the stored runs")
            sys.exit(1)
        print(f"{DOCUMENT} is up to date")
        return
    if new != text:
        path.write_text(new)
        print(f"wrote {DOCUMENT}")
    else:
        print(f"{DOCUMENT} unchanged")


if __name__ == "__main__":
    main()
