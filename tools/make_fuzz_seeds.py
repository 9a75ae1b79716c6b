#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets under tests/fuzz/corpus/<target>/.

Usage: /usr/bin/python3 tools/make_fuzz_seeds.py [CORPUS_DIR]   (default: tests/fuzz/corpus)

Needs torch (checkpoint and pickle seeds) and numpy (.npy seeds); PNG, JPEG, BMP, GIF and
safetensors files are written by hand here (no PIL / safetensors package needed). Every seed is
tiny (a few KB at most) and deterministic: rerunning the script rewrites the same bytes (torch's
zip writer included), so the committed corpus can be checked against it. charbpe/ is kept as is
(its seeds are hand-written prompts). Seeds aim at the paths that the parsers branch on: each
format's variants (dtypes, bit depths, colour types, pickle protocols, zip64...), and a few files
that must be refused (truncated, wrong magic), so that mutations start near both sides.
"""
import collections
import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
import zlib

import numpy as np
import torch

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz", "corpus")
TARGETS = ["npy", "safetensors", "torch_checkpoint", "pickle", "image", "config"]
MAX_SEED = 4096  # bytes per seed; all corpora together stay far below 300 KB


def out(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= MAX_SEED, f"{target}/{name} is {len(data)} bytes"
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------- npy

def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def npy_seeds():
    rng = np.random.default_rng(7)
    out("npy", "i32_2x3.npy", npy_bytes(np.arange(6, dtype="<i4").reshape(2, 3)))
    out("npy", "i64_codes.npy", npy_bytes(rng.integers(0, 16384, size=(2, 4, 4), dtype="<i8")))
    out("npy", "f32_vec.npy", npy_bytes(rng.standard_normal(5).astype("<f4")))
    out("npy", "i32_scalar.npy", npy_bytes(np.array(42, dtype="<i4")))
    out("npy", "i32_empty.npy", npy_bytes(np.zeros((0, 3), dtype="<i4")))
    out("npy", "fortran.npy", npy_bytes(np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3))))
    out("npy", "big_endian.npy", npy_bytes(np.arange(4, dtype=">i4")))
    out("npy", "u8.npy", npy_bytes(np.arange(4, dtype="u1")))
    out("npy", "i64_out_of_range.npy", npy_bytes(np.array([0, 2**40], dtype="<i8")))
    # format 2.0 and 3.0 headers (4-byte header length; 3.0 allows UTF-8 in the header)
    b = io.BytesIO()
    np.lib.format.write_array(b, np.arange(3, dtype="<i4"), version=(2, 0))
    out("npy", "v2.npy", b.getvalue())
    b = io.BytesIO()
    np.lib.format.write_array(b, np.arange(3, dtype="<i4"), version=(3, 0))
    out("npy", "v3.npy", b.getvalue())
    out("npy", "truncated.npy", npy_bytes(np.arange(8, dtype="<i4"))[:-5])


# ---------------------------------------------------------------------------------- safetensors

def safetensors_bytes(tensors, metadata=None, pad_to=8):
    """tensors: name -> (dtype string, shape, raw bytes). Offsets in insertion order."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    f32 = np.arange(6, dtype="<f4").tobytes()
    cfg = {"stage1": {"type": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
                      "in_channels": 3, "out_ch": 3, "z_channels": 32, "resolution": 16, "embed_dim": 8,
                      "n_embed": 16, "code_shape": [8, 8, 1], "shared_codebook": True}}
    meta = {"format": "hwaga", "version": "1", "config": json.dumps(cfg)}
    out("safetensors", "model.safetensors", safetensors_bytes(
        {"stage1.quantize.embedding.weight": ("F32", (2, 3), f32),
         "stage1.encoder.conv_in.bias": ("BF16", (4,), bytes(range(8)))}, meta))
    out("safetensors", "dtypes.safetensors", safetensors_bytes(
        {"a": ("F16", (2,), b"\x00\x3c\x00\xc0"), "b": ("I64", (1,), struct.pack("<q", -5)),
         "c": ("I32", (2, 1), struct.pack("<2i", 1, 2)), "d": ("U8", (3,), b"\x01\x02\x03")}, meta))
    out("safetensors", "unsupported_dtypes.safetensors", safetensors_bytes(
        {"e": ("BOOL", (1,), b"\x01"), "f": ("F64", (1,), struct.pack("<d", 1.5))}, meta))
    out("safetensors", "scalar_and_empty.safetensors", safetensors_bytes(
        {"s": ("F32", (), struct.pack("<f", 3.0)), "z": ("F32", (0, 4), b"")}, meta))
    out("safetensors", "no_metadata.safetensors", safetensors_bytes({"w": ("F32", (3,), f32[:12])}))
    out("safetensors", "unaligned.safetensors", safetensors_bytes(
        {"u": ("U8", (1,), b"\x07"), "w": ("F32", (2,), f32[:8])}, meta, pad_to=1))
    out("safetensors", "wrong_format.safetensors", safetensors_bytes(
        {"w": ("F32", (1,), f32[:4])}, {"format": "pt", "version": "1"}))
    out("safetensors", "truncated.safetensors", safetensors_bytes({"w": ("F32", (6,), f32)})[:-3])


# ---------------------------------------------------------------------------------- torch / pickle

def torch_bytes(obj):
    b = io.BytesIO()
    torch.save(obj, b)  # into memory: the archive's folder is "archive"
    return b.getvalue()


def torch_seeds():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 3, generator=g)
    b = torch.arange(3, dtype=torch.float32)
    out("torch_checkpoint", "state_dict.pt", torch_bytes(collections.OrderedDict([("w", w), ("b", b)])))
    out("torch_checkpoint", "nested.ckpt", torch_bytes({
        "state_dict": collections.OrderedDict([("enc.w", w), ("enc.b", b)]),
        "epoch": 3, "global_step": 1200, "lr": 1.5e-4, "name": "tiny", "flags": [True, None, (1, 2)]}))
    out("torch_checkpoint", "dtypes.pt", torch_bytes({
        "h": torch.ones(2, dtype=torch.float16), "bf": torch.ones(2, dtype=torch.bfloat16),
        "i": torch.arange(3, dtype=torch.int64), "i32": torch.arange(2, dtype=torch.int32),
        "u": torch.arange(4, dtype=torch.uint8), "m": torch.tensor([True, False]), "s": torch.tensor(2.5)}))
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out("torch_checkpoint", "views.pt", torch_bytes({
        "base": base, "t": base.t(), "row": base[1], "col": base[:, 2], "alias": base,
        "p": torch.nn.Parameter(torch.ones(2))}))
    # A non-tensor object outside the state_dict: the unpickler keeps it as a placeholder.
    out("torch_checkpoint", "with_object.ckpt", torch_bytes({
        "state_dict": {"w": b}, "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1).state_dict(),
        "cls": collections.Counter("ab")}))
    # The legacy (pre-1.6, not a zip) format: must be refused with a clear error. No tensor in it:
    # legacy storage keys are memory addresses, which would make the seed differ on every run.
    b2 = io.BytesIO()
    torch.save({"epoch": 3, "name": "legacy"}, b2, _use_new_zipfile_serialization=False)
    out("torch_checkpoint", "legacy.pt", b2.getvalue())
    # zip64 extra fields and a deflated entry, re-zipped with Python's writer.
    src = zipfile.ZipFile(io.BytesIO(torch_bytes({"w": w})))
    for tag, kw in [("zip64", {"force_zip64": True}), ("deflated", {})]:
        zb = io.BytesIO()
        with zipfile.ZipFile(zb, "w", compression=zipfile.ZIP_STORED) as z:
            for info in src.infolist():
                data = src.read(info.filename)
                zi = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
                if tag == "deflated" and info.filename.endswith("data.pkl"):
                    zi.compress_type = zipfile.ZIP_DEFLATED
                with z.open(zi, "w", **kw) as f:
                    f.write(data)
        out("torch_checkpoint", f"{tag}.pt", zb.getvalue())
    return src.read([n for n in src.namelist() if n.endswith("data.pkl")][0])


def pickle_seeds(torch_data_pkl):
    obj = {"a": [1, -2, 2**40, 2**70, 1.5, "t\u00e9xt", b"\x00\x01", None, True, (1, (2, 3)), {4, 5}],
           "b": collections.OrderedDict([("x", 0)]), "c": frozenset([1])}
    for proto in range(0, 6):
        out("pickle", f"p{proto}.pkl", pickle.dumps(obj, protocol=proto))
    shared = [1, 2]
    out("pickle", "memo.pkl", pickle.dumps({"x": shared, "y": shared, "z": [shared, shared]}, protocol=2))
    cyc = []
    cyc.append(cyc)
    out("pickle", "cycle.pkl", pickle.dumps(cyc, protocol=4))
    # Globals that must never be called: kept as placeholders.
    out("pickle", "global.pkl", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    out("pickle", "torch_data.pkl", torch_data_pkl)
    out("pickle", "truncated.pkl", pickle.dumps(obj, protocol=4)[:40])


# ---------------------------------------------------------------------------------- images

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(w, h, color_type, bit_depth, rows, extra_before=(), extra_after=(), plte=None, trns=None,
              interlace=0, idat_split=1):
    """rows: list of raw scanline bytes (without the filter byte); filters cycle 0..4."""
    if interlace:
        raw = adam7(w, h, rows, color_type, bit_depth)
    else:
        raw = b"".join(bytes([y % 5]) + png_filter(row, rows[y - 1] if y else None, y % 5, color_type, bit_depth)
                       for y, row in enumerate(rows))
    z = zlib.compress(raw, 9)
    s = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace))
    for c in extra_before:
        s += c
    if plte:
        s += png_chunk(b"PLTE", plte)
    if trns:
        s += png_chunk(b"tRNS", trns)
    step = max(1, -(-len(z) // idat_split))
    for i in range(0, len(z), step):
        s += png_chunk(b"IDAT", z[i:i + step])
    for c in extra_after:
        s += c
    return s + png_chunk(b"IEND", b"")


def bytes_per_pixel(color_type, bit_depth):
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    return max(1, ch * bit_depth // 8)


def png_filter(row, prev, ftype, color_type, bit_depth):
    bpp = bytes_per_pixel(color_type, bit_depth)
    prev = prev or bytes(len(row))
    o = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            p = 0
        elif ftype == 1:
            p = a
        elif ftype == 2:
            p = b
        elif ftype == 3:
            p = (a + b) // 2
        else:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        o.append((x - p) & 0xFF)
    return bytes(o)


def adam7(w, h, rows, color_type, bit_depth):
    """Interlaced data for 8-bit-or-more images (rows: full scanlines), filter 0 everywhere."""
    bpp = bytes_per_pixel(color_type, bit_depth)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        for y in range(y0, h, dy):
            line = b"".join(rows[y][x * bpp:(x + 1) * bpp] for x in range(x0, w, dx))
            if line:
                raw += b"\x00" + line
    return raw


def image_rows(w, h, ch, seed, depth=8):
    r = np.random.default_rng(seed)
    a = r.integers(0, 256 if depth == 8 else 65536, size=(h, w * ch))
    if depth == 16:
        return [b"".join(struct.pack(">H", int(v)) for v in row) for row in a]
    return [bytes(int(v) for v in row) for row in a]


def itxt(key, text, lang=b"", compressed=False):
    body = text.encode()
    if compressed:
        body = zlib.compress(body)
    return png_chunk(b"iTXt", key + b"\x00" + bytes([1 if compressed else 0, 0]) + lang + b"\x00" + b"\x00" + body)


def jpeg_bytes(w, h, comps, seed, restart=0, coef_range=6):
    """A baseline JPEG, written here from scratch: quantised DCT coefficients are drawn at random
    (small, so every block has a few AC terms), Huffman tables are flat (every DC category 4 bits,
    every AC symbol 8 bits: valid canonical codes, not optimal ones). comps: [(id, h, v)]."""
    r = np.random.default_rng(seed)
    hmax = max(c[1] for c in comps)
    vmax = max(c[2] for c in comps)
    mcux, mcuy = -(-w // (8 * hmax)), -(-h // (8 * vmax))
    dc_syms = list(range(12))
    ac_syms = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]
    dc_code = {s: (i, 4) for i, s in enumerate(dc_syms)}
    ac_code = {s: (i, 8) for i, s in enumerate(ac_syms)}

    def dht(tc_th, syms, length):
        bits = [0] * 16
        bits[length - 1] = len(syms)
        return bytes([tc_th]) + bytes(bits) + bytes(syms)

    def seg(marker, body):
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    s = b"\xFF\xD8" + seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    s += seg(0xDB, b"\x00" + bytes([1 + (i % 7) for i in range(64)]))
    s += seg(0xC0, struct.pack(">BHHB", 8, h, w, len(comps)) + b"".join(bytes([cid, (hh << 4) | vv, 0]) for cid, hh, vv in comps))
    s += seg(0xC4, dht(0x00, dc_syms, 4) + dht(0x10, ac_syms, 8))
    if restart:
        s += seg(0xDD, struct.pack(">H", restart))
    s += seg(0xDA, bytes([len(comps)]) + b"".join(bytes([cid, 0x00]) for cid, _, _ in comps) + b"\x00\x3F\x00")

    bits = []

    def put(code, n):
        for i in range(n - 1, -1, -1):
            bits.append((code >> i) & 1)

    def put_value(v):
        size = 0 if v == 0 else int(abs(v)).bit_length()
        return size, (v if v >= 0 else v + (1 << size) - 1)

    def flush():
        while len(bits) % 8:
            bits.append(1)
        o = bytearray()
        for i in range(0, len(bits), 8):
            byte = int("".join(map(str, bits[i:i + 8])), 2)
            o.append(byte)
            if byte == 0xFF:
                o.append(0)
        bits.clear()
        return bytes(o)

    scan = b""
    pred = [0] * len(comps)
    n_mcu = 0
    for my in range(mcuy):
        for mx in range(mcux):
            if restart and n_mcu and n_mcu % restart == 0:
                scan += flush() + bytes([0xFF, 0xD0 + ((n_mcu // restart - 1) % 8)])
                pred = [0] * len(comps)
            n_mcu += 1
            for ci, (cid, hh, vv) in enumerate(comps):
                for _ in range(hh * vv):
                    dc = int(r.integers(-40, 41))
                    size, val = put_value(dc - pred[ci])
                    pred[ci] = dc
                    put(dc_code[size][0], 4)
                    put(val, size)
                    coefs = [0] * 63
                    for k in range(int(r.integers(0, 6))):
                        coefs[int(r.integers(0, 63))] = int(r.integers(-coef_range, coef_range + 1)) or 1
                    last = max([i for i, c in enumerate(coefs) if c] or [-1])
                    run = 0
                    for i in range(last + 1):
                        if coefs[i] == 0:
                            run += 1
                            continue
                        while run > 15:
                            put(ac_code[0xF0][0], 8)
                            run -= 16
                        size, val = put_value(coefs[i])
                        put(ac_code[(run << 4) | size][0], 8)
                        put(val, size)
                        run = 0
                    if last < 62:
                        put(ac_code[0x00][0], 8)
    scan += flush()
    return s + scan + b"\xFF\xD9"


def bmp_bytes(w, h, bpp, seed, top_down=False):
    r = np.random.default_rng(seed)
    palette = b""
    if bpp == 8:
        palette = bytes(int(v) for v in r.integers(0, 256, size=256 * 4))
    row_bytes = (w * bpp // 8 + 3) & ~3
    pix = b""
    for y in range(h):
        row = bytes(int(v) for v in r.integers(0, 256, size=w * bpp // 8))
        pix += row + bytes(row_bytes - len(row))
    off = 14 + 40 + len(palette)
    hdr = b"BM" + struct.pack("<IHHI", off + len(pix), 0, 0, off)
    hdr += struct.pack("<IiiHHIIiiII", 40, w, -h if top_down else h, 1, bpp, 0, len(pix), 2835, 2835,
                       256 if bpp == 8 else 0, 0)
    return hdr + palette + pix


def gif_bytes(w, h, seed, frames=1, transparent=False):
    """GIF with a 4-colour table. LZW output without dictionary growth: a clear code after every
    second pixel keeps codes at 3 bits, which every decoder must accept."""
    r = np.random.default_rng(seed)
    s = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x81, 0, 0)  # global table of 4 colours
    s += bytes(int(v) for v in r.integers(0, 256, size=12))
    for f in range(frames):
        if transparent:
            s += b"\x21\xF9\x04\x01\x00\x00\x02\x00"  # graphic control: colour 2 is transparent
        s += b"\x2C" + struct.pack("<HHHHB", 0, 0, w, h, 0)
        codes = [4]
        px = [int(v) for v in r.integers(0, 4, size=w * h)]
        for i, p in enumerate(px):
            if i and i % 2 == 0:
                codes.append(4)
            codes.append(p)
        codes.append(5)
        acc = nbits = 0
        data = bytearray()
        for c in codes:
            acc |= c << nbits
            nbits += 3
            while nbits >= 8:
                data.append(acc & 0xFF)
                acc >>= 8
                nbits -= 8
        if nbits:
            data.append(acc & 0xFF)
        s += b"\x02"
        for i in range(0, len(data), 255):
            blk = data[i:i + 255]
            s += bytes([len(blk)]) + bytes(blk)
        s += b"\x00"
    return s + b"\x3B"


def image_seeds():
    t = [png_chunk(b"tEXt", b"prompt\x00a cat on a mat"), png_chunk(b"tEXt", b"Caf\xe9\x00cr\xe8me")]
    z = [png_chunk(b"zTXt", b"hwaga.seed\x00\x00" + zlib.compress(b"1234"))]
    out("image", "rgb_16x16.png", png_bytes(16, 16, 2, 8, image_rows(16, 16, 3, 1), extra_before=t))
    out("image", "rgba_20x16.png", png_bytes(20, 16, 6, 8, image_rows(20, 16, 4, 2), extra_after=z))
    out("image", "gray_3x5.png", png_bytes(3, 5, 0, 8, image_rows(3, 5, 1, 3),
                                           extra_before=[itxt(b"caption", "\uace0\uc591\uc774")]))
    out("image", "graya_4x4.png", png_bytes(4, 4, 4, 8, image_rows(4, 4, 2, 4),
                                            extra_after=[itxt(b"note", "zipped \u00e9", b"ko", True)]))
    out("image", "palette_6x4.png", png_bytes(6, 4, 3, 8, [bytes(i % 4 for i in range(6))] * 4,
                                              plte=bytes(range(12)), trns=b"\x00\x80"))
    out("image", "rgb16_4x3.png", png_bytes(4, 3, 2, 16, image_rows(4, 3, 3, 5, depth=16)))
    out("image", "gray1bit_8x2.png", png_bytes(8, 2, 0, 1, [b"\xA5", b"\x3C"]))
    out("image", "interlaced_9x7.png", png_bytes(9, 7, 2, 8, image_rows(9, 7, 3, 6), interlace=1, idat_split=3))
    out("image", "truncated.png", png_bytes(16, 16, 2, 8, image_rows(16, 16, 3, 1))[:300])
    out("image", "gray_16x16.jpg", jpeg_bytes(16, 16, [(1, 1, 1)], 7))
    out("image", "ycc420_24x16.jpg", jpeg_bytes(24, 16, [(1, 2, 2), (2, 1, 1), (3, 1, 1)], 8))
    out("image", "ycc444_restart_13x9.jpg", jpeg_bytes(13, 9, [(1, 1, 1), (2, 1, 1), (3, 1, 1)], 9, restart=1))
    out("image", "truncated.jpg", jpeg_bytes(16, 16, [(1, 1, 1)], 7)[:-20])
    out("image", "rgb24_5x3.bmp", bmp_bytes(5, 3, 24, 10))
    out("image", "bgra32_topdown_4x4.bmp", bmp_bytes(4, 4, 32, 11, top_down=True))
    out("image", "pal8_7x2.bmp", bmp_bytes(7, 2, 8, 12))
    out("image", "gif_6x5.gif", gif_bytes(6, 5, 13))
    out("image", "gif_2frames_transparent_4x4.gif", gif_bytes(4, 4, 14, frames=2, transparent=True))


# ---------------------------------------------------------------------------------- configs

RQ_STAGE1_YAML = """arch:
  type: rq-vae
  code_hier: 1
  hparams: {bottleneck_type: rq, embed_dim: 256, n_embed: 16384, latent_shape: [8, 8, 256], code_shape: [8, 8, 4],
            shared_codebook: true, decay: 0.99, restart_unused_codes: true, loss_type: mse, latent_loss_weight: 0.25}
  ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,
             ch_mult: [1, 1, 2, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [8], dropout: 0.0}
  checkpointing: true
"""

RQ_STAGE1_BLOCK_YAML = """arch:
  type: rq-vae
  code_hier: 1
  hparams:
    bottleneck_type: rq
    embed_dim: 64
    n_embed: 2048
    latent_shape: [4, 4, 64]
    code_shape: [4, 4, 2]
    shared_codebook: true
  ddconfig:
    double_z: false
    z_channels: 64
    resolution: 32
    in_channels: 3
    out_ch: 3
    ch: 32
    ch_mult: [1, 2, 2, 4]
    num_res_blocks: 1
    attn_resolutions: [4]
    dropout: 0.0
"""

DALLE_YAML = """dataset:
  tokenizer_type: CharBPE
  context_length: 64
stage1:
  type: vqgan
  embed_dim: 256
  n_embed: 16384
  hparams:
    double_z: False
    z_channels: 256
    resolution: 256
    in_channels: 3
    out_ch: 3
    ch: 128
    ch_mult: [1, 1, 2, 2, 4]
    num_res_blocks: 2
    attn_resolutions: [16]
    pdrop: 0.0
stage2:
  type: transformer1d
  vocab_size_txt: 16384
  vocab_size_img: 16384
  hparams:
    embed_dim: 1536
    n_layers: 42
    n_heads: 24
    n_dense_layers: 42
    ctx_len_img: 256
    ctx_len_txt: 64
    embd_pdrop: 0.0
    resid_pdrop: 0.0
    attn_pdrop: 0.0
    mlp_bias: True
    attn_bias: True
    gelu_use_approx: False
"""

RQ_STAGE2_YAML = """dataset:
  dataset: cc3m
  txt_tok_name: bpe16k_huggingface
  vocab_size_txt: 16384
  vocab_size: 16384
  context_length: 32
arch:
  type: rq-transformer
  block_size: [ 8, 8, 4 ]
  embed_dim: 1280
  input_embed_dim: 256
  shared_tok_emb: true
  shared_cls_emb: true
  input_emb_vqvae: true
  head_emb_vqvae: true
  cumsum_depth_ctx: true
  vocab_size_cond: 16384
  block_size_cond: 32
  body:
    n_layer: 26
    block:
      n_head: 20
  head:
    n_layer: 4
    block:
      n_head: 20
experiment:
  sample:
    top_k: 16384
    top_p: 0.7
"""

RQ_STAGE2_CLASS_YAML = """dataset:
  vocab_size: [2048, 2048, 2048, 2048]
arch:
  type: rq-transformer
  block_size: [8, 8, 4]
  embed_dim: 64
  input_embed_dim: 16
  shared_tok_emb: true
  shared_cls_emb: true
  input_emb_vqvae: true
  head_emb_vqvae: true
  cumsum_depth_ctx: true
  vocab_size_cond: 1000
  block_size_cond: 1
  body: {n_layer: 2, block: {n_head: 4, embd_pdrop: 0.0}}
  head: {n_layer: 1, block: {n_head: 4}}
"""


def tiny_charbpe(context_length=8, lowercase=True):
    vocab = ["[PAD]", "[UNK]", "a", "c", "t", "o", "n", ",", "!", "</w>", "a</w>", "t</w>", "n</w>", ",</w>",
             "!</w>", "at</w>", "cat</w>", "ca", "on</w>", "\uace0", "\uc591</w>"]
    merges = ["a t</w>", "c a", "ca t</w>", "o n</w>"]
    return {"type": "charbpe", "context_length": context_length, "lowercase": lowercase, "unk_token": "[UNK]",
            "pad_token": "[PAD]", "end_of_word_suffix": "</w>", "vocab": vocab, "merges": merges}


def config_seeds():
    out("config", "a_rq_stage1.yaml", "a" + RQ_STAGE1_YAML)
    out("config", "r_rq_stage1_block.yaml", "r" + RQ_STAGE1_BLOCK_YAML)
    out("config", "v_dalle.yaml", "v" + DALLE_YAML)
    out("config", "a_dalle.yaml", "a" + DALLE_YAML)
    out("config", "M_dalle.yaml", "M" + DALLE_YAML)
    out("config", "R_cc3m.yaml", "R" + RQ_STAGE2_YAML)
    out("config", "R_class.yaml", "R" + RQ_STAGE2_CLASS_YAML)
    out("config", "a_not_yaml.yaml", "a{arch: [\n  - 'x\n")
    s1_rq = {"type": "rq-vae", "ch": 128, "ch_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [8],
             "in_channels": 3, "out_ch": 3, "z_channels": 256, "resolution": 256, "embed_dim": 256,
             "n_embed": 16384, "code_shape": [8, 8, 4], "shared_codebook": True}
    s1_vq = {"type": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
             "in_channels": 3, "out_ch": 3, "z_channels": 32, "resolution": 16, "embed_dim": 8,
             "n_embed": 16, "code_shape": [8, 8, 1], "shared_codebook": True}
    out("config", "1_rq.json", "1" + json.dumps(s1_rq))
    out("config", "1_vqgan.json", "1" + json.dumps(s1_vq))
    s2_rq = {"type": "rq-transformer", "embed_dim": 64, "n_layer_body": 2, "n_layer_head": 1, "n_head": 4,
             "block_size": [8, 8, 4], "vocab_size": 2048, "vocab_size_cond": 16384, "block_size_cond": 32,
             "input_embed_dim": 16, "shared_tok_emb": True, "shared_cls_emb": True, "input_emb_vqvae": True,
             "head_emb_vqvae": True, "cumsum_depth_ctx": True}
    s2_gpt = {"type": "mindalle-gpt", "vocab_size_txt": 16384, "vocab_size_img": 16384, "embed_dim": 1536,
              "n_layers": 42, "n_heads": 24, "ctx_len_txt": 64, "ctx_len_img": 256, "mlp_bias": True,
              "attn_bias": True, "gelu_use_approx": False}
    out("config", "2_rq.json", "2" + json.dumps(s2_rq))
    out("config", "2_gpt.json", "2" + json.dumps(s2_gpt))
    out("config", "T_charbpe.json", "T" + json.dumps(tiny_charbpe(), ensure_ascii=False))
    out("config", "T_charbpe_cased.json", "T" + json.dumps(tiny_charbpe(3, False)))
    out("config", "T_spm_bad_model.json", "T" + json.dumps({"type": "spm", "context_length": 8, "model": "AAAA"}))


def main():
    for t in TARGETS:
        shutil.rmtree(os.path.join(ROOT, t), ignore_errors=True)
        os.makedirs(os.path.join(ROOT, t))
    npy_seeds()
    safetensors_seeds()
    data_pkl = torch_seeds()
    pickle_seeds(data_pkl)
    image_seeds()
    config_seeds()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(ROOT) for f in fs)
    print(f"seeds written under {ROOT}: {total} bytes in all")
    assert total < 300 * 1024


if __name__ == "__main__":
    main()
