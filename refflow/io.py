r"""Saving and loading flows: one ``.npz`` with the arrays and a JSON description of the structure.

``save(path, flow)`` walks the flow's dataclasses (the same walk as ``refflow.tree``) and
writes

* every array (parameters and static arrays such as masks and permutations) as its own
  ``.npy`` member, with its exact bytes, so a round trip is exact;
* ``__refflow__``: UTF-8 JSON bytes describing the structure: class names, static
  configuration (ints, floats, strings, tuples, dicts, dtypes, transformer classes), and
  for each array its member name, dtype and shape;
* ``__digest__``: the SHA-256 of the JSON and of every array's bytes.

``save`` replaces the file atomically (a temporary file in the same folder, ``fsync``,
``os.replace``). ``load(path)`` accepts only what ``save`` writes: it reads the zip
directory and the description first and checks every member's name, dtype, shape and byte
size against them before reading any array (uncompressed members only, so nothing is
inflated); then the digest; then it rebuilds only classes from refflow's public API
(``ALLOWED``), each field of the kind ``save`` writes, float arrays finite, and runs each
class's own validation (``__post_init__``). Nothing in a file can run code (no pickle). A
truncated, damaged or foreign file raises ``ValueError`` saying what is wrong. The digest
detects damage, not a deliberate edit: files are not signed (docs/guarantees.md).

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
import json
import math
import numbers
import os
import re
import struct
import tempfile
import zipfile
import zlib
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

    The file is replaced atomically: the archive is written to a temporary file in the same
    folder, flushed to disk (``fsync``) and renamed over ``path`` (``os.replace``), so a
    failure half-way (a full disk, a killed process) leaves the previous file as it was.

    Parameters
    ----------
    path : file path ending in ``.npz``, in an existing folder.
    flow : an object built from refflow's public classes.

    Raises ``ValueError`` for objects outside refflow's public classes (lambdas, private
    classes), a path that does not end in ``.npz``, names a folder, or lies in a folder that
    does not exist; ``OSError`` when the disk refuses the write (the old file is kept).
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: expected a file name ending in .npz, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"path: {path!r} is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path: the folder {folder!r} does not exist")
    arrays: dict[str, numpy.ndarray] = {}
    root = _encode(flow, arrays)
    import refflow

    meta = json.dumps({"format": "refflow", "version": FORMAT_VERSION,
                       "refflow": refflow.__version__, "root": root}, sort_keys=True).encode()
    digest = _digest(meta, arrays)
    members = {**arrays, _META: numpy.frombuffer(meta, dtype=numpy.uint8),
               _DIGEST: numpy.frombuffer(digest.encode(), dtype=numpy.uint8)}
    fd, tmp = tempfile.mkstemp(prefix=".refflow-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            numpy.savez(fh, **members)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # some file systems cannot sync a folder; the rename is atomic all the same, only its
        # durability across a power cut is then the file system's
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- load


class _BadFile(ValueError):
    """A model file refused by ``load`` (a ``ValueError``; the message names the path)."""


def _bad(path: str, what: str) -> ValueError:
    return _BadFile(f"path: {path!r} is not a valid refflow model file: {what}")


# What ``save`` writes, and so all that ``load`` reads: members named a0, a1, ... plus the
# description and the digest, each an uncompressed .npy of a real dtype.
_KEY = re.compile(r"a[0-9]{1,9}")
_MAX_META = 1 << 24  # bytes of JSON description: far above any flow's
_MAX_HEADER = 1 << 16  # bytes of one .npy header (NumPy pads them to 64 or 4096)
_MAX_NDIM = 32
_NPY_MAGIC = b"\x93NUMPY"


def _array_specs(spec: Any, path: str, out: dict) -> dict:
    """Every ``{"array": key, "dtype": ..., "shape": ...}`` of the description, checked."""
    if isinstance(spec, list):
        for v in spec:
            _array_specs(v, path, out)
    elif isinstance(spec, dict):
        if "array" in spec:
            key, dtype, shape = spec.get("array"), spec.get("dtype"), spec.get("shape")
            if not isinstance(key, str) or not _KEY.fullmatch(key) or key in out:
                raise _bad(path, f"bad or repeated array name {key!r:.40}")
            out[key] = (_declared_dtype(dtype, path), _declared_shape(shape, path))
        else:
            for v in spec.values():
                _array_specs(v, path, out)
    return out


def _declared_dtype(text: Any, path: str) -> Any:
    try:
        dtype = numpy.dtype(text) if isinstance(text, str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in _DTYPE_KINDS or dtype.str != text:
        raise _bad(path, f"dtype {text!r:.40} is not a real dtype that save writes")
    return dtype


def _declared_shape(shape: Any, path: str) -> tuple:
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise _bad(path, f"shape {shape!r:.60} is not a list of sizes")
    return tuple(shape)


def _npy_header(fh: Any, path: str, name: str) -> tuple:
    """(dtype string, shape, Fortran order, header length) of a .npy stream, read safely.

    The header is a Python literal (a dict); ``ast.literal_eval`` reads literals only, so
    no code in a file can run.
    """
    import ast

    head = fh.read(len(_NPY_MAGIC) + 2)
    if head[:len(_NPY_MAGIC)] != _NPY_MAGIC or len(head) != len(_NPY_MAGIC) + 2:
        raise _bad(path, f"member {name!r} is not a .npy array")
    major = head[-2]
    if major not in (1, 2, 3):
        raise _bad(path, f"member {name!r}: unknown .npy version {major}")
    size_bytes = fh.read(2 if major == 1 else 4)
    if len(size_bytes) != (2 if major == 1 else 4):
        raise _bad(path, f"member {name!r} is truncated")
    length = int.from_bytes(size_bytes, "little")
    if length > _MAX_HEADER:
        raise _bad(path, f"member {name!r}: header of {length} bytes")
    text = fh.read(length)
    try:
        header = ast.literal_eval(text.decode("latin1"))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise _bad(path, f"member {name!r}: unreadable .npy header") from None
    if (not isinstance(header, dict) or sorted(header) != ["descr", "fortran_order", "shape"]
            or not isinstance(header["shape"], tuple)):
        raise _bad(path, f"member {name!r}: unexpected .npy header")
    return header["descr"], header["shape"], header["fortran_order"], len(head) + len(
        size_bytes) + length


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: Any, shape: tuple | None,
                 limit: int, path: str) -> Any:
    """One member as an array of ``dtype`` and ``shape`` (``None``: any 1-d length).

    Sizes are checked against the zip directory before a byte of data is read: the member
    may hold the .npy header plus exactly the bytes its dtype and shape declare, at most
    ``limit``; compressed members are refused (``save`` never compresses), so nothing is
    inflated.
    """
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise _bad(path, f"member {name!r} is compressed or encrypted (save writes neither)")
    expected = None if shape is None else math.prod(shape) * dtype.itemsize
    if info.file_size > limit or (expected is not None
                                  and not 0 < info.file_size - expected <= _MAX_HEADER):
        raise _bad(path, f"member {name!r} holds {info.file_size} bytes, the description "
                         f"declares {shape} of {dtype}")
    with zf.open(info) as fh:
        descr, found, fortran, header = _npy_header(fh, path, name)
        if shape is None:
            shape = found if len(found) == 1 else (-1, -1)
        if descr != dtype.str or found != shape or fortran is not False:
            raise _bad(path, f"array {name!r} has dtype {descr!r:.40} and shape {found!r:.60},"
                             f" the description says {dtype.str} and {list(shape)}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header + nbytes:
            raise _bad(path, f"member {name!r} is {info.file_size} bytes, expected "
                             f"{header + nbytes}")
        buf = bytearray(nbytes)
        if fh.readinto(buf) != nbytes or fh.read(1):
            raise _bad(path, f"member {name!r} is truncated")
    return numpy.frombuffer(buf, dtype=dtype).reshape(shape)


def _read(zf: zipfile.ZipFile, path: str) -> tuple[dict, dict]:
    """(header, arrays) of an archive, every name, size and dtype checked before reading."""
    infos = zf.infolist()
    members = {i.filename: i for i in infos}
    if len(members) != len(infos):
        raise _bad(path, "repeated member names")
    if f"{_META}.npy" not in members or f"{_DIGEST}.npy" not in members:
        raise _bad(path, "no refflow description inside (a foreign .npz?)")
    u8 = numpy.dtype(numpy.uint8)
    meta = _read_member(zf, members[f"{_META}.npy"], u8, None, _MAX_META, path).tobytes()
    digest = _read_member(zf, members[f"{_DIGEST}.npy"], u8, None, 1024, path).tobytes()
    try:
        header = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"the description is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != "refflow":
        raise _bad(path, "the description does not name the refflow format")
    if header.get("version") != FORMAT_VERSION:
        raise _bad(path, f"format version {header.get('version')!r}, expected {FORMAT_VERSION}")
    specs = _array_specs(header.get("root"), path, {})
    named = {f"{key}.npy" for key in specs} | {f"{_META}.npy", f"{_DIGEST}.npy"}
    if set(members) != named:
        raise _bad(path, f"members {sorted(set(members) ^ named)!r:.200} do not match the "
                         f"description")
    size = os.path.getsize(path)
    for key, (dtype, shape) in specs.items():
        if math.prod(shape) * dtype.itemsize > size:
            raise _bad(path, f"array {key!r} declares shape {list(shape)} of {dtype}, more "
                             f"than the file's {size} bytes")
    arrays = {key: _read_member(zf, members[f"{key}.npy"], dtype, shape, size, path)
              for key, (dtype, shape) in specs.items()}
    if _digest(meta, arrays) != digest.decode("ascii", "replace"):
        raise _bad(path, "the checksum does not match (the file was modified or damaged)")
    return header, arrays


def _decode(spec: Any, arrays: dict, path: str) -> Any:
    if not isinstance(spec, dict) or len(spec) not in (1, 2, 3):
        raise _bad(path, f"unexpected entry {spec!r:.80}")
    if "array" in spec:
        a = arrays[spec["array"]]
        if a.dtype.kind == "f" and not numpy.all(numpy.isfinite(a)):
            raise _bad(path, f"array {spec['array']!r} holds NaN or infinite values")
        return B.asarray(a)
    if "value" in spec:
        v = spec["value"]
        if not (v is None or isinstance(v, (bool, int, str))):
            raise _bad(path, f"unexpected value {v!r:.80}")
        return v
    if "float" in spec:
        try:
            return float.fromhex(spec["float"])
        except (TypeError, ValueError, OverflowError):
            raise _bad(path, f"bad float {spec['float']!r:.80}") from None
    if "dtype" in spec:
        try:
            dtype = numpy.dtype(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in _DTYPE_KINDS:
            raise _bad(path, f"dtype {spec['dtype']!r:.80} is not a real dtype")
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


def _is_bijection(v: Any) -> bool:
    return callable(getattr(v, "forward", None)) and callable(getattr(v, "inverse", None))


def _is_distribution(v: Any) -> bool:
    return all(callable(getattr(v, m, None)) for m in ("log_prob", "sample")) and hasattr(
        v, "event_shape")


# Fields whose annotation is ``Any`` but whose value must follow a protocol. The family
# classes check their own parameters in ``__post_init__``; these containers have none.
_ROLES = {("Flow", "base"): ("a distribution", _is_distribution),
          ("Flow", "bijection"): ("a bijection", _is_bijection),
          ("Inverse", "bijection"): ("a bijection", _is_bijection),
          ("GlowStep", "conv"): ("a bijection", _is_bijection)}


def _is_module(v: Any) -> bool:
    """An array or a refflow object: what a parameter field holds."""
    return B.is_array(v) or (dataclasses.is_dataclass(v) and not isinstance(v, type))


def _kind_ok(annotation: str, value: Any) -> bool:
    """Whether ``value`` is of the kind the field's annotation names (as a string)."""
    kinds = [a.strip() for a in annotation.split("|")]
    for kind in kinds:
        if kind == "None" and value is None:
            return True
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in ("str", "bool", "dict", "tuple", "type") and isinstance(
                value, {"str": str, "bool": bool, "dict": dict, "tuple": tuple,
                        "type": type}[kind]):
            return True
        if kind == "Any":
            return True
        cls = next((c for c in ALLOWED.values() if c.__name__ == kind), None)
        if cls is not None and isinstance(value, cls):
            return True
    return False


def _leaves(value: Any) -> list:
    if isinstance(value, tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _check_field(cls: type, field: dataclasses.Field, value: Any, path: str) -> None:
    """Refuse a field whose value is not of a kind ``save`` would have written there."""
    annotation = field.type if isinstance(field.type, str) else getattr(
        field.type, "__name__", "Any")
    where = f"{cls.__name__}.{field.name}"
    if not _kind_ok(annotation, value):
        raise _bad(path, f"{where}: expected {annotation}, got {type(value).__name__}")
    role = _ROLES.get((cls.__name__, field.name))
    if role is not None and not role[1](value):
        raise _bad(path, f"{where}: expected {role[0]}, got {type(value).__name__}")
    if field.metadata.get("static"):
        return
    # a parameter field holds arrays or sub-modules (a tuple of them: layers, bijections)
    if annotation in ("Any", "tuple") and not all(_is_module(v) for v in _leaves(value)):
        raise _bad(path, f"{where}: expected arrays or refflow objects, got "
                         f"{type(value).__name__}")
    if cls.__name__ == "Compose" and not all(_is_bijection(v) for v in value):
        raise _bad(path, f"{where}: expected bijections")


def _build(cls: type, values: dict, path: str) -> Any:
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    # a field added later with a default (a conditional flow's context_dim) may be absent
    # from a file written before it existed: it takes its default, as the constructor would
    values = {**{f.name: f.default for f in fields if f.name not in values
                 and f.default is not dataclasses.MISSING}, **values}
    if sorted(values) != sorted(names):
        raise _bad(path, f"{cls.__name__} expects fields {names}, the file has {sorted(values)}")
    for f in fields:
        _check_field(cls, f, values[f.name], path)
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

    Only what ``save`` writes is accepted: the zip directory is checked against the JSON
    description (member names, dtypes, shapes and byte sizes) before any array is read;
    members must be uncompressed, arrays of a real dtype (bool, integer, float), float
    arrays finite; the SHA-256 digest must match; only refflow's public classes are built,
    each field of the kind ``save`` writes there, each class's own validation passed.
    Nothing in a file can run code (no pickle; headers are read as literals).

    Raises ``ValueError`` when the file is missing, truncated, damaged, not a refflow file,
    was modified after saving, or describes anything ``save`` does not write.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no file at {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            header, arrays = _read(zf, path)
    except _BadFile:
        raise
    # what a damaged archive can raise inside zipfile (a flipped compression method gives
    # NotImplementedError, a flipped size struct.error or OverflowError)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError, struct.error, OverflowError, UnicodeDecodeError) as exc:
        raise _bad(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    return _decode(header.get("root"), arrays, path)
