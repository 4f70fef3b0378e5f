"""Fuzzing the public entry points: malformed arrays and malformed model files.

Every entry point that takes data must either work or refuse with the documented error
type; nothing else may escape (no TypeError from deep inside NumPy, no IndexError, no
MemoryError, no NotImplementedError). The allowed types:

* ``ValueError``: the input was refused; the message names the argument.
* ``refflow.solvers.ConvergenceError``: a numerical inverse (bisection, fixed point) did
  not reach its tolerance within its limits, which extreme but well-formed inputs may
  cause. Allowed only for well-formed inputs (finite, real, of the right shape).
* ``FloatingPointError``: ``fit`` / ``fit_vi`` stop when the objective or a gradient
  becomes NaN or infinite (documented in both).

Inputs that are wrong whatever the values (the wrong event size, complex, text, objects,
a list, a foreign tensor, a 0-d array) must be refused with ``ValueError``; inputs that
may be meaningful (NaN, inf, integers, booleans, an empty batch, huge values, one sample
without a batch axis) may also be accepted. Example counts are small: every (bijection,
malformation) pair runs, hypothesis varies the seed, the batch and the magnitudes.
"""

from __future__ import annotations

import dataclasses
import inspect
import io as _io
import json
import zipfile

import numpy
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from refflow import backend as B
from refflow.affine import Diagonal
from refflow.core import Flow
from refflow.distributions import StandardNormal
from refflow.io import _digest, load, save
from refflow.solvers import ConvergenceError
from refflow.testing import check_bijection
from refflow.train import fit, fit_vi
from tests.registry import load_all
from tests.strict import StrictArray

ENTRIES = load_all()
NAMES = sorted(ENTRIES)

# malformations refused whatever the values
REFUSE = ("wrong_event", "zero_d", "complex", "object", "text", "list", "tensor")
# malformations that a family may accept (NaN in, NaN out; ints promote; nothing to do)
MAY_WORK = ("nan", "inf", "int", "bool", "empty", "huge", "one_sample")
KINDS = REFUSE + MAY_WORK

# refflow/testing (the verifier's module): malformation -> a known bug of check_bijection
# with such inputs, a strict xfail until fixed (none known)
CHECKER_BUGS: dict[str, str] = {}


class _ForeignTensor:
    """What a torch tensor looks like to refflow: a shape, and a dtype that is not NumPy's."""

    def __init__(self, x):
        self.shape = x.shape
        self.dtype = object.__new__(type("dtype", (), {"__repr__": lambda s: "torch.float64"}))


def _malformed(kind: str, z, rng) -> object:
    """A malformed version of the valid batch ``z`` (N, *event), host NumPy."""
    n, event = z.shape[0], z.shape[1:]
    if kind == "wrong_event":
        return numpy.zeros((n,) + event[:-1] + (event[-1] + 1,))
    if kind == "zero_d":
        return numpy.asarray(0.5)
    if kind in ("nan", "inf"):
        bad = z.copy()
        bad.reshape(n, -1)[int(rng.integers(n)), int(rng.integers(bad[0].size))] = (
            numpy.nan if kind == "nan" else -numpy.inf)
        return bad
    if kind == "complex":
        return z + 1j * rng.standard_normal(z.shape)
    if kind == "int":
        return numpy.round(z).astype(numpy.int64)
    if kind == "bool":
        return z > 0
    if kind == "object":
        return z.astype(object)
    if kind == "text":
        return z.astype(str)
    if kind == "empty":
        return z[:0]
    if kind == "huge":
        return z * 10.0 ** float(rng.choice([8, 30, 300]))
    if kind == "one_sample":
        return z[0]
    if kind == "list":
        return z.tolist()
    if kind == "tensor":
        return _ForeignTensor(z)
    raise AssertionError(kind)


def _expect(kind: str, call, what: str, may_work: tuple = MAY_WORK) -> object:
    """Run ``call()``: refused kinds must raise ValueError; others may work."""
    try:
        out = call()
    except ValueError:
        return None
    except ConvergenceError:
        assert kind in may_work and kind not in ("nan", "empty"), (
            f"{what}: ConvergenceError for {kind} input, expected ValueError")
        return None
    assert kind in may_work, f"{what}: accepted a {kind} input"
    return out


def _case(name: str, seed: int, batch: int):
    entry = ENTRIES[name]
    dim = max(entry.min_dim, min(3, entry.max_dim))
    rng = B.rng(seed)
    case = entry.factory(rng, dim)
    event_shape = tuple(case.event_shape or (dim,))
    z = case.inputs(rng, batch) if case.inputs else rng.standard_normal((batch,) + event_shape)
    # a conditional case gets a valid context: only z is malformed here
    context = rng.standard_normal((batch, case.context_dim)) if case.context_dim else None
    return case.bijection, B.to_numpy(z), event_shape, context


def _params():
    for name in NAMES:
        for kind in KINDS:
            yield pytest.param(name, kind, id=f"{name}-{kind}")


# no shrinking: a failure is reported as found (shrinking a known family bug costs minutes)
fuzz = settings(max_examples=2, deadline=None, phases=[Phase.explicit, Phase.generate])
draws = st.fixed_dictionaries({"seed": st.integers(0, 2**16), "batch": st.integers(1, 3)})


@pytest.mark.parametrize("name, kind", _params())
@fuzz
@given(draw=draws)
def test_bijections_refuse_malformed_arrays(name, kind, draw):
    bijection, z, event_shape, c = _case(name, draw["seed"], draw["batch"])
    rng = numpy.random.default_rng(draw["seed"])
    x = B.to_numpy(bijection.forward(B.asarray(z), context=c)[0])
    flow = Flow(StandardNormal(event_shape), bijection)
    # a bijection without fields (Reverse, Squeeze) takes any event size: not malformed
    may_work = MAY_WORK + (("wrong_event",) if not dataclasses.fields(bijection) else ())
    _expect(kind, lambda: bijection.forward(_malformed(kind, z, rng), context=c),
            f"{name}.forward", may_work)
    _expect(kind, lambda: bijection.inverse(_malformed(kind, x, rng), context=c),
            f"{name}.inverse", may_work)
    _expect(kind, lambda: flow.log_prob(_malformed(kind, x, rng), context=c),
            f"{name}: Flow.log_prob", may_work)


@pytest.mark.parametrize("name", NAMES)
def test_init_takes_numpy_integers_and_refuses_other_dims(name):
    entry = ENTRIES[name]
    dim = max(entry.min_dim, min(3, entry.max_dim))
    # the registry's factories pass dim on to the families' init and constructors
    case = entry.factory(B.rng(0), numpy.int64(dim))
    cls = type(case.bijection)
    init = getattr(cls, "init", None)
    if init is None:
        return  # Compose, Inverse: built from other bijections, no dimension
    required = [p for p, v in inspect.signature(init).parameters.items()
                if v.default is inspect.Parameter.empty and p not in ("rng", "dim")
                and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    extra = {p: getattr(case.bijection, p) for p in required}
    for bad in (0, -1, 2.5, "3", None, True, numpy.float64(3.0), [3]):
        with pytest.raises(ValueError, match="dim"):
            init(B.rng(0), bad, **extra)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", None, True, numpy.float64(2.0), [2]])
def test_sample_refuses_bad_counts(bad):
    flow = Flow(StandardNormal(2), Diagonal(numpy.ones(2), numpy.zeros(2)))
    with pytest.raises(ValueError, match="n"):
        flow.sample(bad, B.rng(0))
    assert flow.sample(numpy.int64(3), B.rng(0)).shape == (3, 2)
    assert flow.sample_and_log_prob(numpy.uint16(2), B.rng(0))[0].shape == (2, 2)


def _gauss():
    return Flow(StandardNormal(2), Diagonal(numpy.ones(2), numpy.zeros(2)))


@pytest.mark.parametrize("kind", KINDS)
@fuzz
@given(seed=st.integers(0, 2**16))
def test_fit_refuses_malformed_data(kind, seed):
    rng = numpy.random.default_rng(seed)
    data = _malformed(kind, rng.standard_normal((20, 2)), rng)
    try:
        fit(_gauss(), data, steps=2, batch_size=8, lr=0.01, rng=B.rng(seed))
    except ValueError:
        return
    except FloatingPointError:
        assert kind == "huge"
        return
    # training needs finite data with at least one sample, of the flow's event shape
    assert kind in ("int", "bool", "huge"), f"fit accepted {kind} data"


@pytest.mark.parametrize("kind", ["complex", "wrong_shape", "list", "nan", "text", "tensor"])
def test_fit_vi_refuses_a_malformed_target(kind):
    def log_target(z):
        host = -0.5 * B.to_numpy(z)[:, 0] ** 2
        return {"complex": host + 0j, "wrong_shape": host[:, None], "list": host.tolist(),
                "nan": host * numpy.nan, "text": host.astype(str),
                "tensor": _ForeignTensor(host)}[kind]

    with pytest.raises(FloatingPointError if kind == "nan" else ValueError):
        fit_vi(_gauss(), log_target, steps=2, rng=B.rng(0), batch_size=4, eval_every=1)


@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=[pytest.mark.xfail(strict=True, reason=CHECKER_BUGS[k])])
    if k in CHECKER_BUGS else k for k in KINDS])
def test_check_bijection_refuses_malformed_inputs(kind):
    rng = numpy.random.default_rng(0)
    inputs = _malformed(kind, rng.standard_normal((4, 2)), rng)
    bijection = Diagonal(numpy.array([2.0, 0.5]), numpy.zeros(2))
    # a list is converted (a convenience); a report that names the failure also refuses
    report = _expect(kind, lambda: check_bijection(bijection, inputs=inputs),
                     "check_bijection", MAY_WORK + REFUSE)
    if kind in REFUSE and kind != "list" and report is not None:
        assert not report.ok, f"check_bijection: a {kind} input gave a passing report"


@pytest.mark.standin
@pytest.mark.parametrize("name", NAMES)
def test_standin_complex_input_is_refused(name):
    bijection, z, event_shape, c = _case(name, 0, 2)
    c = None if c is None else StrictArray(c)
    with pytest.raises(ValueError, match="real numbers"):
        bijection.forward(StrictArray(z + 1j), context=c)
    with pytest.raises(ValueError, match="real numbers"):
        Flow(StandardNormal(event_shape), bijection).log_prob(StrictArray(z + 1j), context=c)


# ------------------------------------------------------------------------ model files


def _model_bytes(tmp_path) -> bytes:
    from refflow.autoregressive import MAF

    path = tmp_path / "good.npz"
    save(str(path), Flow(StandardNormal(3), MAF.init(B.rng(0), 3, hidden=(4,))))
    return path.read_bytes()


def _members(data: bytes) -> dict:
    with numpy.load(_io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _repack(members: dict, recompute_digest: bool) -> bytes:
    if recompute_digest:
        meta = members["__refflow__"].tobytes()
        digest = _digest(meta, {k: v for k, v in members.items() if not k.startswith("__")})
        members["__digest__"] = numpy.frombuffer(digest.encode(), dtype=numpy.uint8)
    out = _io.BytesIO()
    numpy.savez(out, **members)
    return out.getvalue()


def _load_bytes(tmp_path, data: bytes):
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(data)
    return load(str(path))


def _expect_value_error_or_model(tmp_path, data: bytes) -> None:
    try:
        back = _load_bytes(tmp_path, data)
    except ValueError:
        return
    # a change that survives every check (a timestamp in a zip header, a field edited to
    # another value save could have written) gives a model, never a broken object
    assert hasattr(back, "log_prob") or hasattr(back, "forward"), type(back)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=2000))
def test_load_random_bytes(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("bytes")
    with pytest.raises(ValueError):
        _load_bytes(tmp, data)


@settings(max_examples=25, deadline=None)
@given(cut=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 2**20), what=st.sampled_from(
    ["truncate", "flip", "flip_in_zip_directory"]))
def test_load_damaged_archives(tmp_path_factory, cut, flip, what):
    tmp = tmp_path_factory.mktemp("damaged")
    data = bytearray(_model_bytes(tmp))
    if what == "truncate":
        with pytest.raises(ValueError):
            _load_bytes(tmp, bytes(data[: int(cut * len(data))]))
        return
    # the central directory sits at the end: flip there too, not only in the data
    start = int(0.8 * len(data)) if what == "flip_in_zip_directory" else 0
    i = start + int(cut * (len(data) - start))
    data[i] ^= 1 << (flip % 8)
    _expect_value_error_or_model(tmp, bytes(data))


@settings(max_examples=20, deadline=None)
@given(what=st.sampled_from(["extra", "missing", "renamed", "pickle", "compressed",
                             "no_digest", "duplicate"]), seed=st.integers(0, 2**16))
def test_load_wrong_members(tmp_path_factory, what, seed):
    tmp = tmp_path_factory.mktemp("members")
    members = _members(_model_bytes(tmp))
    arrays = sorted(k for k in members if not k.startswith("__"))
    key = arrays[seed % len(arrays)]
    if what == "extra":
        members["a999"] = numpy.zeros(3)
        data = _repack(members, recompute_digest=True)
    elif what == "missing":
        del members[key]
        data = _repack(members, recompute_digest=True)
    elif what == "renamed":
        members["b" + key] = members.pop(key)
        data = _repack(members, recompute_digest=True)
    elif what == "no_digest":
        del members["__digest__"]
        data = _repack(members, recompute_digest=False)
    else:
        out = _io.BytesIO()
        compression = zipfile.ZIP_DEFLATED if what == "compressed" else zipfile.ZIP_STORED
        with zipfile.ZipFile(out, "w", compression=compression) as zf:
            for name, value in members.items():
                buf = _io.BytesIO()
                numpy.save(buf, value.astype(object) if (what == "pickle" and name == key)
                           else value, allow_pickle=True)
                zf.writestr(name + ".npy", buf.getvalue())
            if what == "duplicate":
                zf.writestr(key + ".npy", b"\x93NUMPY")
        data = out.getvalue()
    with pytest.raises(ValueError):
        _load_bytes(tmp, data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["a0", "a1", "<f8", "|O", "<c16", "refflow.core.Flow", "os.system",
                       "0x1.8p+1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["array", "dtype", "shape", "object", "fields", "value", "float",
                         "tuple", "list", "dict", "class"]), inner, max_size=3),
    max_leaves=6)


def _nodes(spec, path=()):
    yield path
    if isinstance(spec, dict):
        for k, v in spec.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(spec, list):
        for i, v in enumerate(spec):
            yield from _nodes(v, path + (i,))


@settings(max_examples=40, deadline=None)
@given(pick=st.integers(0, 10**6), value=_JSON)
def test_load_forged_descriptions_with_recomputed_digest(tmp_path_factory, pick, value):
    # the digest is recomputed, so only load's checks of the structure stand in the way
    tmp = tmp_path_factory.mktemp("forged")
    members = _members(_model_bytes(tmp))
    header = json.loads(members["__refflow__"].tobytes())
    paths = list(_nodes(header["root"]))[1:]
    path = paths[pick % len(paths)]
    node = header["root"]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    members["__refflow__"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)
    _expect_value_error_or_model(tmp, _repack(members, recompute_digest=True))


def test_a_torch_tensor_is_named_in_the_error():
    torch = pytest.importorskip("torch", reason="torch comes with the interop extra")
    flow = _gauss()
    tensor = torch.ones((3, 2), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^x: expected a NumPy or backend array, got "
                                         r"torch\.Tensor"):
        flow.log_prob(tensor)
    with pytest.raises(ValueError, match=r"^z: .*torch\.Tensor"):
        flow.bijection.forward(tensor)
    with pytest.raises(ValueError, match=r"^data: .*torch\.Tensor"):
        fit(flow, tensor, steps=1, rng=B.rng(0))
