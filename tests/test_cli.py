"""The ``refflow`` command, run as a subprocess with tiny budgets: outputs, errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest

import refflow
from refflow.cli import main
from refflow.tour import CONSTRUCTS, FLOWS, build_flow, check_construct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(refflow.__file__)))


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "refflow.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=300)


def test_tour_lists_every_construct_and_writes_figures(tmp_path):
    out = tmp_path / "tour"
    res = run("tour", "--out", str(out), "--moons-steps", "3", "--vi-steps", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for c in CONSTRUCTS:
        assert any(line.startswith(c.name + " ") for line in lines), c.name
    for name in ("moons_realnvp.png", "u1_planar.png", "moons_curves.png", "u1_curves.png"):
        assert (out / name).stat().st_size > 1000
    numbers = json.loads((out / "tour.json").read_text())
    assert all(r["roundtrip"] < 1e-8 and r["logdet_gap"] < 1e-6 for r in numbers["constructs"])
    assert str(out) in res.stdout


def test_train_then_sample(tmp_path):
    out = tmp_path / "run"
    res = run("train", "--data", "eight_gaussians", "--flow", "realnvp", "--layers", "2",
              "--hidden", "8", "--steps", "3", "--n", "300", "--out", str(out))
    assert res.returncode == 0, res.stderr
    for name in ("model.npz", "metrics.json", "data.png", "latent.png", "samples.png",
                 "density.png", "curves.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "kl_true_to_model" in metrics
    res = run("sample", "--model", str(out / "model.npz"), "-n", "7", "--out",
              str(tmp_path / "x.npy"))
    assert res.returncode == 0, res.stderr
    x = numpy.load(tmp_path / "x.npy")
    assert x.shape == (7, 2) and numpy.all(numpy.isfinite(x))
    assert main(["sample", "--model", str(out / "model.npz"), "-n", "5", "--out",
                 str(tmp_path / "x.csv")]) == 0
    assert numpy.loadtxt(tmp_path / "x.csv", delimiter=",").shape == (5, 2)


def test_vi(tmp_path):
    res = run("vi", "--target", "U2", "--flow", "planar", "-K", "2", "--steps", "3",
              "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["K"] == 2 and not metrics["normalisable_on_R2"]
    assert metrics["kl"] == pytest.approx(metrics["log_z"] - metrics["elbo"])
    assert (tmp_path / "model.npz").exists() and (tmp_path / "density.png").exists()


@pytest.mark.parametrize("args", [
    ["train", "--data", "nope", "--flow", "realnvp", "--out", "x"],
    ["train", "--data", "moons", "--flow", "nope", "--out", "x"],
    ["train", "--data", "moons", "--flow", "realnvp", "--steps", "-3", "--out", "x"],
    ["train", "--data", "moons", "--flow", "realnvp", "--lr", "nan", "--out", "x"],
    ["vi", "--target", "U9", "--out", "x"],
    ["sample", "--model", "m.npz", "-n", "zero", "--out", "x.npy"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_runtime_errors_exit_1(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing.npz"), "-n", "3",
                 "--out", str(tmp_path / "x.npy")]) == 1
    assert "no file" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_text("not a model")
    assert main(["sample", "--model", str(bad), "-n", "3", "--out", str(tmp_path / "x.npy")]) == 1
    assert "not a valid refflow model file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["vi", "--target", "U1", "--out", str(blocker / "sub")]) == 1
    assert "cannot create" in capsys.readouterr().err


def test_help_everywhere(capsys):
    for args in ([], ["tour"], ["train"], ["sample"], ["vi"]):
        with pytest.raises(SystemExit) as exc:
            main(args + ["--help"])
        assert exc.value.code == 0
        assert "usage: refflow" in capsys.readouterr().out
    assert main(["verify", "--help"]) == 0
    assert "usage: refflow verify" in capsys.readouterr().out


def test_verify_delegates(capsys):
    assert main(["verify", "refflow.affine:Diagonal", "--dim", "3", "--n", "4"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["verify", "no.such.module:thing"]) == 2


def test_the_tour_covers_every_public_bijection():
    public = {name for name in refflow.__all__
              if isinstance(getattr(refflow, name), type) and name != "Bijection"
              and hasattr(getattr(refflow, name), "forward")
              and hasattr(getattr(refflow, name), "inverse")}
    assert public == {c.name for c in CONSTRUCTS}


def test_construct_check_sees_a_wrong_log_det():
    from dataclasses import replace

    from refflow import backend as B
    from refflow.affine import Diagonal

    class Wrong(Diagonal):
        def forward(self, z):
            x, log_det = super().forward(z)
            return x, 2.0 * log_det

    bad = replace(CONSTRUCTS[3], build=lambda r: Wrong(B.asarray([2.0, 3.0, 1.0, 1.0]),
                                                     B.zeros(4)))
    assert check_construct(bad, B.rng(0))["logdet_gap"] == pytest.approx(numpy.log(6.0))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_cli_flow_builds_and_inverts(name):
    from refflow import backend as B

    flow = build_flow(name, 2, 2, B.rng(0), hidden=8)
    x, log_q = flow.sample_and_log_prob(5, B.rng(1))
    numpy.testing.assert_allclose(B.to_numpy(flow.log_prob(x)), B.to_numpy(log_q), atol=1e-8)
