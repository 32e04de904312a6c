"""TensorBoard event files (``events.out.tfevents.*``) without TensorFlow: a scalar writer and a reader.

The format (tensorflow/core/lib/io/record_writer.cc, tensorboard's event_file_writer.py): a file of records,
each ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`` (little-endian),
where ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32`` and crc32c is the Castagnoli CRC. Every
record's data is a serialised ``tensorflow.Event`` protocol buffer; the first one holds ``file_version =
"brain.Event:2"``, the others ``wall_time``, ``step`` and a ``Summary`` of ``simple_value`` scalars, which
TensorBoard shows under Scalars. The few protobuf fields needed are encoded by hand:

    Event:   1 wall_time (double), 2 step (int64), 3 file_version (string), 5 summary (Summary)
    Summary: 1 value (repeated Value);  Value: 1 tag (string), 2 simple_value (float)
"""

from __future__ import annotations

import glob
import os
import socket
import struct
import time

import numpy as np


def _crc32c_table():
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return [int(v) for v in table]


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``data``."""
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None, scalars: dict | None = None) -> bytes:
    """A serialised ``tensorflow.Event`` with ``file_version`` or a summary of ``{tag: float}`` scalars."""
    out = _field(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _field(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, str(tag).encode()) + _field(2, 5) + struct.pack("<f", float(value)))
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, summary)
    return out


def frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file in ``logdir``.

    Every ``add_scalars`` writes whole records and flushes, so a killed process leaves a readable file (at
    worst without its last record).
    """

    _count = 0

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        EventFileWriter._count += 1
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{EventFileWriter._count}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")
        self._file.write(frame(encode_event(time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, scalars: dict, step: int) -> None:
        self._file.write(frame(encode_event(time.time(), step, scalars=scalars)))
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


# ------------------------------------------------------------------------------------------ reading


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of a protobuf message (varint, fixed64, bytes, fixed32)."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def read_records(path: str) -> list[bytes]:
    """The records of one TFRecord file, checking both CRCs of each.

    Raises:
      ValueError: a CRC mismatch or a truncated record (named by its offset).
    """
    with open(path, "rb") as f:
        data = f.read()
    out, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[i + 8 : i + 12])
        if crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        body = data[i + 12 : i + 12 + length]
        if len(body) != length or i + 16 + length > len(data):
            raise ValueError(f"{path}: truncated record at byte {i}")
        (crc,) = struct.unpack("<I", data[i + 12 + length : i + 16 + length])
        if crc != masked_crc32c(body):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        out.append(body)
        i += 16 + length
    return out


def read_scalars(logdir: str) -> dict:
    """``{tag: [(step, value), ...]}`` from every event file in ``logdir`` (files in name order).

    Args:
      logdir: a directory written by :class:`EventFileWriter` (e.g. ``log_dir/train`` of the TensorBoard
        callback), or TensorBoard event files with ``simple_value`` scalars.

    Returns:
      The scalars by tag, in the order written.
    """
    result: dict = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for record in read_records(path):
            step = 0
            values = []
            for number, _, value in _fields(record):
                if number == 2:
                    step = value
                elif number == 5:
                    for vnum, _, v in _fields(value):
                        if vnum != 1:
                            continue
                        tag, simple = None, None
                        for fnum, _, fv in _fields(v):
                            if fnum == 1:
                                tag = fv.decode()
                            elif fnum == 2:
                                (simple,) = struct.unpack("<f", fv)
                        if tag is not None and simple is not None:
                            values.append((tag, simple))
            for tag, simple in values:
                result.setdefault(tag, []).append((int(step), float(simple)))
    return result
