"""A reader for R's serialization format, enough to pull character vectors out of R data files.

R is not installed where evokernel runs, yet some corpora ship only as R packages. This module reads:
  - lazy-load databases (`data/Rdata.rdx` + `data/Rdata.rdb`), which is how installed packages store data sets;
  - `save()` files (`.rda`/`.RData`, `RDX2`/`RDX3` header), optionally gzip/bzip2/xz compressed;
  - `saveRDS()` files (`.rds`).
Only the XDR (big-endian binary) flavour is read. Objects come back as `RObject`s; character vectors hold a
list of `str` (None for NA). Closures and environments are read only as far as needed to step over them;
byte code, ALTREP objects and unknown types raise `RDataError` naming the type, because guessing would silently
corrupt data.

Format reference: R's src/main/serialize.c (`ReadItem`) and src/main/saveload.c.
"""

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP types (Rinternals.h).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP = 7, 8, 9, 10, 13, 14
CPLXSXP, STRSXP, DOTSXP, VECSXP, EXPRSXP = 15, 16, 17, 19, 20
EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = 22, 23, 24, 25

# Pseudo-types that only exist in the serialized stream (serialize.c).
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP = 255, 254, 253, 252
MISSINGARG_SXP, BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP = 251, 250, 249, 248
PERSISTSXP, EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP = 247, 242, 241, 240, 239

PAIRLIST_TYPES = {LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP}
SINGLETONS = {NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
              BASENAMESPACE_SXP, EMPTYENV_SXP, BASEENV_SXP}

# CHARSXP encoding bits in the "levels" field.
LATIN1_MASK, UTF8_MASK, BYTES_MASK, ASCII_MASK = 1 << 2, 1 << 3, 1 << 1, 1 << 6

NA_INTEGER = -(2**31)


class RDataError(Exception):
    """The file is not R data this reader understands; the message says what was found."""


@dataclass
class RObject:
    """One R value: its SEXP type, its payload and its attributes (a name -> value dict).

    Payloads: list of str/None for character vectors, list of int/float/bool/None for atomic vectors,
    list of RObject for generic vectors, list of (tag, value) pairs for pairlists, str for symbols,
    None for NULL and for environments and other objects this reader skips over.
    """

    sexptype: int
    value: Any
    attributes: dict = field(default_factory=dict)

    def names(self) -> list:
        names = self.attributes.get("names")
        return names.value if names is not None else []


NULL = RObject(NILSXP, None)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list = []
        self.native_encoding = "utf-8"

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError(f"truncated R serialization: wanted {n} bytes at offset {self.pos}, "
                             f"stream has {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.bytes(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper then lower 32 bits
            upper, lower = self.int(), self.int()
            n = (upper << 32) + lower
        if n < 0:
            raise RDataError(f"negative vector length {n} at offset {self.pos}")
        return n

    def header(self) -> None:
        fmt = self.bytes(2)
        if fmt != b"X\n":
            raise RDataError(f"unsupported R serialization format {fmt!r} (only XDR binary 'X\\n' is read)")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.native_encoding = self.bytes(self.int()).decode("ascii")
        elif version != 2:
            raise RDataError(f"unsupported R serialization version {version}")

    def charsxp(self, levels: int):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.bytes(n)
        if levels & (UTF8_MASK | ASCII_MASK):
            return raw.decode("utf-8")
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & BYTES_MASK:
            raise RDataError("character string marked as raw bytes; no text encoding to decode it with")
        try:
            return raw.decode(self.native_encoding)
        except (LookupError, UnicodeDecodeError) as e:
            raise RDataError(f"cannot decode string in native encoding {self.native_encoding!r}: {e}") from e

    def persistent_names(self) -> list:
        if self.int() != 0:
            raise RDataError("malformed persistent-name string vector")
        return [self.item() for _ in range(self.int())]

    def attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        pairs = self.item()
        if pairs.sexptype != LISTSXP:
            raise RDataError(f"attributes are not a pairlist (type {pairs.sexptype})")
        return {tag: value for tag, value in pairs.value}

    def item(self) -> RObject:
        flags = self.int()
        sexptype = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))

        if sexptype in SINGLETONS:
            return NULL if sexptype == NILVALUE_SXP else RObject(sexptype, None)
        if sexptype == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise RDataError(f"reference {index} points outside the {len(self.refs)} objects read so far")
            return self.refs[index - 1]
        if sexptype in (PERSISTSXP, NAMESPACESXP, PACKAGESXP):
            obj = RObject(sexptype, self.persistent_names())
            self.refs.append(obj)
            return obj
        if sexptype == SYMSXP:
            obj = RObject(SYMSXP, self.item().value)
            self.refs.append(obj)
            return obj
        if sexptype == ENVSXP:
            obj = RObject(ENVSXP, None)
            self.refs.append(obj)
            self.int()  # locked
            for _ in ("enclosure", "frame", "hashtab", "attributes"):
                self.item()
            return obj
        if sexptype in PAIRLIST_TYPES:
            return self.pairlist(sexptype, flags)
        if sexptype in (EXTPTRSXP, WEAKREFSXP):
            obj = RObject(sexptype, None)
            self.refs.append(obj)
            if sexptype == EXTPTRSXP:
                self.item()  # protected value
                self.item()  # tag
            obj.attributes = self.attributes(has_attr)
            return obj
        if sexptype in (SPECIALSXP, BUILTINSXP):
            return RObject(sexptype, self.bytes(self.int()).decode("ascii"))
        if sexptype == CHARSXP:
            return RObject(CHARSXP, self.charsxp(levels))
        if sexptype == S4SXP:
            return RObject(S4SXP, None, self.attributes(has_attr))
        value = self.vector(sexptype)
        return RObject(sexptype, value, self.attributes(has_attr))

    def pairlist(self, sexptype: int, flags: int) -> RObject:
        # Pairlists are serialized head first with the tail inline; walk the tail in a loop, not by recursion,
        # so that long lists do not hit Python's recursion limit.
        cells = []
        attributes = {}
        while True:
            has_attr = bool(flags & (1 << 9))
            has_tag = bool(flags & (1 << 10))
            cell_attributes = self.attributes(has_attr)
            if not cells:
                attributes = cell_attributes
            tag = self.item().value if has_tag else None
            cells.append((tag, self.item()))
            flags = self.int()
            if flags & 0xFF not in PAIRLIST_TYPES:
                self.pos -= 4
                tail = self.item()
                if tail.sexptype != NILSXP:
                    cells.append((None, tail))
                break
        if sexptype == ATTRLISTSXP:
            sexptype = LISTSXP
        return RObject(sexptype, cells, attributes)

    def vector(self, sexptype: int) -> list:
        n = self.length()
        if sexptype == STRSXP:
            out = []
            for _ in range(n):
                flags = self.int()
                if flags & 0xFF != CHARSXP:
                    raise RDataError(f"character vector element has type {flags & 0xFF}, expected CHARSXP")
                out.append(self.charsxp(flags >> 12))
            return out
        if sexptype in (LGLSXP, INTSXP):
            ints = struct.unpack(f">{n}i", self.bytes(4 * n))
            if sexptype == LGLSXP:
                return [None if v == NA_INTEGER else bool(v) for v in ints]
            return [None if v == NA_INTEGER else v for v in ints]
        if sexptype == REALSXP:
            return list(struct.unpack(f">{n}d", self.bytes(8 * n)))
        if sexptype == CPLXSXP:
            parts = struct.unpack(f">{2 * n}d", self.bytes(16 * n))
            return [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)]
        if sexptype == RAWSXP:
            return list(self.bytes(n))
        if sexptype in (VECSXP, EXPRSXP):
            return [self.item() for _ in range(n)]
        raise RDataError(f"unsupported R object type {sexptype} at offset {self.pos} "
                         "(byte code, ALTREP or an unknown type)")


def unserialize(data: bytes) -> RObject:
    """Read one object written by R's serialize()/saveRDS() (uncompressed bytes, starting with 'X\\n')."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def decompress_file_bytes(data: bytes) -> bytes:
    """Undo the whole-file compression save()/saveRDS() may apply (gzip, bzip2 or xz), by magic number."""
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"BZh"):
        return bz2.decompress(data)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data)
    return data


def load_rds(path: Path) -> RObject:
    """Read a saveRDS() file."""
    return unserialize(decompress_file_bytes(path.read_bytes()))


def load_rdata(path: Path) -> dict:
    """Read a save() file (.rda/.RData): a dict from object name to RObject."""
    data = decompress_file_bytes(path.read_bytes())
    if not data.startswith((b"RDX2\n", b"RDX3\n")):
        raise RDataError(f"{path}: not an XDR R data file (header {data[:5]!r}, expected RDX2 or RDX3)")
    pairs = unserialize(data[5:])
    return {tag: value for tag, value in pairs.value}


def _lazyload_record(blob: bytes, compression: int) -> bytes:
    """Decompress one record of a lazy-load .rdb file (R's R_decompress1/2/3)."""
    expected = struct.unpack(">I", blob[:4])[0]
    if compression == 1:
        out = zlib.decompress(blob[4:])
    else:
        kind, body = blob[4:5], blob[5:]
        decoders = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        if kind not in decoders:
            raise RDataError(f"unknown lazy-load record compression {kind!r}")
        out = decoders[kind](body)
    if len(out) != expected:
        raise RDataError(f"lazy-load record decompressed to {len(out)} bytes, header says {expected}")
    return out


def load_lazyload_db(rdx_path: Path) -> dict:
    """Read a lazy-load database (`X.rdx` index next to `X.rdb` data): a dict from object name to RObject."""
    index = load_rds(rdx_path)
    fields = dict(zip(index.names(), index.value))
    if "variables" not in fields:
        raise RDataError(f"{rdx_path}: no 'variables' in the lazy-load index (found {sorted(fields)})")
    compressed = fields.get("compressed", RObject(LGLSXP, [True])).value[0]
    compression = 1 if compressed is True else int(compressed)
    variables = fields["variables"]
    rdb = rdx_path.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, position in zip(variables.names(), variables.value):
        offset, length = (int(v) for v in position.value)
        record = _lazyload_record(rdb[offset:offset + length], compression)
        objects[name] = unserialize(record)
    return objects


def load_package_data(data_dir: Path) -> dict:
    """Every data set in an installed R package's data/ folder, whichever way the package stored them."""
    rdx = data_dir / "Rdata.rdx"
    if rdx.exists():
        return load_lazyload_db(rdx)
    objects = {}
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() in (".rda", ".rdata"):
            objects.update(load_rdata(path))
        elif path.suffix.lower() == ".rds":
            objects[path.stem] = load_rds(path)
    if not objects:
        raise RDataError(f"{data_dir}: no Rdata.rdx, .rda, .RData or .rds files")
    return objects
