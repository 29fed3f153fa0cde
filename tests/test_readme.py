"""The README's quickstart block runs as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_quickstart_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    quickstart = next(b for b in blocks if "MCMC(BlockGibbs(rbm)" in b)
    exec(compile(quickstart, "README.md", "exec"), {})
    assert "log Z =" in capsys.readouterr().out


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text(), "the README's test command must be what .ci/run runs"
