"""BPF maps through libbpf (Debian's libbpf1), for the XDP backend's table writes and reads.

Loading and attaching programs is bpftool's and iproute2's job (backends/xdp.py); this
module only opens pinned maps and reads and writes their elements, through libbpf's own
map API (`bpf_obj_get`, `bpf_map_update_elem`, `bpf_map_update_batch`, ...), called with
ctypes. A 65536-bucket table is written with one batch call (one syscall) instead of 65536
bpftool invocations. No program is loaded here and no ELF is parsed.

libbpf >= 1.0 returns -errno from every call (libbpf_strict); an error becomes BpfError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from collections.abc import Iterator


class BpfError(OSError):
    pass


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise BpfError(
            errno.ENOENT, "libbpf is missing (apt-get install libbpf1): the XDP backend needs it"
        ) from None
    c_int, c_void_p, c_uint = ctypes.c_int, ctypes.c_void_p, ctypes.c_uint
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_map_update_elem.argtypes = [c_int, c_void_p, c_void_p, ctypes.c_uint64]
    lib.bpf_map_lookup_elem.argtypes = [c_int, c_void_p, c_void_p]
    lib.bpf_map_delete_elem.argtypes = [c_int, c_void_p]
    lib.bpf_map_get_next_key.argtypes = [c_int, c_void_p, c_void_p]
    lib.bpf_map_update_batch.argtypes = [
        c_int,
        c_void_p,
        c_void_p,
        ctypes.POINTER(c_uint),
        c_void_p,
    ]
    lib.bpf_obj_get_info_by_fd.argtypes = [c_int, c_void_p, ctypes.POINTER(c_uint)]
    lib.bpf_map_lookup_batch.argtypes = [
        *(c_int, c_void_p, c_void_p, c_void_p, c_void_p),
        *(ctypes.POINTER(c_uint), c_void_p),
    ]
    for fn in (
        "bpf_obj_get",
        "bpf_map_update_elem",
        "bpf_map_lookup_elem",
        "bpf_map_delete_elem",
        "bpf_map_get_next_key",
        "bpf_map_update_batch",
        "bpf_map_lookup_batch",
        "bpf_obj_get_info_by_fd",
        "libbpf_num_possible_cpus",
    ):
        getattr(lib, fn).restype = c_int
    return lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise BpfError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


@functools.cache
def possible_cpus() -> int:
    return _check(_lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """A pinned map, opened by path. Values are bytes of the map's value size."""

    def __init__(self, path: str, key_size: int, value_size: int, *, percpu: bool = False):
        self.path = path
        self.key_size = key_size
        self.value_size = value_size
        self.percpu = percpu
        self.fd = _check(_lib().bpf_obj_get(path.encode()), f"open {path}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _stride(self) -> int:
        """Bytes per element as the kernel reads and writes them (per-CPU: 8-aligned, one
        copy per possible CPU)."""
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        _check(_lib().bpf_map_update_elem(self.fd, key, value, flags), f"update {self.path}")

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """`count` elements in one syscall (array maps)."""
        if count == 0:
            return
        n = ctypes.c_uint(count)
        rc = _lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(n), None)
        _check(rc, f"batch update {self.path} ({n.value} of {count} written)")

    def lookup_range(self, first: int, count: int) -> bytes:
        """The values of array keys first .. first+count-1, concatenated (a few batch
        calls instead of one syscall per key). The kernel's batch starts AFTER the key it
        is given (generic_map_lookup_batch: get_next_key) and hands back the last key it
        read, the start of the next call."""
        out = bytearray()
        prev = ctypes.c_uint32(first - 1) if first > 0 else None
        last = ctypes.c_uint32(0)
        while len(out) < count * self.value_size:
            want = count - len(out) // self.value_size
            keys = ctypes.create_string_buffer(4 * want)
            values = ctypes.create_string_buffer(self._stride() * want)
            n = ctypes.c_uint(want)
            rc = _lib().bpf_map_lookup_batch(
                self.fd,
                ctypes.byref(prev) if prev is not None else None,
                ctypes.byref(last),
                keys,
                values,
                ctypes.byref(n),
                None,
            )
            if rc < 0 and rc != -errno.ENOENT:  # ENOENT: the map's end, `n` still valid
                _check(rc, f"batch lookup {self.path}")
            out += values.raw[: n.value * self.value_size]
            if rc == -errno.ENOENT or n.value == 0:
                break
            prev = ctypes.c_uint32(last.value)
        if len(out) < count * self.value_size:
            raise BpfError(errno.ERANGE, f"{self.path}: keys {first}+{count} past its end")
        return bytes(out[: count * self.value_size])

    def lookup(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(self._stride())
        rc = _lib().bpf_map_lookup_elem(self.fd, key, buf)
        if rc == -errno.ENOENT:
            return None
        _check(rc, f"lookup {self.path}")
        return buf.raw

    def delete(self, key: bytes) -> bool:
        rc = _lib().bpf_map_delete_elem(self.fd, key)
        if rc == -errno.ENOENT:
            return False
        _check(rc, f"delete {self.path}")
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (hash maps). A key deleted while iterating restarts nothing: the
        kernel continues from the next bucket."""
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev: ctypes.Array[ctypes.c_char] | None = None
        while True:
            rc = _lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if rc == -errno.ENOENT:
                return
            _check(rc, f"iterate {self.path}")
            yield nxt.raw
            ctypes.memmove(key, nxt, self.key_size)
            prev = key

    def percpu_sum(self, key: bytes, fields: int) -> tuple[int, ...]:
        """Sum of `fields` u64s over every CPU's copy (per-CPU maps)."""
        raw = self.lookup(key)
        if raw is None:
            return (0,) * fields
        step = (self.value_size + 7) // 8 * 8
        totals = [0] * fields
        for cpu in range(possible_cpus()):
            base = cpu * step
            for i in range(fields):
                totals[i] += int.from_bytes(raw[base + 8 * i : base + 8 * i + 8], "little")
        return tuple(totals)


def prog_id(path: str) -> int:
    """The id of the pinned program (or map) at `path`."""
    fd = _check(_lib().bpf_obj_get(path.encode()), f"open {path}")
    try:
        info = ctypes.create_string_buffer(256)
        size = ctypes.c_uint(256)
        _check(_lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), f"info {path}")
        # struct bpf_prog_info / bpf_map_info: __u32 type; __u32 id; ...
        return int.from_bytes(info.raw[4:8], "little")
    finally:
        os.close(fd)
