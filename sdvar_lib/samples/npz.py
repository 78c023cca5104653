"""``.npz`` files larger than memory: written and read in batches.

50,000 images of 256x256 are 9.8 GB of uint8; the sampler writes ``samples.npz`` member by member
from its shards (:func:`write_npz_stream`, atomically), and the metrics read ``arr_0`` batch by batch
(:class:`NpzArrayReader`) the way the OpenAI guided-diffusion evaluator does. The files are ordinary
``np.savez`` archives (``np.load`` opens them).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdvar_lib.util.atomic import atomic_write_with

__all__ = ["NpzMember", "write_npz_stream", "NpzArrayReader", "npz_keys"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class NpzMember:
    """One array of an archive: its name (``arr_0``), shape, dtype and the chunks that fill it in C order."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]


def _write_member(zf: zipfile.ZipFile, member: NpzMember) -> None:
    dtype = np.dtype(member.dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(member.shape)}
    expected = math.prod(member.shape) * dtype.itemsize
    written = 0
    info = zipfile.ZipInfo(f"{member.name}.npy", date_time=_EPOCH)  # a fixed time: equal sets give equal files
    info.compress_type = zipfile.ZIP_STORED
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(f, header)
        for chunk in member.chunks:
            data = np.ascontiguousarray(chunk, dtype=dtype).tobytes()
            f.write(data)
            written += len(data)
    if written != expected:
        raise ValueError(f"array {member.name!r}: the chunks hold {written} bytes, shape {member.shape} of {dtype} "
                         f"needs {expected}")


def write_npz_stream(path: str | os.PathLike, members: Iterable[NpzMember]) -> Path:
    """Write an uncompressed ``.npz`` whose arrays come in chunks; atomically (a complete file or none).

    The archive's entries carry a fixed date, so the same arrays always give the same bytes.
    """

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member in members:
                _write_member(zf, member)

    return atomic_write_with(path, write)


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names of an ``.npz`` (without reading any array)."""
    with zipfile.ZipFile(path) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


class NpzArrayReader:
    """Read one array of an ``.npz`` in batches along its first axis without loading it whole.

    ``with NpzArrayReader(path, "arr_0") as r: for batch in r.batches(256): ...``; ``r.shape`` and
    ``r.dtype`` are known once opened.
    """

    def __init__(self, path: str | os.PathLike, name: str = "arr_0") -> None:
        self.path = Path(path)
        self.name = name
        self._zf: zipfile.ZipFile | None = None
        self._f = None
        self.shape: tuple[int, ...] = ()
        self.dtype = np.dtype("uint8")
        self._read_rows = 0

    def __enter__(self) -> NpzArrayReader:
        try:
            self._zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{self.path} is not a readable .npz archive ({exc})") from None
        member = f"{self.name}.npy"
        if member not in self._zf.namelist():
            keys = [n[:-4] for n in self._zf.namelist() if n.endswith(".npy")]
            self._zf.close()
            raise ValueError(f"{self.path} holds no array {self.name!r} (it holds {', '.join(keys) or 'none'})")
        self._f = self._zf.open(member)
        version = np.lib.format.read_magic(self._f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._f)
        else:
            self.close()
            raise ValueError(f"{self.path}:{self.name}: unsupported .npy format version {version}")
        if fortran or dtype.hasobject or len(shape) < 1:
            self.close()
            raise ValueError(f"{self.path}:{self.name}: need a C-ordered array of plain numbers, got shape {shape}, "
                             f"dtype {dtype}, fortran {fortran}")
        self.shape, self.dtype = tuple(shape), dtype
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._zf is not None:
            self._zf.close()
            self._zf = None

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The rows in order, ``batch_size`` at a time (the last batch may be shorter); readable once."""
        if self._f is None:
            raise RuntimeError("open the reader with `with NpzArrayReader(...) as r:` first")
        row_shape = self.shape[1:]
        row_bytes = math.prod(row_shape) * self.dtype.itemsize
        while self._read_rows < self.shape[0]:
            n = min(batch_size, self.shape[0] - self._read_rows)
            data = self._f.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise ValueError(f"{self.path}:{self.name} is truncated after {self._read_rows} rows")
            self._read_rows += n
            yield np.frombuffer(data, dtype=self.dtype).reshape((n, *row_shape))
