"""Fixtures for the stage-1 training tests (tests/parity/test_train_stage1.py,
tests/cli/test_train_tokenizer.py, tools/bench_train_stage1.py). Not a test itself; numpy only.

  TINY                      a tiny RQ-VAE config (16x16 -> 8x8x2 codes, K 16, E 8): every kind
                            of module (res blocks with and without nin_shortcut, attention,
                            down/upsampling), ~740k parameters
  write_config(path, cfg)   the config as the JSON hwaga train-tokenizer --config reads
  make_shards(dir, ...)     WebDataset tars (Python's tarfile) of PNG pictures (smooth colour
                            gradients with a few flat rectangles) with .txt captions
  read_safetensors(path)    -> ({name: numpy array}, metadata), parsed by hand (no safetensors
                            package in Debian)
"""
import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np

TINY = {"type": "rq-vae", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
        "in_channels": 3, "out_ch": 3, "z_channels": 32, "resolution": 16, "embed_dim": 8, "n_embed": 16,
        "code_shape": [8, 8, 2], "shared_codebook": True}


def write_config(path, cfg=None):
    with open(path, "w") as f:
        json.dump({"stage1": cfg or TINY}, f)
    return path


def png_bytes(rgb):
    """uint8 [H,W,3] -> PNG file bytes (no filter, zlib)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def picture(seed, size):
    """A deterministic picture: smooth gradients and flat rectangles, uint8 [size,size,3]."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    f = rng.uniform(0.5, 2.0, size=3)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * f[c] * (x * np.cos(ph[c]) + y * np.sin(ph[c])) + ph[c])
                    for c in range(3)], -1)
    for _ in range(2):
        x0, y0 = rng.randint(0, size // 2, size=2)
        w0, h0 = rng.randint(size // 4, size // 2 + 1, size=2)
        img[y0:y0 + h0, x0:x0 + w0] = rng.uniform(0, 1, size=3)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def make_shards(folder, n_shards=2, per_shard=8, size=16, seed0=0, prefix="train"):
    """folder/<prefix>-0000i.tar with per_shard samples each; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(n_shards):
        p = os.path.join(folder, "%s-%05d.tar" % (prefix, s))
        with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(per_shard):
                key = "%s%05d" % (prefix, s * per_shard + i)
                for ext, data in (("png", png_bytes(picture(seed0 + s * per_shard + i, size))),
                                  ("txt", ("picture %d" % (s * per_shard + i)).encode())):
                    ti = tarfile.TarInfo("%s.%s" % (key, ext))
                    ti.size = len(data)
                    ti.mtime = 0
                    tar.addfile(ti, io.BytesIO(data))
        paths.append(p)
    return paths


_DT = {"F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "F16": np.float16}


def read_safetensors(path):
    """-> (tensors {name: np.ndarray}, metadata {str: str})."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[base + s:base + e], _DT[v["dtype"]]).reshape(v["shape"]).copy()
    return out, meta


def compare_grads(tc, got, ref, what="grad"):
    """Asserts hwaga's gradients `got` match PyTorch's `ref` ({name: numpy}, the same names):
    |g_hwaga - g_torch| <= 2e-4 max|g_torch| (that tensor) + 2e-4 |g_torch| + 1e-6 max|g| (all
    tensors); see test_train_stage1.py for why. Returns the worst |diff| / max|g| of a tensor."""
    tc.assertEqual(sorted(got), sorted(ref), "%s: the two sides have other tensors" % what)
    gall = max(np.abs(g).max() for g in ref.values())
    worst = 0.0
    for name, g in ref.items():
        g = g.astype(np.float64)
        h = got[name].astype(np.float64)
        tc.assertEqual(h.shape, g.shape, name)
        gm = np.abs(g).max()
        err = np.abs(h - g)
        tol = 2e-4 * gm + 2e-4 * np.abs(g) + 1e-6 * gall
        if (err > tol).any():
            i = np.unravel_index(np.argmax(err - tol), g.shape)
            tc.fail("%s %s: hwaga %r, torch %r at %s (max |g| %r)" % (what, name, h[i], g[i], i, gm))
        if gm > 1e-6 * gall:
            worst = max(worst, err.max() / gm)
    return worst


def adam_reference(tensors, before, grad, lr, betas=(0.5, 0.9)):
    """torch.optim.Adam (eps 1e-8, no decay) applied once to `before` + name with `grad` + name
    gradients from hwaga's dump: {name: numpy after}."""
    import torch
    names = [k[len(grad):] for k in tensors if k.startswith(grad)]
    params = []
    for n in names:
        p = torch.nn.Parameter(torch.from_numpy(tensors[before + n].copy()))
        p.grad = torch.from_numpy(tensors[grad + n].copy())
        params.append(p)
    torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8, weight_decay=0).step()
    return {n: p.detach().numpy() for n, p in zip(names, params)}
