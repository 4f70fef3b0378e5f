"""save/load: exact round trips for every registered bijection, clear errors for bad files."""

from __future__ import annotations

import json
import zipfile

import numpy
import pytest

from refflow import backend as B
from refflow.core import Flow
from refflow.distributions import StandardNormal
from refflow.io import _digest, load, save
from refflow.tree import map_arrays
from tests.registry import load_all

ENTRIES = load_all()


def _arrays(obj):
    out = []
    map_arrays(lambda a: out.append(B.to_numpy(a)) or a, obj)
    return out


def _flow(name, seed=0):
    entry = ENTRIES[name]
    dim = max(entry.min_dim, min(3, entry.max_dim))
    rng = B.rng(seed)
    case = entry.factory(rng, dim)
    event_shape = tuple(case.event_shape or (dim,))
    x = case.inputs(rng, 4) if case.inputs else rng.standard_normal((4,) + event_shape)
    return Flow(StandardNormal(event_shape), case.bijection), x


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_round_trip_is_exact(name, tmp_path):
    flow, z = _flow(name)
    path = str(tmp_path / "model.npz")
    save(path, flow)
    back = load(path)
    before, after = _arrays(flow), _arrays(back)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert numpy.array_equal(a, b)
    x0, ld0 = flow.bijection.forward(z)
    x1, ld1 = back.bijection.forward(z)
    assert numpy.array_equal(B.to_numpy(x0), B.to_numpy(x1))
    assert numpy.array_equal(B.to_numpy(ld0), B.to_numpy(ld1))
    assert type(back.bijection) is type(flow.bijection)


def test_static_config_survives(tmp_path):
    from refflow.autoregressive import MAF

    maf = MAF.init(B.rng(0), 4, hidden=(8,), order="random")
    save(str(tmp_path / "m.npz"), maf)
    back = load(str(tmp_path / "m.npz"))
    assert back.made.order == maf.made.order and isinstance(back.made.order, tuple)
    for m0, m1 in zip(maf.made.net.masks, back.made.net.masks):
        assert numpy.array_equal(B.to_numpy(m0), B.to_numpy(m1))


def test_float32_dtype_is_kept(tmp_path):
    from refflow.affine import Diagonal

    flow = Flow(StandardNormal(2, dtype=numpy.float32),
                Diagonal(numpy.ones(2, numpy.float32), numpy.zeros(2, numpy.float32)))
    save(str(tmp_path / "f.npz"), flow)
    back = load(str(tmp_path / "f.npz"))
    assert back.bijection.scale.dtype == numpy.float32
    assert numpy.dtype(back.base.dtype) == numpy.float32


def _saved(tmp_path):
    flow, _ = _flow("Affine")
    path = tmp_path / "good.npz"
    save(str(path), flow)
    return path


def _rewrite(path, members):
    """Write ``members`` as a new npz with a matching checksum (a deliberate forgery)."""
    meta = members["__refflow__"].tobytes()
    arrays = {k: v for k, v in members.items() if not k.startswith("__")}
    digest = _digest(meta, arrays)
    members["__digest__"] = numpy.frombuffer(digest.encode(), dtype=numpy.uint8)
    numpy.savez(path, **members)


def _members(path):
    with numpy.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_truncated_file(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid refflow model file"):
        load(str(path))


def test_modified_parameter_fails_checksum(tmp_path):
    path = _saved(tmp_path)
    members = _members(path)
    members["a0"] = members["a0"] + 1.0
    numpy.savez(path, **members)
    with pytest.raises(ValueError, match="checksum"):
        load(str(path))


def test_forged_class_is_refused(tmp_path):
    path = _saved(tmp_path)
    members = _members(path)
    header = json.loads(members["__refflow__"].tobytes())
    header["root"]["object"] = "os.system"
    members["__refflow__"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)
    _rewrite(path, members)
    with pytest.raises(ValueError, match="public classes"):
        load(str(path))


def test_forged_shape_is_refused(tmp_path):
    path = _saved(tmp_path)
    members = _members(path)
    members["a0"] = members["a0"][:1]
    _rewrite(path, members)
    with pytest.raises(ValueError, match="shape"):
        load(str(path))


def test_forged_nan_is_refused(tmp_path):
    path = _saved(tmp_path)
    members = _members(path)
    a = members["a0"].copy()
    a.flat[0] = numpy.nan
    members["a0"] = a
    _rewrite(path, members)
    with pytest.raises(ValueError, match="NaN"):
        load(str(path))


def test_forged_singular_matrix_fails_class_validation(tmp_path):
    path = _saved(tmp_path)
    members = _members(path)
    header = json.loads(members["__refflow__"].tobytes())
    key = header["root"]["fields"]["bijection"]["fields"]["A"]["array"]
    members[key] = numpy.zeros_like(members[key])
    _rewrite(path, members)
    with pytest.raises(ValueError, match="Affine: A"):
        load(str(path))


def test_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.npz"
    numpy.savez(foreign, x=numpy.ones(3))
    with pytest.raises(ValueError, match="foreign"):
        load(str(foreign))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a valid refflow model file"):
        load(str(text))
    pickled = tmp_path / "pickled.npy"
    numpy.save(pickled, numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a valid refflow model file"):
        load(str(pickled))
    empty_zip = tmp_path / "empty.npz"
    zipfile.ZipFile(empty_zip, "w").close()
    with pytest.raises(ValueError, match="foreign"):
        load(str(empty_zip))
    with pytest.raises(ValueError, match="no file"):
        load(str(tmp_path / "missing.npz"))


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    from refflow.affine import Diagonal

    with pytest.raises(ValueError, match="cannot save"):
        save(str(tmp_path / "x.npz"), Flow(StandardNormal(1), lambda z: z))
    with pytest.raises(ValueError, match="folder"):
        save(str(tmp_path / "no" / "x.npz"), Diagonal(numpy.ones(1), numpy.zeros(1)))
    with pytest.raises(ValueError, match=".npz"):
        save(str(tmp_path / "x.bin"), Diagonal(numpy.ones(1), numpy.zeros(1)))
