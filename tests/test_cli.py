"""The numpyro-ebm command line: the demo end to end with small settings, and bad input."""

import subprocess
import sys

import numpy as np
import pytest

from numpyro_ebm.cli import main


def test_demo_writes_report_and_figures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--epochs", "3", "--num-draws", "60",
                 "--ais-temperatures", "300"]) == 0
    for name in ("report.txt", "samples.png", "chain.png", "data.png", "training.png",
                 "trace.png", "rank.png", "model.npz"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.txt").read_text()
    assert "exact held-out log-likelihood" in report and "R-hat" in report
    assert "AIS held-out log-likelihood: forward" in report and "AIS log Z" in report
    # A second run refuses to overwrite without asking (no TTY here).
    assert main(["demo", "--output", str(out), "--epochs", "1", "--num-draws", "10"]) == 2


def test_train_sample_logz_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = (rng.random((200, 6)) < 0.3).astype(np.int64)
    path = tmp_path / "data.csv"
    np.savetxt(path, data, delimiter=",", fmt="%d")
    model = tmp_path / "model.npz"
    assert main(["train", str(path), "--output", str(model), "--num-hidden", "3",
                 "--epochs", "2"]) == 0
    assert main(["logz", str(model)]) == 0
    out = capsys.readouterr().out
    assert "exact log Z" in out
    exact = float(out.split("=")[1])
    # AIS on the same 6 x 3 model: the exact value lies inside its 95% interval (a miss
    # would be a 1-in-20 event for a calibrated interval; this seed is fixed).
    assert main(["logz", str(model), "--method", "ais", "--ais-temperatures", "200"]) == 0
    out = capsys.readouterr().out
    lo, hi = (float(v) for v in out.split("[")[1].split("]")[0].split(","))
    assert "AIS log Z" in out and lo <= exact <= hi, (out, exact)
    assert main(["logz", str(model), "--method", "ais", "--ais-temperatures", "200",
                 "--ais-base", "model"]) == 0
    out = capsys.readouterr().out
    lo, hi = (float(v) for v in out.split("[")[1].split("]")[0].split(","))
    assert lo <= exact <= hi, (out, exact)
    assert main(["logz", str(model), "--method", "ais", "--ais-temperatures", "1"]) == 2
    samples = tmp_path / "samples.npy"
    assert main(["sample", str(model), "--num-samples", "7", "--num-sweeps", "5",
                 "--output", str(samples)]) == 0
    draws = np.load(samples, allow_pickle=False)
    assert draws.shape == (7, 6) and set(np.unique(draws)) <= {0, 1}
    assert main(["sample", str(model), "--output", str(samples)]) == 2  # exists


@pytest.mark.parametrize(
    "content, message",
    [
        ("0,1,2\n1,0,1\n", "0/1 valued"),
        ("0,1\n1,x\n", "could not read"),
    ],
)
def test_bad_data_files_get_clear_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["train", str(path), "--output", str(tmp_path / "m.npz")]) == 2
    assert message in capsys.readouterr().err


def test_pickled_npy_and_missing_files_are_refused(tmp_path, capsys):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["train", str(path)]) == 2
    assert "could not read" in capsys.readouterr().err
    assert main(["logz", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    assert main(["logz", str(garbage)]) == 2
    assert "garbage.npz" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "numpyro_ebm", "--help"], capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0 and "demo" in result.stdout
