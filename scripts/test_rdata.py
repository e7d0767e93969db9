#!/usr/bin/env python3
"""Tests for rdata.py on hand-assembled R serialization streams (R itself is not needed).

Run: python3 scripts/test_rdata.py
"""

import bz2
import gzip
import lzma
import struct
import sys
import tempfile
import unittest
import zlib
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rdata  # noqa: E402

HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


def i32(*values) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def header() -> bytes:
    return b"X\n" + i32(3, 0x040201, 0x030500, 5) + b"UTF-8"


def charsxp(text, encoding_bit=rdata.UTF8_MASK) -> bytes:
    if text is None:
        return i32(rdata.CHARSXP, -1)
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    return i32(rdata.CHARSXP | (encoding_bit << 12), len(raw)) + raw


def strsxp(values, flags=0) -> bytes:
    return i32(rdata.STRSXP | flags, len(values)) + b"".join(charsxp(v) for v in values)


def symbol(name) -> bytes:
    return i32(rdata.SYMSXP) + charsxp(name, rdata.ASCII_MASK)


def tagged_pairlist(cells) -> bytes:
    """cells: [(tag bytes, value bytes)]; the tags are already encoded (a SYMSXP or a REFSXP)."""
    out = b""
    for tag, value in cells:
        out += i32(rdata.LISTSXP | HAS_TAG) + tag + value
    return out + i32(rdata.NILVALUE_SXP)


def ref(index) -> bytes:
    return i32(rdata.REFSXP | (index << 8))


def named_list(names, values) -> bytes:
    body = i32(rdata.VECSXP | HAS_ATTR, len(values)) + b"".join(values)
    return body + tagged_pairlist([(symbol("names"), strsxp(names))])


class CharacterVectors(unittest.TestCase):
    def test_encodings_and_na_survive_a_gzipped_rds_file(self):
        stream = header() + i32(rdata.STRSXP, 4) + charsxp("plain", rdata.ASCII_MASK) + charsxp("£20,000") \
            + charsxp("caf\xe9".encode("latin-1"), rdata.LATIN1_MASK) + charsxp(None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x.rds"
            path.write_bytes(gzip.compress(stream))
            obj = rdata.load_rds(path)
        self.assertEqual(obj.sexptype, rdata.STRSXP)
        self.assertEqual(obj.value, ["plain", "£20,000", "café", None])

    def test_truncated_stream_is_an_error_not_a_crash(self):
        stream = header() + i32(rdata.STRSXP, 2) + charsxp("only one")
        with self.assertRaisesRegex(rdata.RDataError, "truncated"):
            rdata.unserialize(stream)

    def test_ascii_format_is_refused_by_name(self):
        with self.assertRaisesRegex(rdata.RDataError, "only XDR"):
            rdata.unserialize(b"A\n3\n")


class SaveFiles(unittest.TestCase):
    def test_bzipped_rdata_file_with_attributes(self):
        y = i32(rdata.INTSXP | HAS_ATTR, 2, 7, rdata.NA_INTEGER) + tagged_pairlist([(symbol("names"),
                                                                                      strsxp(["a", "b"]))])
        stream = header() + tagged_pairlist([(symbol("x"), strsxp(["one", "two"])), (symbol("y"), y)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "objs.rda"
            path.write_bytes(bz2.compress(b"RDX3\n" + stream))
            objects = rdata.load_rdata(path)
        self.assertEqual(sorted(objects), ["x", "y"])
        self.assertEqual(objects["x"].value, ["one", "two"])
        self.assertEqual(objects["y"].value, [7, None])
        self.assertEqual(objects["y"].names(), ["a", "b"])

    def test_repeated_symbol_is_resolved_through_the_reference_table(self):
        # R writes a symbol once and then refers to it by its 1-based place among referable objects read so
        # far: here `first` is 1 and `names` is 2, so the second list's names tag is reference 2.
        first = named_list(["a"], [strsxp(["1"])])
        second = i32(rdata.VECSXP | HAS_ATTR, 1) + strsxp(["2"]) + tagged_pairlist([(ref(2), strsxp(["b"]))])
        stream = header() + tagged_pairlist([(symbol("first"), first), (symbol("second"), second)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "objs.RData"
            path.write_bytes(b"RDX2\n" + stream)
            objects = rdata.load_rdata(path)
        self.assertEqual(objects["second"].names(), ["b"])


class LazyLoadDatabase(unittest.TestCase):
    def write_db(self, folder: Path, objects: dict, compression: int) -> None:
        rdb, positions = b"", {}
        for name, body in objects.items():
            raw = header() + body
            if compression == 1:
                record = struct.pack(">I", len(raw)) + zlib.compress(raw)
            else:
                record = struct.pack(">I", len(raw)) + b"X" + lzma.compress(raw)
            positions[name] = (len(rdb), len(record))
            rdb += record
        variables = named_list(list(positions), [i32(rdata.INTSXP, 2, *pos) for pos in positions.values()])
        flag = i32(rdata.LGLSXP, 1, 1) if compression == 1 else i32(rdata.REALSXP, 1) + struct.pack(">d", 3.0)
        index = named_list(["variables", "references", "compressed"],
                           [variables, i32(rdata.NILVALUE_SXP), flag])
        (folder / "Rdata.rdb").write_bytes(rdb)
        (folder / "Rdata.rdx").write_bytes(gzip.compress(header() + index))

    def test_zlib_and_xz_databases_give_back_each_object_by_name(self):
        for compression in (1, 3):
            with self.subTest(compression=compression), tempfile.TemporaryDirectory() as tmp:
                self.write_db(Path(tmp), {"emma": strsxp(["EMMA", "", "By Jane Austen"]),
                                          "persuasion": strsxp(["Persuasion"])}, compression)
                objects = rdata.load_package_data(Path(tmp))
                self.assertEqual(objects["emma"].value, ["EMMA", "", "By Jane Austen"])
                self.assertEqual(objects["persuasion"].value, ["Persuasion"])


if __name__ == "__main__":
    unittest.main()
