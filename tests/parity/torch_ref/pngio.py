"""Minimal PNG reader/writer for the tests and the PyTorch references (no PIL on the CI machines).

Shared by tests/cli/hwaga_testlib.py (pictures for the CLI tests, reading hwaga's output with its
tEXt chunks) and run_reference.py (input pictures for the reference tokenizer).

  read_png(path)  -> (uint8 [H,W,C], {tEXt key: value}); 8-bit non-interlaced gray/RGB/RGBA only,
                     chunk CRCs checked; anything else raises PngError naming the file.
  write_png(path, rgb, text=None)  rgb uint8 [H,W,3], filter type 0 on every row, tEXt chunks.
"""
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngError(ValueError):
    pass


def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path, rgb, text=None):
    """rgb: uint8 [H,W,3]. Filter type 0 on every row; tEXt chunks from `text`."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, c = rgb.shape
    assert c == 3
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    out = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    for k, v in (text or {}).items():
        out += _chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1"))
    out += _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(out)


def read_png(path):
    """Returns (uint8 [H,W,C], {tEXt key: value}) for 8-bit, non-interlaced gray/RGB/RGBA PNGs."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != SIGNATURE:
        raise PngError("%s: not a PNG file" % path)
    pos, idat, text = 8, b"", {}
    w = h = ctype = None
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if zlib.crc32(tag + body) & 0xFFFFFFFF != crc:
            raise PngError("%s: bad CRC in %s" % (path, tag))
        pos += 12 + n
        if tag == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or interlace != 0 or ctype not in (0, 2, 6):
                raise PngError("%s: only 8-bit non-interlaced gray/RGB/RGBA PNGs are supported" % path)
        elif tag == b"IDAT":
            idat += body
        elif tag == b"tEXt":
            k, v = body.split(b"\x00", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif tag == b"IEND":
            break
    if w is None:
        raise PngError("%s: no IHDR chunk" % path)
    bpp = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    img = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        if f in (0, 2):
            cur = (line + (prev if f == 2 else 0)) & 255
        else:  # Sub, Average, Paeth depend on the already decoded left neighbour
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 255
        img[y] = cur
        prev = cur
    return img.reshape(h, w, bpp), text
