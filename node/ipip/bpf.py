"""Just enough eBPF to load our two IP-in-IP programs, with no compiler.

``Asm`` assembles the few instructions the programs use (labels for jumps),
``load`` hands a program to the kernel (``bpf(BPF_PROG_LOAD)``), and
``HashMap`` is a kernel hash map of fixed-size keys and values. File
descriptors belong to the caller, who closes them (``os.close``); the kernel
keeps a program alive while a route or filter uses it.

Invariant: nothing here keeps state; a failed call raises BpfError carrying
what the kernel said (for a rejected program, the verifier's log).
"""

from __future__ import annotations

import ctypes
import os
import struct

from calicopy.errors import CalicoError

_SYS_BPF = 321                       # x86_64
_MAP_CREATE, _MAP_UPDATE, _MAP_DELETE, _MAP_NEXT_KEY, _PROG_LOAD = 0, 2, 3, 4, 5
MAP_HASH = 1
PROG_SCHED_CLS, PROG_LWT_XMIT = 3, 12

# Helpers (include/uapi/linux/bpf.h).
MAP_LOOKUP_ELEM, SKB_STORE_BYTES, REDIRECT, SKB_LOAD_BYTES = 1, 9, 23, 26
SKB_ADJUST_ROOM, LWT_PUSH_ENCAP = 50, 73

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(CalicoError):
    """The kernel refused a bpf() call."""


def _bpf(cmd: int, attr: bytearray, what: str) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    result = _libc.syscall(_SYS_BPF, ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise BpfError(f"The kernel refused to {what}: {os.strerror(err)}.")
    return result


_SIZE = {4: 0x00, 2: 0x08, 1: 0x10}


class Asm:
    """eBPF instructions with named jump targets."""

    def __init__(self):
        self._items: list = []

    def _op(self, code, dst=0, src=0, off=0, imm=0, target=None) -> "Asm":
        self._items.append((code, dst, src, off, imm, target))
        return self

    def label(self, name: str) -> "Asm":
        self._items.append(name)
        return self

    def mov(self, dst, imm):      # 64-bit
        return self._op(0xb7, dst, imm=imm)

    def movr(self, dst, src):
        return self._op(0xbf, dst, src)

    def add(self, dst, imm):
        return self._op(0x07, dst, imm=imm)

    def addr(self, dst, src):
        return self._op(0x0f, dst, src)

    def and_(self, dst, imm):
        return self._op(0x57, dst, imm=imm)

    def xor(self, dst, imm):
        return self._op(0xa7, dst, imm=imm)

    def rsh(self, dst, imm):
        return self._op(0x77, dst, imm=imm)

    def be16(self, dst):  # to network order
        return self._op(0xdc, dst, imm=16)

    def ldx(self, size, dst, src, off):
        return self._op(0x61 | _SIZE[size], dst, src, off)

    def stx(self, size, dst, src, off):
        return self._op(0x63 | _SIZE[size], dst, src, off)

    def st(self, size, dst, off, imm):
        return self._op(0x62 | _SIZE[size], dst, off=off, imm=imm)

    def call(self, helper):
        return self._op(0x85, imm=helper)

    def exit(self):
        return self._op(0x95)

    def ja(self, target):
        return self._op(0x05, target=target)

    # Comparisons are 32-bit (JMP32), so an immediate is never sign-extended.
    def jeq(self, dst, imm, target):
        return self._op(0x16, dst, imm=imm, target=target)

    def jne(self, dst, imm, target):
        return self._op(0x56, dst, imm=imm, target=target)

    def jgt(self, dst, imm, target):
        return self._op(0x26, dst, imm=imm, target=target)

    def ld_map(self, dst, fd):
        """A map's address (two slots: the kernel patches the fd into it)."""
        self._op(0x18, dst, 1, imm=fd)
        return self._op(0)

    def code(self) -> bytes:
        labels, slots = {}, []
        for item in self._items:
            if isinstance(item, str):
                labels[item] = len(slots)
            else:
                slots.append(item)
        out = bytearray()
        for n, (code, dst, src, off, imm, target) in enumerate(slots):
            if target is not None:
                off = labels[target] - n - 1
            out += struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
        return bytes(out)


def load(prog_type: int, code: bytes, name: str) -> int:
    """Load a program; returns its file descriptor."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    attr[48:48 + 15] = name.encode()[:15].ljust(15, b"\0")
    try:
        return _bpf(_PROG_LOAD, attr, f"load the BPF program {name}")
    except BpfError as exc:
        raise BpfError(f"{exc} Verifier: {log.value.decode(errors='replace')[-800:]}") from None


class HashMap:
    """A BPF hash map of ``key_size``-byte keys to ``value_size``-byte values."""

    def __init__(self, key_size: int, value_size: int, entries: int, name: str):
        attr = bytearray(72)
        struct.pack_into("<IIII", attr, 0, MAP_HASH, key_size, value_size, entries)
        attr[28:28 + 15] = name.encode()[:15].ljust(15, b"\0")
        self.key_size, self.value_size = key_size, value_size
        self.fd = _bpf(_MAP_CREATE, attr, f"create the BPF map {name}")

    def _call(self, cmd: int, what: str, key: bytes, value: bytes | None = None,
              next_key: bool = False) -> bool:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value or b"", max(self.key_size, self.value_size))
        attr = bytearray(32)      # a delete has no value: the kernel wants zeros there
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(k),
                         0 if cmd == _MAP_DELETE else ctypes.addressof(v), 0)
        try:
            _bpf(cmd, attr, what)
        except BpfError:
            if cmd != _MAP_UPDATE:
                return False      # no such key / no next key
            raise
        if next_key:
            self._next = v.raw[:self.key_size]
        return True

    def put(self, key: bytes, value: bytes) -> None:
        self._call(_MAP_UPDATE, "update a BPF map", key, value)

    def delete(self, key: bytes) -> None:
        self._call(_MAP_DELETE, "delete from a BPF map", key)

    def keys(self) -> set[bytes]:
        found, key = set(), b"\xff" * self.key_size     # not a key: start from the first
        while self._call(_MAP_NEXT_KEY, "list a BPF map", key, next_key=True):
            key = self._next
            found.add(key)
        return found

    def close(self) -> None:
        os.close(self.fd)
