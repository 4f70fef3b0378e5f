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
    # argparse exits itself (SystemExit); the commands' own checks return the status
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


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
        def forward(self, z, context=None):
            x, log_det = super().forward(z, context)
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


# ------------------------------------------------------------------ no tracebacks, own data


def _one_line_error(capsys, code, status, match):
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err


def _files(tmp_path):
    rng = numpy.random.default_rng(0)
    paths = {}
    paths["d3.npy"] = tmp_path / "d3.npy"
    numpy.save(paths["d3.npy"], rng.standard_normal((60, 3)))
    paths["d2.csv"] = tmp_path / "d2.csv"
    numpy.savetxt(paths["d2.csv"], rng.standard_normal((60, 2)), delimiter=",")
    paths["text.csv"] = tmp_path / "text.csv"
    paths["text.csv"].write_text("1.0,2.0\n3.0,abc\n" * 20)
    paths["ragged.csv"] = tmp_path / "ragged.csv"
    paths["ragged.csv"].write_text("1.0,2.0\n3.0\n" * 20)
    paths["empty.csv"] = tmp_path / "empty.csv"
    paths["empty.csv"].write_text("")
    for name, array in {"nan.npy": numpy.full((30, 2), numpy.nan),
                        "complex.npy": numpy.ones((30, 2), complex),
                        "flat.npy": numpy.ones(30),
                        "text.npy": numpy.array([["a", "b"]] * 30)}.items():
        paths[name] = tmp_path / name
        numpy.save(paths[name], array)
    paths["object.npy"] = tmp_path / "object.npy"
    numpy.save(paths["object.npy"], numpy.array([[{}, {}]] * 30, dtype=object),
               allow_pickle=True)
    paths["short.npy"] = tmp_path / "short.npy"
    numpy.save(paths["short.npy"], numpy.ones((5, 2)))
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.filterwarnings("ignore::UserWarning")  # loadtxt: the empty file
@pytest.mark.parametrize("name, match", [
    ("text.csv", "could not convert"), ("ragged.csv", "cannot read"),
    ("empty.csv", "no samples"), ("nan.npy", "finite"), ("complex.npy", "real numbers"),
    ("flat.npy", "2-d array"), ("text.npy", "real numbers"), ("object.npy", "cannot read"),
    ("short.npy", "at least 20 rows"), ("missing.npy", "no file"),
])
def test_train_refuses_bad_data_files_in_one_line(tmp_path, capsys, name, match):
    path = _files(tmp_path).get(name, str(tmp_path / name))
    code = main(["train", "--data", path, "--flow", "maf", "--steps", "1",
                 "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, 2, match)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("args, status, match", [
    (["train", "--data", "moons", "--flow", "realnvp", "--n", "1"], 2, "--n: expected at least"),
    (["train", "--data", "moons.txt", "--flow", "realnvp"], 2, "or a .npy or .csv file"),
    (["train", "--data", "{d2.csv}", "--flow", "realnvp", "--n", "50"], 2, "--n: only for"),
    (["train", "--data", "{d3.npy}", "--flow", "realnvp", "--layers", "1"], None, None),
    (["sample", "--model", "{model}", "-n", "3", "--out", "{folder}"], 2, "expected a file"),
    (["sample", "--model", "{model}", "-n", "3", "--out", "{folder}/x.npz"], 2, "ending in"),
    (["sample", "--model", "{model}", "-n", "3", "--out", "{dir.npy}"], 2, "is a folder"),
    (["sample", "--model", "{d3.npy}", "-n", "3", "--out", "{folder}/x.npy"], 1,
     "not a valid refflow model file"),
    (["log-prob", "--model", "{model}", "--data", "{d3.npy}", "--out", "{folder}/lp.npy"], 2,
     "the model takes samples of shape (2,)"),
    (["log-prob", "--model", "{model}", "--data", "{nan.npy}", "--out", "{folder}/lp.npy"], 2,
     "finite"),
    (["log-prob", "--model", "{model}", "--data", "{d2.csv}", "--out", "{folder}/lp.png"], 2,
     "ending in .npy, .csv"),
])
def test_command_failures_are_one_line(tmp_path, capsys, args, status, match):
    from refflow import io
    from refflow.affine import Diagonal
    from refflow.core import Flow
    from refflow.distributions import StandardNormal

    files = _files(tmp_path)
    files["model"] = str(tmp_path / "model.npz")
    io.save(files["model"], Flow(StandardNormal(2), Diagonal(numpy.ones(2), numpy.zeros(2))))
    files["folder"] = str(tmp_path)
    (tmp_path / "dir.npy").mkdir()
    files["dir.npy"] = str(tmp_path / "dir.npy")
    for key, value in files.items():
        args = [a.replace("{" + key + "}", value) for a in args]
    if args[0] == "train":
        args += ["--steps", "1", "--hidden", "4", "--out", str(tmp_path / "run")]
    code = main(args)
    if status is None:  # the control case: a good file, the same arguments
        assert code == 0, capsys.readouterr().err
        return
    _one_line_error(capsys, code, status, match)


def test_an_unwritable_output_is_one_line(tmp_path, capsys, monkeypatch):
    import autograd.numpy as anp

    from refflow import io
    from refflow.affine import Diagonal
    from refflow.core import Flow
    from refflow.distributions import StandardNormal

    model = str(tmp_path / "model.npz")
    io.save(model, Flow(StandardNormal(2), Diagonal(numpy.ones(2), numpy.zeros(2))))

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(anp, "save", refuse)
    code = main(["sample", "--model", model, "-n", "3", "--out", str(tmp_path / "x.npy")])
    _one_line_error(capsys, code, 1, "cannot write")


def test_log_prob_scores_a_file_against_scipy(tmp_path, capsys):
    # x = scale z + shift with z ~ N(0, I): log p(x) is a sum of normal log-densities
    from scipy.stats import norm

    from refflow import io
    from refflow.affine import Diagonal
    from refflow.core import Flow
    from refflow.distributions import StandardNormal

    scale, shift = numpy.array([0.5, 2.0]), numpy.array([1.0, -3.0])
    model = str(tmp_path / "model.npz")
    io.save(model, Flow(StandardNormal(2), Diagonal(scale, shift)))
    x = numpy.random.default_rng(1).standard_normal((25, 2))
    expected = norm.logpdf(x, loc=shift, scale=scale).sum(axis=1)
    numpy.savetxt(tmp_path / "x.csv", x, delimiter=",")
    numpy.save(tmp_path / "x.npy", x)
    for data, out in (("x.csv", "lp.npy"), ("x.npy", "lp.csv")):
        assert main(["log-prob", "--model", model, "--data", str(tmp_path / data),
                     "--out", str(tmp_path / out)]) == 0
        got = (numpy.load(tmp_path / out) if out.endswith(".npy")
               else numpy.loadtxt(tmp_path / out, delimiter=","))
        numpy.testing.assert_allclose(got, expected, rtol=1e-12)
    assert "25 rows" in capsys.readouterr().out


def test_train_on_own_files_then_score_them(tmp_path):
    files = _files(tmp_path)
    for data, dim, figures in (("d3.npy", 3, False), ("d2.csv", 2, True)):
        out = tmp_path / data.replace(".", "_")
        assert main(["train", "--data", files[data], "--flow", "maf", "--layers", "2",
                     "--hidden", "8", "--steps", "3", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["dim"] == dim and numpy.isfinite(metrics["test_nll"])
        assert (out / "density.png").exists() == figures
        assert main(["log-prob", "--model", str(out / "model.npz"), "--data", files[data],
                     "--out", str(out / "lp.npy")]) == 0
        assert numpy.load(out / "lp.npy").shape == (60,)


def test_bad_data_through_a_real_process(tmp_path):
    files = _files(tmp_path)
    res = run("train", "--data", files["text.csv"], "--flow", "maf", "--out",
              str(tmp_path / "run"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "could not convert" in res.stderr
    res = run("sample", "--model", files["d3.npy"], "-n", "2", "--out", str(tmp_path))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_vi_at_a_huge_learning_rate_writes_a_model_that_loads(tmp_path, capsys):
    # lr 1000 drives the planar layers to w . v = -1 within rounding: the file must load
    from refflow import io

    assert main(["vi", "--target", "U1", "-K", "4", "--steps", "200", "--lr", "1000",
                 "--out", str(tmp_path)]) == 0
    flow = io.load(str(tmp_path / "model.npz"))
    assert len(flow.bijection) == 4


def test_the_cli_loads_back_what_it_wrote(tmp_path, capsys, monkeypatch):
    from refflow import io

    def damaged(path):
        raise ValueError(f"path: {path!r} is not a valid refflow model file: simulated")

    monkeypatch.setattr(io, "load", damaged)
    code = main(["vi", "--target", "U2", "-K", "1", "--steps", "2", "--out", str(tmp_path)])
    _one_line_error(capsys, code, 1, "does not load back")


# ------------------------------------------------------------------ conditional flows: --context


def _conditional_files(tmp_path, n=1000):
    """x = 2 c + 0.3 e with c, e ~ N(0, I_2): x.npy and c.csv, one context row per data row."""
    rng = numpy.random.default_rng(0)
    c = rng.standard_normal((n, 2))
    x = 2.0 * c + 0.3 * rng.standard_normal((n, 2))
    numpy.save(tmp_path / "x.npy", x)
    numpy.savetxt(tmp_path / "c.csv", c, delimiter=",")
    return x, c


def test_train_with_context_learns_x_given_c(tmp_path, capsys):
    from refflow import io

    x, c = _conditional_files(tmp_path)
    common = ["--flow", "maf", "--layers", "2", "--hidden", "16", "--steps", "300",
              "--batch-size", "128", "--data", str(tmp_path / "x.npy")]
    assert main(["train", *common, "--context", str(tmp_path / "c.csv"),
                 "--out", str(tmp_path / "cond")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "unc")]) == 0
    cond = json.loads((tmp_path / "cond" / "metrics.json").read_text())
    unc = json.loads((tmp_path / "unc" / "metrics.json").read_text())
    assert cond["context_dim"] == 2 and unc["context_dim"] == 0
    # exact entropies of the Gaussians: H(x) = log(2 pi e 4.09), H(x | c) = log(2 pi e 0.09);
    # without c no model's expected NLL goes below H(x), with it none below H(x | c)
    h_x, h_x_c = (numpy.log(2 * numpy.pi * numpy.e * v) for v in (4.09, 0.09))
    assert h_x - 0.3 < unc["test_nll"] and cond["test_nll"] < h_x - 2.0
    assert cond["test_nll"] < unc["test_nll"] - 2.0 and cond["test_nll"] > h_x_c - 0.3
    # a conditional 2-D run draws its samples at the data's contexts: no single-c density
    assert (tmp_path / "cond" / "samples.png").exists()
    assert not (tmp_path / "cond" / "density.png").exists()

    # log-prob from the command line = the loaded flow's own log_prob at the same pairs
    model = str(tmp_path / "cond" / "model.npz")
    flow = io.load(model)
    assert main(["log-prob", "--model", model, "--data", str(tmp_path / "x.npy"),
                 "--context", str(tmp_path / "c.csv"), "--out", str(tmp_path / "lp.npy")]) == 0
    got = numpy.load(tmp_path / "lp.npy")
    numpy.testing.assert_allclose(got, flow.log_prob(x, c), rtol=1e-12)
    # one context row for all rows: the same as that row repeated
    numpy.savetxt(tmp_path / "c0.csv", c[:1], delimiter=",")
    assert main(["log-prob", "--model", model, "--data", str(tmp_path / "x.npy"),
                 "--context", str(tmp_path / "c0.csv"), "--out", str(tmp_path / "lp0.npy")]) == 0
    numpy.testing.assert_allclose(numpy.load(tmp_path / "lp0.npy"),
                                  flow.log_prob(x, numpy.repeat(c[:1], len(x), axis=0)),
                                  rtol=1e-12)

    # sampling at one broadcast context: x | c ~ N(2 c, 0.09 I), so the mean is near 2 c
    numpy.savetxt(tmp_path / "one.csv", [[1.0, -1.0]], delimiter=",")
    assert main(["sample", "--model", model, "-n", "2000", "--context",
                 str(tmp_path / "one.csv"), "--out", str(tmp_path / "s.npy")]) == 0
    s = numpy.load(tmp_path / "s.npy")
    assert s.shape == (2000, 2)
    numpy.testing.assert_allclose(s.mean(axis=0), [2.0, -2.0], atol=0.3)
    assert numpy.all(s.std(axis=0) < 1.0)  # the marginal's is 2.02
    # one context row per sample: each sample sits near its own 2 c, not near another's
    assert main(["sample", "--model", model, "-n", "1000", "--context",
                 str(tmp_path / "c.csv"), "--out", str(tmp_path / "s.csv")]) == 0
    s = numpy.loadtxt(tmp_path / "s.csv", delimiter=",")
    own = numpy.mean(numpy.sum((s - 2 * c) ** 2, axis=1))
    other = numpy.mean(numpy.sum((s - 2 * c[::-1]) ** 2, axis=1))
    assert own < 1.0 < other


@pytest.mark.parametrize("args, match", [
    # train: a built-in set has no context; a context file must have the data's rows
    (["train", "--data", "moons", "--context", "{c.csv}", "--flow", "maf"],
     "--context: only with a --data file"),
    (["train", "--data", "{x.npy}", "--context", "{c3.csv}", "--flow", "maf"],
     "--context: expected 40 rows"),
    (["train", "--data", "{x.npy}", "--context", "{nan.npy}", "--flow", "maf"], "finite"),
    # sample and log-prob: a context for an unconditional model, none for a conditional one,
    # the wrong width, the wrong number of rows
    (["sample", "--model", "{plain}", "-n", "3", "--context", "{c.csv}", "--out", "{s.npy}"],
     "--context: the model takes no context"),
    (["sample", "--model", "{cond}", "-n", "3", "--out", "{s.npy}"],
     "--context: the model is conditional (contexts of 2 values)"),
    (["sample", "--model", "{cond}", "-n", "3", "--context", "{wide.csv}", "--out", "{s.npy}"],
     "--context: the model takes contexts of 2 values"),
    (["sample", "--model", "{cond}", "-n", "5", "--context", "{c3.csv}", "--out", "{s.npy}"],
     "--context: expected 5 rows (one per sample) or 1"),
    (["log-prob", "--model", "{plain}", "--data", "{x.npy}", "--context", "{c.csv}",
      "--out", "{lp.npy}"], "--context: the model takes no context"),
    (["log-prob", "--model", "{cond}", "--data", "{x.npy}", "--out", "{lp.npy}"],
     "--context: the model is conditional"),
    (["log-prob", "--model", "{cond}", "--data", "{x.npy}", "--context", "{wide.csv}",
      "--out", "{lp.npy}"], "--context: the model takes contexts of 2 values"),
    (["log-prob", "--model", "{cond}", "--data", "{x.npy}", "--context", "{c3.csv}",
      "--out", "{lp.npy}"], "--context: expected 40 rows"),
    # the control cases: the same commands with a good context succeed
    (["sample", "--model", "{cond}", "-n", "40", "--context", "{c.csv}", "--out", "{s.npy}"],
     None),
    (["log-prob", "--model", "{cond}", "--data", "{x.npy}", "--context", "{c.csv}",
      "--out", "{lp.npy}"], None),
    (["train", "--data", "{x.npy}", "--context", "{c.csv}", "--flow", "spline"], None),
])
def test_context_errors_are_one_line_exit_2(tmp_path, capsys, args, match):
    from refflow import backend as B
    from refflow import io

    rng = numpy.random.default_rng(2)
    files = {"c.csv": rng.standard_normal((40, 2)), "c3.csv": rng.standard_normal((3, 2)),
             "wide.csv": rng.standard_normal((40, 3))}
    paths = {name: str(tmp_path / name) for name in
             ("c.csv", "c3.csv", "wide.csv", "x.npy", "nan.npy", "s.npy", "lp.npy", "plain",
              "cond")}
    for name, table in files.items():
        numpy.savetxt(paths[name], table, delimiter=",")
    numpy.save(paths["x.npy"], rng.standard_normal((40, 2)))
    numpy.save(paths["nan.npy"], numpy.full((40, 2), numpy.nan))
    paths["plain"] = str(tmp_path / "plain.npz")
    paths["cond"] = str(tmp_path / "cond.npz")
    io.save(paths["plain"], build_flow("maf", 2, 1, B.rng(0), hidden=4))
    io.save(paths["cond"], build_flow("maf", 2, 1, B.rng(0), hidden=4, context_dim=2))
    for key, value in paths.items():
        args = [a.replace("{" + key + "}", value) for a in args]
    if args[0] == "train":
        args += ["--steps", "2", "--hidden", "4", "--layers", "1", "--out", str(tmp_path / "run")]
    code = main(args)
    if match is None:
        assert code == 0, capsys.readouterr().err
        return
    _one_line_error(capsys, code, 2, match)
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_cli_flow_builds_conditional(name):
    from refflow import backend as B

    flow = build_flow(name, 2, 2, B.rng(0), hidden=8, context_dim=3)
    assert flow.context_dim == 3
    c = numpy.random.default_rng(1).standard_normal((5, 3))
    x, log_q = flow.sample_and_log_prob(5, B.rng(1), context=c)
    numpy.testing.assert_allclose(B.to_numpy(flow.log_prob(x, c)), B.to_numpy(log_q), atol=1e-8)
    # conditional, so a missing context is refused (the zero_last families ignore c at init)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(x)


def test_conditional_train_through_a_real_process(tmp_path):
    _conditional_files(tmp_path, n=60)
    res = run("train", "--data", str(tmp_path / "x.npy"), "--context", str(tmp_path / "x.npy"),
              "--flow", "realnvp", "--layers", "1", "--steps", "2", "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    res = run("sample", "--model", str(tmp_path / "r" / "model.npz"), "-n", "4",
              "--out", str(tmp_path / "s.npy"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--context" in res.stderr
