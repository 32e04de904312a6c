"""Reading the bytes of a Keras file: the file itself, and the members of a ``.keras`` zip archive.

Nothing here extracts to disk or follows a path named inside a file. Zip members are checked from the
central directory (names, types, sizes, ratios, count) before a single byte is decompressed.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib

from jaxmask.keras_io._limits import Limits, MiB, human_bytes, refuse

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# A .keras archive: config.json + model.weights.h5 + metadata.json (+ an optional, unused assets/ folder).
CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
METADATA_MEMBER = "metadata.json"
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_MAX_NAME = 512
# Errors the zip module raises on malformed archives (its own, zlib's, and those of the structs it unpacks).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
               NotImplementedError, RuntimeError, struct.error, UnicodeError, OverflowError)


def read_file(path, limits: Limits) -> bytes:
    """The whole file at ``path`` (a regular file no larger than ``limits.max_file_bytes``).

    Opened non-blocking so that a FIFO or device named by ``path`` is refused instead of hanging the reader.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        refuse(f"{name!r} is not a regular file (refusing to read a directory, device or FIFO).")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limits.max_file_bytes:
            refuse(
                f"{name!r} is {human_bytes(st.st_size)}, over the limit of {human_bytes(limits.max_file_bytes)}; "
                "raise Limits.max_file_bytes if the file is trusted."
            )
        data = f.read(st.st_size + 1)
    if len(data) > st.st_size:
        refuse(f"{name!r} grew while being read.")
    return data


def kind_of(data: bytes) -> str:
    """``"zip"`` (a ``.keras`` archive) or ``"hdf5"`` (``.h5`` / ``.weights.h5``), by content, not by suffix."""
    if data[:4] in ZIP_MAGIC:
        return "zip"
    # HDF5 allows a user block: the signature sits at byte 0, 512, 1024, 2048, ...
    offset = 0
    while offset + len(HDF5_MAGIC) <= len(data):
        if data[offset : offset + len(HDF5_MAGIC)] == HDF5_MAGIC:
            return "hdf5"
        offset = 512 if offset == 0 else offset * 2
    refuse(
        "the file is neither a .keras zip archive nor an HDF5 file (.h5 / .weights.h5): "
        f"it starts with {data[:8]!r}."
    )


def _check_member_name(name: str) -> None:
    why = None
    if not name or len(name) > _MAX_NAME:
        why = f"an empty name or a name over {_MAX_NAME} characters"
    elif "\x00" in name or "\\" in name:
        why = "a NUL byte or a backslash in its name"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        why = "an absolute path"
    elif any(part == ".." for part in name.split("/")):
        why = "'..' in its path (path traversal)"
    if why:
        refuse(f"zip member {name!r} has {why}; a .keras archive holds only config.json, model.weights.h5 and "
               "metadata.json.")


def _check_member(info: zipfile.ZipInfo, limits: Limits) -> None:
    name = info.filename
    _check_member_name(name)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        refuse(f"zip member {name!r} is a symbolic link; links in an archive can point anywhere on disk.")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        refuse(f"zip member {name!r} is a special file (mode {oct(mode)}); only regular files are allowed.")
    if info.flag_bits & 0x1:
        refuse(f"zip member {name!r} is encrypted.")
    if info.compress_type not in _ALLOWED_COMPRESSION:
        refuse(
            f"zip member {name!r} uses compression method {info.compress_type}; only stored and deflated "
            "members are read."
        )
    if info.file_size > limits.max_file_bytes:
        refuse(
            f"zip member {name!r} declares {human_bytes(info.file_size)} uncompressed, over the limit of "
            f"{human_bytes(limits.max_file_bytes)}."
        )
    if info.file_size > MiB and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
        refuse(
            f"zip member {name!r} expands {human_bytes(info.compress_size)} into {human_bytes(info.file_size)} "
            f"(ratio over {limits.max_zip_ratio}): a decompression bomb."
        )



_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_MAX_CD_ENTRY_BYTES = 1024  # 46-byte header + name (<= 512) + extra fields and comment


def _check_directory_size(data: bytes, limits: Limits) -> None:
    """Refuse from the end-of-central-directory record alone when the archive declares more members, or a
    larger central directory, than the limits allow: the zip module would otherwise parse all of it first."""
    end = data.rfind(_EOCD, max(0, len(data) - 22 - 65535))
    if end < 0 or end + 22 > len(data):
        return  # not a zip the quick check understands; zipfile decides
    count, cd_size = struct.unpack("<HI", data[end + 10 : end + 16])
    locator = end - 20
    if (count == 0xFFFF or cd_size == 0xFFFFFFFF) and locator >= 0 and data[locator : locator + 4] == _EOCD64_LOCATOR:
        (offset,) = struct.unpack("<Q", data[locator + 8 : locator + 16])
        if offset + 56 <= len(data) and data[offset : offset + 4] == _EOCD64:
            count, cd_size = struct.unpack("<QQ", data[offset + 32 : offset + 48])
    if count > limits.max_zip_members:
        refuse(f"the archive has {count} members, over the limit of {limits.max_zip_members}.")
    if cd_size > limits.max_zip_members * _MAX_CD_ENTRY_BYTES:
        refuse(f"the archive's central directory is {human_bytes(cd_size)}, over the limit of "
               f"{human_bytes(limits.max_zip_members * _MAX_CD_ENTRY_BYTES)}.")


def read_keras_archive(data: bytes, limits: Limits) -> dict[str, bytes]:
    """The members ``config.json``, ``model.weights.h5`` and (if present) ``metadata.json`` of a ``.keras``
    archive, after checking every member of the central directory."""
    _check_directory_size(data, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except _ZIP_ERRORS as e:
        refuse(f"not a readable .keras (zip) archive: {type(e).__name__}: {e}")
    if len(infos) > limits.max_zip_members:
        refuse(f"the archive has {len(infos)} members, over the limit of {limits.max_zip_members}.")
    seen = set()
    total = 0
    for info in infos:
        _check_member(info, limits)
        if info.filename in seen:
            refuse(f"zip member {info.filename!r} appears twice; readers disagree on which copy counts.")
        seen.add(info.filename)
        total += info.file_size
    if total > limits.max_file_bytes + limits.max_config_bytes + limits.max_metadata_bytes:
        refuse(f"the archive declares {human_bytes(total)} uncompressed in all, over the limits.")
    if WEIGHTS_MEMBER not in seen:
        others = sorted(seen)[:8]
        refuse(f"the archive has no {WEIGHTS_MEMBER} (members: {others}); sharded or npz weights are not supported.")
    caps = {CONFIG_MEMBER: limits.max_config_bytes, WEIGHTS_MEMBER: limits.max_file_bytes,
            METADATA_MEMBER: limits.max_metadata_bytes}
    members = {}
    for name, cap in caps.items():
        if name not in seen:
            continue
        info = archive.getinfo(name)
        if info.file_size > cap:
            refuse(f"zip member {name!r} is {human_bytes(info.file_size)}, over its limit of {human_bytes(cap)}.")
        try:
            with archive.open(info) as member:
                blob = member.read(info.file_size + 1)
        except _ZIP_ERRORS as e:
            refuse(f"zip member {name!r} cannot be read: {type(e).__name__}: {e}")
        if len(blob) != info.file_size:
            refuse(f"zip member {name!r} holds {len(blob)} bytes but declares {info.file_size}.")
        members[name] = blob
    return members
