r"""Saving and loading flows: one ``.npz`` with the arrays and a JSON description of the structure.

``save(path, flow)`` walks the flow's dataclasses (the same walk as ``refflow.tree``) and
writes

* every array (parameters and static arrays such as masks and permutations) as its own
  ``.npy`` member, with its exact bytes, so a round trip is exact;
* ``__refflow__``: UTF-8 JSON bytes describing the structure: class names, static
  configuration (ints, floats, strings, tuples, dicts, dtypes, transformer classes), and
  for each array its member name, dtype and shape;
* ``__digest__``: the SHA-256 of the JSON and of every array's bytes.

``load(path)`` reads the file with ``allow_pickle=False`` (nothing in it can run code),
checks the digest, rebuilds only classes from refflow's public API (``ALLOWED``), checks
each array's dtype and shape against the description and that float arrays are finite,
and runs each class's own validation (``__post_init__``). A truncated, tampered or foreign
file raises ``ValueError`` saying what is wrong.

Examples
--------
>>> import os, tempfile, numpy
>>> from refflow import Flow, StandardNormal, Diagonal
>>> flow = Flow(StandardNormal(2), Diagonal(numpy.array([2.0, 0.5]), numpy.zeros(2)))
>>> path = os.path.join(tempfile.mkdtemp(), "flow.npz")
>>> save(path, flow)
>>> load(path).bijection.scale.tolist()
[2.0, 0.5]
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import numbers
import os
import zipfile
from typing import Any

import autograd.numpy as numpy

from refflow import backend as B

__all__ = ["save", "load", "ALLOWED", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META, _DIGEST = "__refflow__", "__digest__"
_DTYPE_KINDS = "biuf"


def _public_classes() -> dict[str, type]:
    """refflow's public dataclasses, by qualified name: the only classes ``load`` builds."""
    import refflow

    out = {}
    for name in refflow.__all__:
        obj = getattr(refflow, name, None)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    from refflow import nn

    for name in nn.__all__:
        obj = getattr(nn, name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return out


class _Allowed(dict):
    """The allow-list, filled on first use (the families are imported by then)."""

    def _fill(self):
        if not self:
            self.update(_public_classes())

    def __contains__(self, key):
        self._fill()
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)


ALLOWED: dict[str, type] = _Allowed()


def _is_dtype(obj: Any) -> bool:
    """A NumPy dtype, or a scalar type such as ``numpy.float32`` standing for one."""
    if isinstance(obj, type):
        return issubclass(obj, numpy.generic)
    return all(hasattr(obj, a) for a in ("kind", "char", "itemsize", "descr"))


def _class_name(cls: type) -> str:
    name = f"{cls.__module__}.{cls.__qualname__}"
    if name not in ALLOWED:
        raise ValueError(f"flow: cannot save {name}: only refflow's public classes are saved")
    return name


# ---------------------------------------------------------------------------- save


def _encode(obj: Any, arrays: dict) -> Any:
    if B.is_traced(obj):
        raise ValueError("flow: expected concrete arrays, got a value being differentiated")
    if B.is_array(obj) or isinstance(obj, numpy.ndarray):
        host = numpy.ascontiguousarray(B.to_numpy(obj))
        if host.dtype.kind not in _DTYPE_KINDS:
            raise ValueError(f"flow: cannot save an array of dtype {host.dtype}")
        key = f"a{len(arrays)}"
        arrays[key] = host
        return {"array": key, "dtype": host.dtype.str, "shape": list(host.shape)}
    if obj is None or isinstance(obj, (bool, str)):
        return {"value": obj}
    if isinstance(obj, numbers.Integral):
        return {"value": int(obj)}
    if isinstance(obj, numbers.Real):
        return {"float": float(obj).hex()}  # hex: exact, and inf/nan survive JSON
    if _is_dtype(obj):
        return {"dtype": numpy.dtype(obj).str}
    if isinstance(obj, (tuple, list)):
        return {type(obj).__name__: [_encode(v, arrays) for v in obj]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError("flow: cannot save a dict with non-string keys")
        return {"dict": {k: _encode(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, type):
        return {"class": _class_name(obj)}
    if dataclasses.is_dataclass(obj):
        fields = {f.name: _encode(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}
        return {"object": _class_name(type(obj)), "fields": fields}
    raise ValueError(f"flow: cannot save a value of type {type(obj).__name__}")


def _digest(meta: bytes, arrays: dict) -> str:
    h = hashlib.sha256(meta)
    for key in sorted(arrays):
        a = arrays[key]
        h.update(f"{key}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, flow: Any) -> None:
    """Write ``flow`` (a ``Flow``, a bijection, a distribution) to ``path`` as one ``.npz``.

    Parameters
    ----------
    path : file path; NumPy appends ``.npz`` when it is missing, so pass it with the suffix.
    flow : an object built from refflow's public classes.

    Raises ``ValueError`` for objects outside refflow's public classes (lambdas, private
    classes) and for a directory that does not exist.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: expected a file name ending in .npz, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path: the folder {folder!r} does not exist")
    arrays: dict[str, numpy.ndarray] = {}
    root = _encode(flow, arrays)
    import refflow

    meta = json.dumps({"format": "refflow", "version": FORMAT_VERSION,
                       "refflow": refflow.__version__, "root": root}, sort_keys=True).encode()
    digest = _digest(meta, arrays)
    numpy.savez(path, **arrays, **{_META: numpy.frombuffer(meta, dtype=numpy.uint8),
                                   _DIGEST: numpy.frombuffer(digest.encode(), dtype=numpy.uint8)})


# ---------------------------------------------------------------------------- load


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"path: {path!r} is not a valid refflow model file: {what}")


def _decode(spec: Any, arrays: dict, path: str) -> Any:
    if not isinstance(spec, dict) or len(spec) not in (1, 2, 3):
        raise _bad(path, f"unexpected entry {spec!r:.80}")
    if "array" in spec:
        key = spec["array"]
        if key not in arrays:
            raise _bad(path, f"array {key!r} is missing")
        a = arrays[key]
        if a.dtype.str != spec.get("dtype") or list(a.shape) != spec.get("shape"):
            raise _bad(path, f"array {key!r} has dtype {a.dtype.str} and shape {a.shape}, the "
                             f"description says {spec.get('dtype')} and {spec.get('shape')}")
        if a.dtype.kind == "f" and not numpy.all(numpy.isfinite(a)):
            raise _bad(path, f"array {key!r} holds NaN or infinite values")
        return B.asarray(a)
    if "value" in spec:
        v = spec["value"]
        if not (v is None or isinstance(v, (bool, int, str))):
            raise _bad(path, f"unexpected value {v!r:.80}")
        return v
    if "float" in spec:
        try:
            return float.fromhex(spec["float"])
        except (TypeError, ValueError):
            raise _bad(path, f"bad float {spec['float']!r:.80}") from None
    if "dtype" in spec:
        try:
            dtype = numpy.dtype(spec["dtype"])
        except TypeError:
            raise _bad(path, f"unknown dtype {spec['dtype']!r:.80}") from None
        if dtype.kind not in _DTYPE_KINDS:
            raise _bad(path, f"dtype {dtype} is not numeric")
        return dtype
    for seq in ("tuple", "list"):
        if seq in spec and isinstance(spec[seq], list):
            items = [_decode(s, arrays, path) for s in spec[seq]]
            return tuple(items) if seq == "tuple" else items
    if "dict" in spec and isinstance(spec["dict"], dict):
        return {str(k): _decode(v, arrays, path) for k, v in spec["dict"].items()}
    if "class" in spec:
        return _allowed(spec["class"], path)
    if "object" in spec and isinstance(spec.get("fields"), dict):
        cls = _allowed(spec["object"], path)
        return _build(cls, {k: _decode(v, arrays, path) for k, v in spec["fields"].items()},
                      path)
    raise _bad(path, f"unexpected entry {spec!r:.80}")


def _allowed(name: Any, path: str) -> type:
    if not isinstance(name, str) or name not in ALLOWED:
        raise _bad(path, f"class {name!r:.80} is not one of refflow's public classes")
    return ALLOWED[name]


def _build(cls: type, values: dict, path: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    if sorted(values) != sorted(names):
        raise _bad(path, f"{cls.__name__} expects fields {names}, the file has {sorted(values)}")
    obj = object.__new__(cls)
    for name in names:
        object.__setattr__(obj, name, values[name])
    # the class's own checks (invertible matrix, positive scale, mask shapes, ...)
    post_init = getattr(cls, "__post_init__", None)
    if post_init is not None:
        try:
            post_init(obj)
        except ValueError as exc:
            raise _bad(path, f"{cls.__name__}: {exc}") from None
    return obj


def load(path: str | os.PathLike) -> Any:
    """Read a flow written by ``save``; arrays come back on the current backend.

    Raises ``ValueError`` when the file is missing, truncated, not a refflow file, was
    modified after saving, or describes classes outside refflow's public API.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no file at {path!r}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        with numpy.load(_io.BytesIO(raw), allow_pickle=False) as npz:
            members = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _bad(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(members, dict) or _META not in members or _DIGEST not in members:
        raise _bad(path, "no refflow description inside (a foreign .npz?)")
    meta_raw, digest_raw = members.pop(_META), members.pop(_DIGEST)
    if meta_raw.dtype != numpy.uint8 or digest_raw.dtype != numpy.uint8:
        raise _bad(path, "the description is not stored as bytes")
    meta = meta_raw.tobytes()
    if _digest(meta, members) != digest_raw.tobytes().decode("ascii", "replace"):
        raise _bad(path, "the checksum does not match (the file was modified or damaged)")
    try:
        header = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"the description is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != "refflow":
        raise _bad(path, "the description does not name the refflow format")
    if header.get("version") != FORMAT_VERSION:
        raise _bad(path, f"format version {header.get('version')!r}, expected {FORMAT_VERSION}")
    used: set = set()
    _collect_keys(header.get("root"), used)
    if used != set(members):
        raise _bad(path, f"arrays {sorted(set(members) ^ used)} do not match the description")
    return _decode(header.get("root"), members, path)


def _collect_keys(spec: Any, out: set) -> None:
    if isinstance(spec, dict):
        if "array" in spec and isinstance(spec["array"], str):
            out.add(spec["array"])
        for v in spec.values():
            _collect_keys(v, out)
    elif isinstance(spec, list):
        for v in spec:
            _collect_keys(v, out)
