"""Safe HDF5 access: open from a memory image, walk and vet every link and dataset, read only checked data.

The rules (each refusal is an ``UnsafeFileError`` naming the object):
- the file is opened from bytes in memory (core driver + file image); HDF5 never opens a path by itself;
- every link is inspected with ``group.get(name, getlink=True)`` before anything is resolved through it:
  soft links, external links and user-defined links are refused (they alias, loop, or read other files);
- every dataset is vetted before any data is read: external storage, virtual layout, any filter (Keras never
  compresses weights; HDF5's deflate filter grows its buffer without bound, so a compressed chunk is a
  decompression bomb, and an unknown filter makes HDF5 look for a plugin library), chunks larger than the
  dataset, non-numeric types, and a declared size the file does not store (a 4 TiB shape in a 5 KB file)
  are refused;
- weights are read only after their declared shape equals the shape the architecture expects, into a
  float32 buffer of exactly that shape.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from jaxmask.keras_io._limits import Limits, human_bytes, refuse

# HDF5 still tries to open() the name of a file image (and fails with "file already exists" if a file of that
# name is present): a path under /dev/null can never exist, so nothing can be planted there.
IMAGE_NAME = b"/dev/null/jaxmask-keras-io-in-memory.h5"
_SMALL_CHUNK = 2**20  # a chunk may exceed its dataset (edge chunks) but never by more than this
_NUMERIC_CLASSES = {h5py.h5t.FLOAT: "float", h5py.h5t.INTEGER: "integer"}
_TYPE_CLASS_NAMES = {
    h5py.h5t.INTEGER: "integer", h5py.h5t.FLOAT: "float", h5py.h5t.TIME: "time", h5py.h5t.STRING: "string",
    h5py.h5t.BITFIELD: "bitfield", h5py.h5t.OPAQUE: "opaque", h5py.h5t.COMPOUND: "compound",
    h5py.h5t.REFERENCE: "reference (object)", h5py.h5t.ENUM: "enum", h5py.h5t.VLEN: "variable-length",
    h5py.h5t.ARRAY: "array",
}
# Errors h5py raises on malformed files.
H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, OverflowError, UnicodeError)


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GLOBAL_HEAP = b"GCOL\x01"  # signature + version 1: what HDF5 accepts as a global heap collection


def _superblock(data: bytes, what: str) -> tuple[int, int]:
    """(size of offsets, size of lengths) from the superblock, which must sit at byte 0 with base address 0
    (Keras never writes HDF5 user blocks)."""
    if len(data) < 40 or data[:8] != _HDF5_MAGIC:
        refuse(f"{what}: the HDF5 superblock is not at byte 0 (user blocks are not supported).")
    version = data[8]
    if version not in (0, 1, 2, 3):
        refuse(f"{what} has an unknown HDF5 superblock version {version}.")
    offsets, lengths = (data[13], data[14]) if version < 2 else (data[9], data[10])
    if offsets not in (2, 4, 8) or lengths not in (2, 4, 8):
        refuse(f"{what} declares {offsets}-byte offsets and {lengths}-byte lengths in its HDF5 superblock.")
    base_at = {0: 24, 1: 28}.get(version, 12)
    if int.from_bytes(data[base_at : base_at + offsets], "little") != 0:
        refuse(f"{what}: the HDF5 base address is not 0 (user blocks are not supported).")
    return offsets, lengths


def _size_of_lengths(data: bytes, what: str) -> int:
    return _superblock(data, what)[1]


def check_global_heaps(data: bytes, what: str) -> None:
    """Walk every global heap collection in ``data`` as HDF5's ``H5HG__cache_heap_deserialize`` would, and
    refuse any whose objects do not tile it exactly.

    libhdf5 1.14.6 (bundled with h5py 3.14) loops forever on a free-space object of size 0 and walks past the
    collection on oversized objects; it deserializes a collection whenever a variable-length string (the
    ``model_config`` and ``layer_names`` attributes of legacy files) is read. Found by fuzz/fuzz_keras_io.py.
    """
    length = _size_of_lengths(data, what)
    header, object_header = 8 + length, 8 + length
    pos = data.find(_GLOBAL_HEAP)
    while pos >= 0:
        where = f"{what}: global heap collection at byte {pos}"
        if pos + header > len(data):
            refuse(f"{where} is truncated.")
        end = pos + int.from_bytes(data[pos + 8 : pos + 8 + length], "little")
        if end < pos + header or end > len(data):
            refuse(f"{where} declares {end - pos} bytes; the file has {len(data) - pos} from there.")
        p = pos + header
        while p + object_header <= end:
            index = int.from_bytes(data[p : p + 2], "little")
            size = int.from_bytes(data[p + 8 : p + 8 + length], "little")
            need = object_header + -(-size // 8) * 8 if index else size
            if need <= 0 or p + need > end:
                refuse(f"{where}: object {index} of size {size} does not fit the collection (HDF5 would loop or "
                       "read past it).")
            p += need
        pos = data.find(_GLOBAL_HEAP, pos + 1)


class _Reader:
    """Bounds-checked little-endian reads from the file image; any overrun is a refusal."""

    def __init__(self, data: bytes, what: str):
        self.data, self.what = data, what

    def uint(self, at: int, width: int) -> int:
        if at < 0 or at + width > len(self.data):
            refuse(f"{self.what}: an HDF5 object header points past the end of the file (byte {at}).")
        return int.from_bytes(self.data[at : at + width], "little")


_MSG_ATTRIBUTE, _MSG_CONTINUATION, _MSG_ATTRIBUTE_INFO = 0x000C, 0x0010, 0x0015
_CLASS_VLEN, _CLASS_COMPOUND, _CLASS_ARRAY = 9, 6, 10
_MAX_HEADER_CHUNKS, _MAX_MESSAGES = 256, 10_000


def _header_messages(r: _Reader, addr: int, offsets: int, lengths: int):
    """(type, data offset, size, flags) of every message in the object header at ``addr`` (versions 1 and 2),
    following continuation messages; bounded in chunks and messages."""
    if r.uint(addr, 4) == int.from_bytes(b"OHDR", "little"):
        flags = r.uint(addr + 5, 1)
        p = addr + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        chunks = [(p + width, p + width + r.uint(p, width), 2)]
        order = 2 if flags & 0x04 else 0
    elif r.uint(addr, 1) == 1:
        chunks = [(addr + 16, addr + 16 + r.uint(addr + 8, 4), 1)]
        order = 0
    else:
        refuse(f"{r.what}: unknown HDF5 object header version at byte {addr}.")
    count = 0
    while chunks:
        start, end, version = chunks.pop()
        p = start
        head = 4 + order if version == 2 else 8
        while p + head <= end:
            if version == 2:
                kind, msize, mflags = r.uint(p, 1), r.uint(p + 1, 2), r.uint(p + 3, 1)
            else:
                kind, msize, mflags = r.uint(p, 2), r.uint(p + 2, 2), r.uint(p + 4, 1)
            body = p + head
            if body + msize > end:
                refuse(f"{r.what}: an HDF5 header message at byte {p} overruns its chunk.")
            count += 1
            if count > _MAX_MESSAGES:
                refuse(f"{r.what}: an HDF5 object header has more than {_MAX_MESSAGES} messages.")
            if kind == _MSG_CONTINUATION:
                target, length = r.uint(body, offsets), r.uint(body + offsets, lengths)
                if version == 2:  # "OCHK", messages, checksum
                    if r.data[target : target + 4] != b"OCHK":
                        refuse(f"{r.what}: an HDF5 continuation chunk at byte {target} lacks its signature.")
                    chunks.append((target + 4, target + length - 4, 2))
                else:
                    chunks.append((target, target + length, 1))
                if len(chunks) > _MAX_HEADER_CHUNKS:
                    refuse(f"{r.what}: an HDF5 object header has more than {_MAX_HEADER_CHUNKS} chunks.")
            yield kind, body, msize, mflags
            p = body + msize


def _attribute_vlen_lengths(r: _Reader, body: int, size: int, offsets: int, lengths: int):
    """(name, element lengths or None when not variable-length) of one attribute message, or a refusal for
    types that could hide variable-length data (compound, array, shared datatypes)."""
    version, flags = r.uint(body, 1), r.uint(body + 1, 1)
    name_size, type_size, space_size = r.uint(body + 2, 2), r.uint(body + 4, 2), r.uint(body + 6, 2)
    pad = (lambda n: -(-n // 8) * 8) if version == 1 else (lambda n: n)
    p = body + 8 + (1 if version == 3 else 0)
    name = r.data[p : p + max(name_size - 1, 0)].decode("utf-8", "replace")
    p += pad(name_size)
    if flags & 0x03:
        return name, "shared"
    type_class = r.uint(p, 1) & 0x0F
    p += pad(type_size)
    space_version, ndims = r.uint(p, 1), r.uint(p + 1, 1)
    if space_version == 1:
        dims_at = p + 8
    else:
        dims_at = p + 4
        if r.uint(p + 3, 1) == 2:  # null dataspace: no elements
            ndims, dims_at = -1, p + 4
    count = 0 if ndims < 0 else math.prod(r.uint(dims_at + i * lengths, lengths) for i in range(ndims))
    p += pad(space_size)
    if type_class in (_CLASS_COMPOUND, _CLASS_ARRAY):
        return name, "nested"
    if type_class != _CLASS_VLEN:
        return name, None
    element = 4 + offsets + 4
    if p + count * element > body + size:
        refuse(f"{r.what}: attribute {name!r} declares {count} variable-length elements that its message "
               "cannot hold.")
    return name, [r.uint(p + i * element, 4) for i in range(count)]


def check_attributes(obj, names, data: bytes, what: str, limits: Limits) -> None:
    """Before HDF5 reads attributes ``names`` of ``obj``: parse ``obj``'s object header from the raw bytes and
    refuse a variable-length element longer than ``limits.max_config_bytes``.

    libhdf5 allocates (and zeroes) a buffer of the length a variable-length descriptor declares *before*
    reading the data: a 4-byte edit of a 14 KB legacy file made it allocate 2.5 GB and spin for 13 s
    (found by fuzz/fuzz_keras_io.py). Attributes kept in dense storage, or with shared or nested types, are
    refused.
    """
    offsets, lengths = _superblock(data, what)
    try:
        addr = h5py.h5o.get_info(obj.id).addr
    except H5_ERRORS as e:
        refuse(f"{what}: the object header of {obj.name!r} cannot be located: {type(e).__name__}: {e}")
    r = _Reader(data, what)
    wanted = set(names)
    for kind, body, size, _ in _header_messages(r, addr, offsets, lengths):
        if kind == _MSG_ATTRIBUTE_INFO:
            heap = r.uint(body + 2 + (2 if r.uint(body + 1, 1) & 0x01 else 0), offsets)
            if heap != (1 << (8 * offsets)) - 1:
                refuse(f"{what}: {obj.name!r} keeps its attributes in dense storage, which is not supported.")
        if kind != _MSG_ATTRIBUTE:
            continue
        name, found = _attribute_vlen_lengths(r, body, size, offsets, lengths)
        if name not in wanted:
            continue
        if found in ("shared", "nested"):
            refuse(f"{what}: attribute {name!r} of {obj.name!r} has a {found} datatype; expected text.")
        if found and (max(found) > limits.max_config_bytes or sum(found) > limits.max_config_bytes):
            refuse(f"{what}: attribute {name!r} of {obj.name!r} declares variable-length text of "
                   f"{human_bytes(max(sum(found), max(found)))}, over the limit of "
                   f"{human_bytes(limits.max_config_bytes)}.")


def open_image(data: bytes, what: str) -> h5py.File:
    """Open HDF5 ``data`` read-only from memory (``what`` names it in messages), after checking the structures
    libhdf5 is known to mis-parse (``check_global_heaps``)."""
    check_global_heaps(data, what)
    try:
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_fapl_core(backing_store=False)
        fapl.set_file_image(data)
        fid = h5py.h5f.open(IMAGE_NAME, h5py.h5f.ACC_RDONLY, fapl=fapl)
        return h5py.File(fid)
    except H5_ERRORS as e:
        refuse(f"{what} is not a readable HDF5 file: {type(e).__name__}: {e}")


def _hard_link(group: h5py.Group, name: str, where: str) -> bool:
    """True for a hard link called ``name`` in ``group``, False when there is none; refuses any other link."""
    try:
        link = group.get(name, getlink=True)
    except H5_ERRORS as e:
        refuse(f"HDF5 link {where!r} cannot be inspected ({type(e).__name__}: {e}); refusing unknown link types.")
    if isinstance(link, h5py.ExternalLink):
        refuse(
            f"HDF5 object {where!r} is an external link to {link.path!r} in file {link.filename!r}: "
            "it would read another file on this machine (CVE-2026-1669 class)."
        )
    if isinstance(link, h5py.SoftLink):
        refuse(f"HDF5 object {where!r} is a soft link to {link.path!r}: soft links can alias weights or loop.")
    if link is None:
        return False
    if not isinstance(link, h5py.HardLink):
        refuse(f"HDF5 object {where!r} is a link of an unknown kind.")
    return True


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def check_dataset(ds: h5py.Dataset, where: str, limits: Limits) -> tuple:
    """Vet ``ds`` without reading it; return its declared shape."""
    try:
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        n_external = dcpl.get_external_count()
        chunked = layout == h5py.h5d.CHUNKED
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())] if chunked else []
        chunk = dcpl.get_chunk() if chunked else ()
        h5type = ds.id.get_type()
        type_class = h5type.get_class()
        itemsize = h5type.get_size()
        shape = ds.shape
        stored = ds.id.get_storage_size()
    except H5_ERRORS as e:
        refuse(f"HDF5 dataset {where!r} cannot be inspected: {type(e).__name__}: {e}")
    if layout == h5py.h5d.VIRTUAL:
        refuse(f"HDF5 dataset {where!r} is a virtual dataset: its data would be read from other files.")
    if n_external:
        try:
            names = [dcpl.get_external(i)[0] for i in range(min(n_external, 4))]
        except H5_ERRORS:
            names = ["(unreadable)"]
        refuse(
            f"HDF5 dataset {where!r} keeps its data in external file(s) {names}: reading it would read another "
            "file on this machine (CVE-2026-1669 class)."
        )
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        refuse(f"HDF5 dataset {where!r} has an unknown storage layout ({layout}).")
    if filters:
        refuse(
            f"HDF5 dataset {where!r} uses filter {filters[0]} (compression or checksum); Keras never writes "
            "filtered weights, a compressed chunk can inflate without bound, and an unknown filter makes HDF5 "
            "look for a plugin library."
        )
    if type_class not in _NUMERIC_CLASSES:
        name = _TYPE_CLASS_NAMES.get(type_class, f"class {type_class}")
        refuse(f"HDF5 dataset {where!r} has a {name} type; weights must be numeric (float or integer).")
    if (type_class == h5py.h5t.FLOAT and itemsize not in (2, 4, 8)) or itemsize not in (1, 2, 4, 8):
        refuse(f"HDF5 dataset {where!r} has an unsupported {itemsize}-byte {_NUMERIC_CLASSES[type_class]} type.")
    if shape is None:
        refuse(f"HDF5 dataset {where!r} has a null dataspace (no shape).")
    declared = math.prod(shape) * itemsize
    if declared > limits.max_file_bytes:
        refuse(
            f"HDF5 dataset {where!r} declares shape {shape} = {human_bytes(declared)}, over the limit of "
            f"{human_bytes(limits.max_file_bytes)} (shape bomb, CVE-2026-0897 class)."
        )
    chunk_bytes = math.prod(chunk) * itemsize
    if chunk_bytes > max(declared, _SMALL_CHUNK):
        refuse(f"HDF5 dataset {where!r} of shape {shape} uses chunks of {chunk} = {human_bytes(chunk_bytes)}, "
               "larger than the dataset itself.")
    if stored < declared:
        refuse(
            f"HDF5 dataset {where!r} declares shape {shape} = {human_bytes(declared)} but the file stores only "
            f"{human_bytes(stored)} for it: a shape bomb (CVE-2026-0897 class) or a truncated file."
        )
    return shape


class Walker:
    """Visits every link of a file once (bounded by count and depth) and vets it."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.count = 0

    def walk(self, root: h5py.Group) -> None:
        stack = [(root, "/", 0)]
        while stack:
            group, path, depth = stack.pop()
            try:
                n = len(group)
                self._check_attrs(group, path)
                names = list(group) if n + self.count <= self.limits.max_h5_objects else None
            except H5_ERRORS as e:
                refuse(f"HDF5 group {path!r} cannot be listed: {type(e).__name__}: {e}")
            if names is None or len(names) != n:
                refuse(f"the HDF5 file has more than {self.limits.max_h5_objects} objects, over the limit.")
            self.count += n
            for name in names:
                where = _join(path, name)
                if not _hard_link(group, name, where):
                    refuse(f"HDF5 object {where!r} is listed but cannot be found.")
                try:
                    cls = group.get(name, getclass=True)
                    obj = group[name] if cls in (h5py.Group, h5py.Dataset) else None
                except H5_ERRORS as e:
                    refuse(f"HDF5 object {where!r} cannot be opened: {type(e).__name__}: {e}")
                if cls is h5py.Dataset:
                    check_dataset(obj, where, self.limits)
                    self._check_attrs(obj, where)
                elif cls is h5py.Group:
                    if depth + 1 > self.limits.max_h5_depth:
                        shown = where if len(where) <= 120 else f"{where[:60]}...{where[-60:]}"
                        refuse(
                            f"HDF5 group {shown!r} is nested deeper than {self.limits.max_h5_depth} levels "
                            "(or hard links form a cycle)."
                        )
                    stack.append((obj, where, depth + 1))
                else:
                    refuse(f"HDF5 object {where!r} is a {getattr(cls, '__name__', cls)}, not a group or dataset.")

    def _check_attrs(self, obj, where: str) -> None:
        n = len(obj.attrs)
        self.count += n
        if self.count > self.limits.max_h5_objects:
            refuse(f"the HDF5 file has more than {self.limits.max_h5_objects} objects and attributes.")


def resolve(root: h5py.Group, path: str, where: str = "") -> h5py.Group | h5py.Dataset | None:
    """The object at ``path`` (components separated by "/") under ``root``, following hard links only;
    ``None`` if a component is missing."""
    obj = root
    trail = where or root.name
    for part in path.split("/"):
        if part in ("", ".", "..") or "\x00" in part:
            refuse(f"HDF5 path {path!r} (under {trail!r}) has an empty, '.' or '..' component.")
        if not isinstance(obj, h5py.Group):
            return None
        here = _join(trail, part)
        if not _hard_link(obj, part, here):
            return None
        try:
            obj = obj[part]
        except H5_ERRORS as e:
            refuse(f"HDF5 object {here!r} cannot be opened: {type(e).__name__}: {e}")
        trail = here
    return obj


def read_weight(ds, where: str, expected_shape: tuple, limits: Limits) -> np.ndarray:
    """Read ``ds`` as float32 after checking it is a float dataset of exactly ``expected_shape``."""
    if not isinstance(ds, h5py.Dataset):
        refuse(f"{where!r} should be a weight dataset of shape {expected_shape} but is missing or a group.")
    shape = check_dataset(ds, where, limits)
    if tuple(shape) != tuple(expected_shape):
        refuse(
            f"weight {where!r} declares shape {tuple(shape)} but the architecture expects {tuple(expected_shape)}; "
            "refusing before reading any data."
        )
    if ds.id.get_type().get_class() != h5py.h5t.FLOAT:
        refuse(f"weight {where!r} has an integer type; Keras weights are floating point.")
    if "dtype" in ds.attrs:
        refuse(f"weight {where!r} carries a 'dtype' attribute (Keras marks bfloat16 weights so); only "
               "float16/32/64 weights are supported.")
    out = np.empty(expected_shape, np.float32)
    if out.size:
        try:
            ds.read_direct(out)
        except H5_ERRORS as e:
            refuse(f"weight {where!r} cannot be read: {type(e).__name__}: {e}")
    return out


def _attr_id(obj, name: str, where: str, limits: Limits):
    try:
        if name not in obj.attrs:
            return None
        aid = obj.attrs.get_id(name)
        shape = aid.shape
        h5type = aid.get_type()
        type_class = h5type.get_class()
        variable = type_class == h5py.h5t.STRING and h5type.is_variable_str()
        itemsize = h5type.get_size()
    except H5_ERRORS as e:
        refuse(f"attribute {name!r} of {where!r} cannot be inspected: {type(e).__name__}: {e}")
    if shape is None or math.prod(shape) > limits.max_attr_elements:
        refuse(f"attribute {name!r} of {where!r} has shape {shape}; at most {limits.max_attr_elements} elements.")
    if not variable and math.prod(shape) * itemsize > limits.max_config_bytes:
        refuse(f"attribute {name!r} of {where!r} declares {human_bytes(math.prod(shape) * itemsize)}, over the "
               f"limit of {human_bytes(limits.max_config_bytes)}.")
    return aid, shape, type_class


def _decode(value, name: str, where: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            refuse(f"attribute {name!r} of {where!r} is not valid UTF-8.")
    if isinstance(value, str):
        return value
    refuse(f"attribute {name!r} of {where!r} should hold text; it holds {type(value).__name__}.")


def _read_attr(obj, name: str, where: str):
    try:
        return obj.attrs[name]
    except H5_ERRORS as e:
        refuse(f"attribute {name!r} of {where!r} cannot be read: {type(e).__name__}: {e}")


def read_str_attr(obj, name: str, where: str, limits: Limits, image: bytes) -> str | None:
    """A scalar text attribute (``model_config``, ``keras_version``), or ``None`` when absent. ``image`` is the
    file's bytes, for ``check_attributes``."""
    found = _attr_id(obj, name, where, limits)
    if found is None:
        return None
    check_attributes(obj, [name], image, where, limits)
    _, shape, type_class = found
    if type_class != h5py.h5t.STRING or shape not in ((), (1,)):
        refuse(f"attribute {name!r} of {where!r} should be one string; it is {shape} of type class {type_class}.")
    value = _read_attr(obj, name, where)
    if shape == (1,):
        value = value[0]
    return _decode(value, name, where)


def read_str_list_attr(obj, name: str, where: str, limits: Limits, image: bytes) -> list[str] | None:
    """A 1-D list of strings (``layer_names``, ``weight_names``; Keras writes an empty list as float64 []),
    or ``None`` when absent. ``image`` is the file's bytes, for ``check_attributes``."""
    found = _attr_id(obj, name, where, limits)
    if found is None:
        return None
    check_attributes(obj, [name], image, where, limits)
    _, shape, type_class = found
    if len(shape) != 1 or (type_class != h5py.h5t.STRING and shape != (0,)):
        refuse(f"attribute {name!r} of {where!r} should be a list of strings; it is {shape} of type class "
               f"{type_class}.")
    if shape == (0,):
        return []
    return [_decode(v, name, where) for v in _read_attr(obj, name, where)]
