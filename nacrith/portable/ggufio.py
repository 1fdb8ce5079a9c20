"""A GGUF reader for the portable engine: metadata, tensor table, tensor bytes (memory-mapped).

Why not gguf.GGUFReader (PyPI `gguf`, still used to write test models): it parses every array
element of the metadata as its own numpy view, and Gemma-3's 262144-entry vocabulary (tokens,
scores, types) took 14 of the 16 s of loading that model; here a numeric array is one
np.frombuffer and a string array one pass over its bytes (0.3 s).

Invariants: every length, count and offset is checked against the file before it is used; any
inconsistency raises ValueError (model.load turns it into a NacritError naming the file); tensor
data are read-only views of the mapped file (nothing is copied until the loader converts it).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
           10: "<u8", 11: "<i8", 12: "<f8"}
_STRUCT = {"<u1": "<B", "<i1": "<b", "<u2": "<H", "<i2": "<h", "<u4": "<I", "<i4": "<i",
           "<f4": "<f", "<u8": "<Q", "<i8": "<q", "<f8": "<d"}
T_STRING, T_ARRAY, T_BOOL = 8, 9, 7
# ggml type -> (elements, bytes) per block; the types whose size is known here
TYPE_SIZE = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
             8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
             13: (256, 176), 14: (256, 210), 15: (256, 292), 24: (1, 1), 25: (1, 2),
             26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}
_VIEW = {0: np.float32, 1: np.float16}
MAX_COUNT = 1 << 24             # tensors, keys, array elements: beyond any real model


@dataclass
class Tensor:
    name: str
    tensor_type: int
    shape: list                 # GGUF order (ne0 = the row length first)
    data: np.ndarray            # F32/F16: that dtype; else uint8 bytes (None: unknown type)


class Reader:
    """fields: key -> value (int, float, bool, str; arrays as lists, string arrays as lists of
    bytes); tensors: [Tensor] in file order."""

    def __init__(self, path: str):
        self._m = np.memmap(path, dtype=np.uint8, mode="r")
        self._b = memoryview(self._m)
        self._p = 0
        if self._take(4).tobytes() != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = self._num("<u4")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_t, n_kv = self._count(), self._count()
        self.fields = {}
        for _ in range(n_kv):
            key = self._str().decode("utf-8", "replace")
            self.fields[key] = self._value(self._num("<u4"))
        infos = []
        for _ in range(n_t):
            name = self._str().decode("utf-8", "replace")
            nd = self._num("<u4")
            if nd > 4:
                raise ValueError(f"tensor {name}: {nd} dimensions")
            shape = [self._num("<u8") for _ in range(nd)]
            infos.append((name, self._num("<u4"), shape, self._num("<u8")))
        align = int(self.fields.get("general.alignment", 32))
        if not 1 <= align <= 1 << 16:
            raise ValueError(f"bad alignment {align}")
        start = -(-self._p // align) * align
        self.tensors = [self._tensor(start, *i) for i in infos]

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._p + n > len(self._b):
            raise ValueError("truncated file")
        v = self._b[self._p:self._p + n]
        self._p += n
        return v

    def _num(self, dt: str):
        return struct.unpack(_STRUCT[dt], self._take(np.dtype(dt).itemsize))[0]

    def _count(self) -> int:
        n = self._num("<u8")
        if n > MAX_COUNT:
            raise ValueError(f"absurd count {n}")
        return n

    def _str(self) -> bytes:
        return self._take(self._num("<u8")).tobytes()

    def _value(self, ty: int):
        if ty == T_STRING:
            return self._str().decode("utf-8", "replace")
        if ty == T_ARRAY:
            et, n = self._num("<u4"), self._count()
            if et == T_STRING:
                return [self._str() for _ in range(n)]
            if et not in _SCALAR:
                raise ValueError(f"array of type {et}")
            dt = np.dtype(_SCALAR[et])
            a = np.frombuffer(self._take(n * dt.itemsize), dt)
            return [bool(v) for v in a] if et == T_BOOL else a.tolist()
        if ty not in _SCALAR:
            raise ValueError(f"metadata value of type {ty}")
        v = self._num(_SCALAR[ty])
        return bool(v) if ty == T_BOOL else v

    def _tensor(self, start, name, ty, shape, off) -> Tensor:
        if ty not in TYPE_SIZE:
            return Tensor(name, ty, shape, None)
        per, bs = TYPE_SIZE[ty]
        n = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if not shape or shape[0] % per or n > 1 << 40:
            raise ValueError(f"tensor {name}: shape {shape} does not fit type {ty}")
        size = n // per * bs
        a = start + off
        if a + size > len(self._m):
            raise ValueError(f"tensor {name} lies past the end of the file")
        data = self._m[a:a + size]
        return Tensor(name, ty, shape, data.view(_VIEW[ty]) if ty in _VIEW else data)
