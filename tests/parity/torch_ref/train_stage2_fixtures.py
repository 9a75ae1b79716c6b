"""Fixtures for the stage-2 training tests (tests/parity/test_train_stage2.py, tests/cli/test_train.py).

Not a test itself. Everything tiny and deterministic:
  make_stage1(dir)         a tiny random RQ-VAE model file (make_checkpoint.py --safetensors):
                           32x32 pictures -> codes 8x8x4, K 64, codebook vectors E 32
  make_shards(dir, n)      WebDataset tars of 32x32 PNG emoji-like pictures (coloured circles and
                           squares) with a .txt caption and a .json {"captions": [en, en, ko]}
  write_config(path, ...)  a stage-2 config JSON that pairs with make_stage1's model
  write_vocab(dir)         the tiny CharBPE vocabulary of tests/cli/t2i_testlib.py (85 ids)
"""
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
KOREAN = {"red": "빨간", "green": "초록", "blue": "파란", "yellow": "노란"}
SHAPES = {"circle": "원", "square": "네모"}


def make_stage1(folder, seed=0):
    """folder/model.safetensors: a tiny random RQ-VAE in hwaga's model-file format."""
    subprocess.run([PYTHON, os.path.join(HERE, "make_checkpoint.py"), "--kind", "rq-vae", "--size", "tiny",
                    "--seed", str(seed), "--out", folder, "--safetensors"], check=True, capture_output=True, timeout=300)
    return os.path.join(folder, "model.safetensors")


def png_bytes(rgb):
    """uint8 [H,W,3] -> PNG file bytes (no filter, zlib)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def picture(color, shape, size=32):
    img = np.full((size, size, 3), 255, np.uint8)
    y, x = np.mgrid[0:size, 0:size] + 0.5 - size / 2
    if shape == "circle":
        m = x * x + y * y < (size * 0.35) ** 2
    else:
        m = (abs(x) < size * 0.3) & (abs(y) < size * 0.3)
    img[m] = COLORS[color]
    return img


def items():
    return [(c, s) for c in COLORS for s in SHAPES]


def make_shards(folder, n_shards=2, groups=False):
    """n_shards tars holding the 8 (colour, shape) pictures, round-robin. Returns the paths.
    groups: the json names a sampling group per shape ("circle" / "square")."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(n_shards):
        p = os.path.join(folder, "shard-%05d.tar" % k)
        with tarfile.open(p, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i, (c, s) in enumerate(items()):
                if i % n_shards != k:
                    continue
                key = "emoji/%03d" % i
                caps = ["%s %s" % (c, s), "a %s %s" % (c, s), "%s %s" % (KOREAN[c], SHAPES[s])]
                meta = {"captions": caps, "group": s} if groups else {"captions": caps}
                for name, data in [(key + ".png", png_bytes(picture(c, s))), (key + ".txt", caps[0].encode()),
                                   (key + ".json", json.dumps(meta, ensure_ascii=False).encode())]:
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    ti.mtime = 0
                    tf.addfile(ti, io.BytesIO(data))
        paths.append(p)
    return paths


def write_config(path, vocab_size_cond=85, block_size_cond=8, embed_dim=32, n_layer_body=2, n_layer_head=1,
                 n_head=2, vocab_size=64, block_size=(8, 8, 4), input_embed_dim=32):
    cfg = {"type": "rq-transformer", "embed_dim": embed_dim, "n_layer_body": n_layer_body,
           "n_layer_head": n_layer_head, "n_head": n_head, "block_size": list(block_size), "vocab_size": vocab_size,
           "vocab_size_cond": vocab_size_cond, "block_size_cond": block_size_cond,
           "input_embed_dim": input_embed_dim}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def write_vocab(folder):
    sys.path.insert(0, os.path.join(HERE, "..", "..", "cli"))
    import t2i_testlib  # noqa: E402
    return t2i_testlib.write_tiny_vocab(folder)


# ---- safetensors by hand (no safetensors package) ----

_DT = {"F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "F16": np.float16}


def read_safetensors(path):
    """-> (tensors {name: np.ndarray}, metadata {str: str}); BF16 is widened to float32."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        raw = b[base + s:base + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, _DT[v["dtype"]])
        out[k] = a.reshape(v["shape"]).copy()
    return out, meta
