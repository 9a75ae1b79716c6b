#!/usr/bin/python3
"""Measures the quality of an emoji text-to-image model (hwaga's default model, issue 6 item 5).

  eval_quality.py --model M.safetensors --data /work/emoji-data [--split eval|train]
                  [--max-captions N] [-n PICS] [--seed S] [--lang en|ko|both] [--out report.json]
                  [--hwaga BIN] [--threads T]

Two measurements, both through the hwaga CLI (the model is loaded once per hwaga process):

1. Tokenizer reconstruction: the split's real pictures go through `hwaga encode -m M` and
   `hwaga decode -m M` (raw .npy output, turned into 8-bit exactly as hwaga's PNG writer does);
   PSNR in dB over RGB in [0,255] against the picture composited on white as hwaga does
   (v = rgb*a + 255*(1-a) in float), mean over pictures. A stage 1 whose resolution R is not 64
   sees a resized input (stb's cubic in hwaga); the reference is then area-resized to R here,
   which is close but not identical (the report says "reference_resized": true).
2. Prompt faithfulness: captions of the split (a seeded choice), drawn with one `hwaga gallery`
   run (English primary caption, and the first Hangul caption variant for the Korean score);
   every generated picture is matched to its k nearest real pictures among ALL pictures of both
   splits (32x32 RGB on white, L2). A hit at k: one of the k nearest has the same base emoji
   (the English name without its skin tone suffix) AND the same style as the prompt's record.
   Chance level: the same pictures scored against a fixed derangement of the prompts.
   A second space, "shape" (16x16 luminance, mean removed, unit norm), repeats the scores
   while ignoring colour and contrast.

Python standard library + numpy only (no PIL: PNGs are decoded here). See tools/emoji/README.md.
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
_TONE = r"(?:light|medium-light|medium|medium-dark|dark) skin tone"
TONE_SUFFIX = re.compile(r"(?:: |, )%s(?:, %s)*$" % (_TONE, _TONE))
PIXEL_SIZE = 32   # retrieval space "pixels": 32x32 RGB on white in [0,1], L2
SHAPE_SIZE = 16   # retrieval space "shape": 16x16 luminance, mean removed, unit norm, L2
KS = (1, 5)
RECON_CHUNK = 256  # pictures per hwaga encode/decode process (keeps the command line short)


class EvalError(Exception):
    """Bad input or a failed hwaga run; main() prints it and exits 1."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- PNG decoding (no PIL)
#
# All of PNG that the emoji sets and hwaga's writer use: colour types 0 (gray), 2 (RGB),
# 3 (palette), 4 (gray + alpha), 6 (RGBA); bit depths 1/2/4/8 (gray, palette) and 8/16 (others,
# 16-bit keeps the high byte); tRNS for palette, gray and RGB; all five row filters; chunk CRCs
# checked. Interlaced (Adam7) files are refused. The filters are undone for many pictures at
# once along anti-diagonals (pixel (y,x) depends on (y,x-1), (y-1,x) and (y-1,x-1) only), so
# thousands of 64x64 pictures decode in seconds with numpy.

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


class PngError(EvalError):
    pass


def parse_png(path, data=None):
    """Chunks of one PNG -> dict(w, h, depth, ctype, plte, trns, raw: decompressed filtered rows)."""
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PngError("%s: cannot read (%s)" % (path, e.strerror))
    if data[:8] != SIGNATURE:
        raise PngError("%s: not a PNG file (bad signature)" % path)
    pos, idat, info = 8, [], {"plte": None, "trns": None}
    while True:
        if pos + 8 > len(data):
            raise PngError("%s: truncated (no IEND chunk)" % path)
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + n > len(data):
            raise PngError("%s: truncated %s chunk" % (path, tag.decode("latin-1")))
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(tag + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise PngError("%s: bad CRC in the %s chunk" % (path, tag.decode("latin-1")))
        pos += 12 + n
        if tag == b"IHDR":
            if n != 13:
                raise PngError("%s: IHDR of %d bytes (expected 13)" % (path, n))
            w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", body)
            if ctype not in CHANNELS or depth not in DEPTHS[ctype]:
                raise PngError("%s: colour type %d with bit depth %d is not a valid PNG format" % (path, ctype, depth))
            if interlace != 0:
                raise PngError("%s: interlaced PNG (expected non-interlaced)" % path)
            if w == 0 or h == 0 or w > 16384 or h > 16384:
                raise PngError("%s: size %dx%d (expected 1..16384 per side)" % (path, w, h))
            info.update(w=w, h=h, depth=depth, ctype=ctype)
        elif tag == b"PLTE":
            if n % 3 or n == 0:
                raise PngError("%s: PLTE of %d bytes (expected a multiple of 3)" % (path, n))
            info["plte"] = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif tag == b"tRNS":
            info["trns"] = body
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if "w" not in info:
        raise PngError("%s: no IHDR chunk" % path)
    if info["ctype"] == 3 and info["plte"] is None:
        raise PngError("%s: palette picture without a PLTE chunk" % path)
    info["bpp"] = max(1, CHANNELS[info["ctype"]] * info["depth"] // 8)
    info["stride"] = (info["w"] * CHANNELS[info["ctype"]] * info["depth"] + 7) // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError("%s: bad compressed data (%s)" % (path, e))
    need = info["h"] * (info["stride"] + 1)
    if len(raw) < need:
        raise PngError("%s: %d bytes of pixel data (expected %d)" % (path, len(raw), need))
    rows = np.frombuffer(raw, np.uint8, count=need).reshape(info["h"], info["stride"] + 1)
    if rows[:, 0].max() > 4:
        raise PngError("%s: row filter type %d (expected 0-4)" % (path, int(rows[:, 0].max())))
    info["rows"] = rows
    return info


def unfilter(rows, bpp):
    """Undoes the PNG row filters. rows: uint8 [N,H,1+S] (filter byte first); returns uint8 [N,H,S]."""
    N, H, S1 = rows.shape
    S = S1 - 1
    P = (S + bpp - 1) // bpp                       # pixels per row (the last may be partial)
    ftype = rows[:, :, 0].astype(np.int16)        # [N,H]
    line = np.zeros((N, H, P * bpp), np.int16)
    line[:, :, :S] = rows[:, :, 1:]
    line = line.reshape(N, H, P, bpp)
    out = np.zeros((N, H + 1, P + 1, bpp), np.int16)  # a zero row above and a zero column left
    ys_all = np.arange(H)
    for d in range(H + P - 1):                     # anti-diagonal y + x = d
        ys = ys_all[max(0, d - P + 1):min(H, d + 1)]
        xs = d - ys
        raw = line[:, ys, xs, :]                   # [N,L,bpp]
        a = out[:, ys + 1, xs, :]                  # left
        b = out[:, ys, xs + 1, :]                  # up
        c = out[:, ys, xs, :]                      # up-left
        f = ftype[:, ys][:, :, None]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[:, ys + 1, xs + 1, :] = (raw + pred) & 255
    return out[:, 1:, 1:, :].reshape(N, H, P * bpp)[:, :, :S].astype(np.uint8)


def _samples(info, data):
    """Unfiltered bytes [H,S] -> samples [H,W,C] (uint16 for 16-bit, else uint8, sub-byte unpacked)."""
    w, h, depth, ch = info["w"], info["h"], info["depth"], CHANNELS[info["ctype"]]
    if depth == 16:
        return data.reshape(h, w * ch, 2).astype(np.uint16).dot(np.array([256, 1], np.uint16)).reshape(h, w, ch)
    if depth == 8:
        return data.reshape(h, w, ch)
    bits = np.unpackbits(data, axis=1).reshape(h, -1, depth)[:, :w, :]
    vals = bits.dot(1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    return vals.reshape(h, w, 1)


def to_rgba(info, data, path=""):
    """Unfiltered bytes [H,S] of one picture -> uint8 [H,W,4] (straight alpha)."""
    ctype, depth, trns = info["ctype"], info["depth"], info["trns"]
    s = _samples(info, data)
    h, w = s.shape[:2]
    rgba = np.full((h, w, 4), 255, np.uint8)
    if ctype == 3:
        idx = s[:, :, 0].astype(np.intp)
        plte = info["plte"]
        if idx.max() >= len(plte):
            raise PngError("%s: palette index %d past the %d PLTE entries" % (path, int(idx.max()), len(plte)))
        rgba[:, :, :3] = plte[idx]
        if trns is not None:
            alpha = np.full(256, 255, np.uint8)
            alpha[:len(trns)] = np.frombuffer(trns[:256], np.uint8)
            rgba[:, :, 3] = alpha[idx]
        return rgba
    if depth == 16:
        key = s
        s8 = (s >> 8).astype(np.uint8)
    else:
        key = s
        s8 = s if depth == 8 else (s.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
    if ctype in (0, 4):
        rgba[:, :, :3] = s8[:, :, :1]
        if ctype == 4:
            rgba[:, :, 3] = s8[:, :, 1]
    else:
        rgba[:, :, :3] = s8[:, :, :3]
        if ctype == 6:
            rgba[:, :, 3] = s8[:, :, 3]
    if trns is not None and ctype in (0, 2):
        want = np.array(struct.unpack(">%dH" % (len(trns) // 2), trns[:len(trns) // 2 * 2]), np.uint16)
        if len(want) == (1 if ctype == 0 else 3):
            rgba[np.all(key.astype(np.uint16) == want, axis=2), 3] = 0
    return rgba


def read_pngs(paths):
    """Decodes many PNGs (pictures of the same layout are unfiltered together): list of uint8 [H,W,4]."""
    infos = [parse_png(p) for p in paths]
    groups = {}
    for i, info in enumerate(infos):
        groups.setdefault((info["h"], info["stride"], info["bpp"]), []).append(i)
    out = [None] * len(paths)
    for (_h, _s, bpp), idx in groups.items():
        for c0 in range(0, len(idx), 1024):       # bounded memory
            part = idx[c0:c0 + 1024]
            data = unfilter(np.stack([infos[i]["rows"] for i in part]), bpp)
            for j, i in enumerate(part):
                out[i] = to_rgba(infos[i], data[j], paths[i])
                infos[i]["rows"] = None
    return out


def read_png(path):
    return read_pngs([path])[0]


def on_white(rgba):
    """uint8 [...,H,W,4] -> float32 [...,H,W,3] in [0,255]: v = rgb*a + 255*(1-a), a = alpha/255,
    in float32 exactly as hwaga's loader (src/io/image.cpp) composites before encoding."""
    a = rgba[..., 3:4].astype(np.float32) / np.float32(255.0)
    return rgba[..., :3].astype(np.float32) * a + np.float32(255.0) * (np.float32(1.0) - a)


def to_pixels8(x):
    """Decoder output in [-1,1] (f32 [N,3,R,R]) -> uint8 [N,R,R,3] as hwaga's PNG writer rounds it."""
    x = np.asarray(x, np.float32)
    v = np.clip(x * np.float32(0.5) + np.float32(0.5), np.float32(0), np.float32(1)) * np.float32(255) + np.float32(0.5)
    return v.astype(np.uint8).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- resizing, features, retrieval

def area_matrix(n_in, n_out):
    """[n_out, n_in] weights of an area (box) resize: each output pixel averages the input span it covers."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            m[o, i] = min(hi, i + 1) - max(lo, i)
        m[o] /= m[o].sum()
    return m


def resize_area(imgs, size):
    """float [N,H,W,C] -> float32 [N,size,size,C] by area averaging (exact 2x2 means for 64 -> 32)."""
    imgs = np.asarray(imgs, np.float64)
    _, H, W, C = imgs.shape
    if H == size and W == size:
        return imgs.astype(np.float32)
    ah, aw = area_matrix(H, size), area_matrix(W, size)
    rows = np.matmul(ah, imgs.reshape(len(imgs), H, W * C)).reshape(len(imgs), size, W, C)  # [N,size,W,C]
    return np.matmul(aw, rows).astype(np.float32)                                             # [N,size,size,C]


def pixel_features(imgs):
    """RGB on white in [0,255], float [N,H,W,3] -> [N, 32*32*3] in [0,1] (space "pixels")."""
    return (resize_area(imgs, PIXEL_SIZE) / np.float32(255.0)).reshape(len(imgs), -1)


def shape_features(imgs):
    """[N,H,W,3] -> [N, 16*16]: luminance (BT.601), mean removed, unit norm (space "shape"); a flat
    picture stays all zero. Ignores colour, brightness and contrast, so it asks whether the outline
    is right even where colours drift (half of the pictures are skin tone variants)."""
    small = resize_area(imgs, SHAPE_SIZE).astype(np.float64)
    lum = (small @ np.array([0.299, 0.587, 0.114])).reshape(len(imgs), -1)
    lum -= lum.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(lum, axis=1, keepdims=True)
    return (lum / np.where(norm > 1e-9, norm, 1.0)).astype(np.float32)


def nearest(queries, pool, k):
    """Indices [Q,k] of the k nearest pool rows to each query (squared L2, ascending; ties go to
    the lower pool index), and their distances (L2)."""
    q = np.asarray(queries, np.float64)
    p = np.asarray(pool, np.float64)
    k = min(k, len(p))
    d2 = (q * q).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2.0 * q @ p.T
    d2 = np.maximum(d2, 0.0)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return idx, np.sqrt(np.take_along_axis(d2, idx, axis=1))


def score_hits(nn_idx, pool_labels, targets, ks=KS):
    """nn_idx [Q,k] pool indices, nearest first; pool_labels: one hashable label per pool picture;
    targets: for each query, the set of labels that count as right. Returns {"topK": fraction of hits},
    a hit at k meaning that one of the k nearest has a label in the query's target set."""
    out = {}
    for k in ks:
        hits = [any(pool_labels[j] in targets[i] for j in nn_idx[i, :k]) for i in range(len(targets))]
        out["top%d" % k] = float(np.mean(hits)) if hits else None
    return out


def derangement(n, seed):
    """A fixed permutation of range(n) with no fixed point (Sattolo's algorithm: one n-cycle),
    decided by `seed`; None for n < 2 (no derangement exists)."""
    if n < 2:
        return None
    perm = list(range(n))
    rng = random.Random("derangement:%d" % seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    assert all(perm[i] != i for i in range(n))
    return perm


# ---------------------------------------------------------------- records

def base_emoji(rec):
    """The base emoji of a record: its English name without the skin tone suffix
    ('santa claus: light skin tone' -> 'santa claus'; 'kiss: woman, man, dark skin tone' ->
    'kiss: woman, man'). Names, not code points: skin tone variants of two-person emoji use other
    code points than their base (handshake 1F91D, its variants 1FAF1-...-1FAF2)."""
    return TONE_SUFFIX.sub("", rec["json"]["name_en"])


def korean_caption(rec):
    """The first caption variant with Hangul in it ('빨간 사과, 구글 스타일'), or None."""
    for c in rec["json"].get("captions") or []:
        if HANGUL.search(c):
            return c
    return None


def load_records(data_dir, split):
    path = os.path.join(data_dir, split + ".jsonl")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise EvalError("%s: cannot read (%s); expected prepare_emoji.py's output folder" % (path, e.strerror))
    out = []
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = isinstance(r.get("image"), str) and isinstance(r.get("caption"), str) and \
                    isinstance(r.get("key"), str) and isinstance(r.get("json"), dict) and \
                    isinstance(r["json"].get("name_en"), str) and isinstance(r["json"].get("style"), str)
            except ValueError as e:
                raise EvalError("%s line %d: not valid JSON (%s)" % (path, n, e))
            if not ok:
                raise EvalError("%s line %d: expected a record with image, caption, key and json.name_en, json.style" % (path, n))
            r["split"] = split
            r["base"] = base_emoji(r)
            r["style"] = r["json"]["style"]
            r["caption_ko"] = korean_caption(r)
            out.append(r)
    return out


def usable_prompt(text):
    """`hwaga gallery` reads one prompt a line, trims it and skips blanks and '#' lines."""
    return bool(text) and text == text.strip() and "\n" not in text and "\r" not in text and not text.startswith("#")


def choose_prompts(records, max_captions, seed):
    """A seeded choice (SHA-256 of seed and key) of records with distinct primary captions that
    `hwaga gallery` can read back (the first record of each caption); all of them for max_captions 0."""
    by_caption = {}
    for r in records:
        by_caption.setdefault(r["caption"], []).append(r)
    firsts = [v[0] for c, v in by_caption.items() if usable_prompt(c)]
    firsts.sort(key=lambda r: hashlib.sha256(("%d:%s" % (seed, r["key"])).encode("utf-8")).digest())
    return firsts[:max_captions] if max_captions > 0 else firsts


# ---------------------------------------------------------------- running hwaga

class Runner:
    def __init__(self, hwaga, threads):
        self.hwaga = hwaga
        self.threads = threads
        self.commands = []

    def __call__(self, *args):
        cmd = [self.hwaga] + [str(a) for a in args]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
        dt = time.time() - t0
        shown = cmd if len(cmd) <= 12 else cmd[:8] + ["... (%d more arguments)" % (len(cmd) - 8)]
        self.commands.append({"command": " ".join(shown), "seconds": round(dt, 3), "rc": p.returncode})
        if p.returncode != 0:
            raise EvalError("'%s' failed (rc %d):\n%s" % (" ".join(shown), p.returncode, (p.stderr or "")[-3000:]))
        return p


def check_hwaga(hwaga):
    if not (os.path.isfile(hwaga) and os.access(hwaga, os.X_OK)):
        raise EvalError("%s: no hwaga executable there (build it, or pass --hwaga PATH)" % hwaga)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- 1. reconstruction

def psnr(ref, test):
    """Per-picture PSNR in dB over RGB in [0,255], capped at 100 dB (identical pictures)."""
    d = np.asarray(ref, np.float64) - np.asarray(test, np.float64)
    mse = (d * d).reshape(len(d), -1).mean(1)
    return np.minimum(100.0, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)))


def reconstruction(run, model, records, work, batch, max_pictures):
    """PSNR of encode + decode over the split's pictures (the first max_pictures when > 0).
    Returns (report, the reconstructions as float [N,R,R,3] in [0,255])."""
    recs = records[:max_pictures] if max_pictures > 0 else records
    t0 = time.time()
    refs = on_white(np.stack(read_pngs([r["image"] for r in recs])))   # [N,64,64,3] float32
    t_read = time.time() - t0
    outs = []
    t0 = time.time()
    for c0 in range(0, len(recs), RECON_CHUNK):
        part = recs[c0:c0 + RECON_CHUNK]
        codes = os.path.join(work, "recon_codes_%05d.npy" % c0)
        dec = os.path.join(work, "recon_%05d.npy" % c0)
        run("encode", "-m", model, "-o", codes, "--batch", batch, *[r["image"] for r in part])
        run("decode", "-m", model, codes, "-o", dec, "--batch", batch)
        x = np.load(dec)
        if x.ndim != 4 or x.shape[0] != len(part) or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise EvalError("%s: decoder output of shape %s (expected [%d,3,R,R])" % (dec, list(x.shape), len(part)))
        outs.append(to_pixels8(x))
    t_hwaga = time.time() - t0
    rec = np.concatenate(outs)
    R = rec.shape[1]
    resized = refs.shape[1] != R or refs.shape[2] != R
    ref = resize_area(refs, R) if resized else refs
    p = psnr(ref, rec)
    mae = np.abs(ref.astype(np.float64) - rec).reshape(len(rec), -1).mean(1)
    by_style = {}
    for s in sorted({r["style"] for r in recs}):
        m = np.array([r["style"] == s for r in recs])
        by_style[s] = {"pictures": int(m.sum()), "psnr_mean": float(p[m].mean())}
    worst = np.argsort(p, kind="stable")[:5]
    return {
        "pictures": len(recs),
        "resolution": int(R),
        "reference_resized": bool(resized),
        "psnr_mean": float(p.mean()),
        "psnr_median": float(np.median(p)),
        "psnr_p10": float(np.percentile(p, 10)),
        "psnr_min": float(p.min()),
        "psnr_of_mean_mse": float(psnr(ref.reshape(1, -1), rec.reshape(1, -1))[0]),
        "mae_mean": float(mae.mean()),
        "by_style": by_style,
        "worst": [{"key": recs[i]["key"], "psnr": float(p[i])} for i in worst],
        "seconds_read_pngs": round(t_read, 3),
        "seconds_hwaga": round(t_hwaga, 3),
        "seconds_per_picture": round(t_hwaga / max(1, len(recs)), 5),
    }, rec


# ---------------------------------------------------------------- 2. prompt faithfulness

def run_gallery(run, model, prompts, n, seed, work, gallery_dir, sampling=()):
    """Draws n pictures for each prompt with one `hwaga gallery` process (`sampling`: extra options
    such as ("--top-k", "64"); none = the model file's recommendation); returns
    (uint8 pictures [len(prompts), n, R, R, 3], gallery.json, stderr)."""
    out_dir = gallery_dir or os.path.join(work, "gallery")
    prompts_file = os.path.join(work, "prompts.txt")
    with open(prompts_file, "w", encoding="utf-8") as f:
        f.write("# eval_quality.py prompts\n" + "".join(p + "\n" for p in prompts))
    p = run("gallery", "-m", model, prompts_file, "-o", out_dir, "-n", n, "--seed", seed, *sampling)
    with open(os.path.join(out_dir, "gallery.json"), encoding="utf-8") as f:
        state = json.load(f)
    folders = {}
    for name in os.listdir(out_dir):
        done = os.path.join(out_dir, name, "done.json")
        if os.path.isfile(done):
            with open(done, encoding="utf-8") as f:
                d = json.load(f)
            folders[d["index"]] = (os.path.join(out_dir, name), d)
    paths = []
    for i, text in enumerate(prompts):
        if i not in folders or folders[i][1].get("prompt") != text:
            raise EvalError("%s: no finished folder for prompt %d (%r)" % (out_dir, i + 1, text))
        pics = sorted(x for x in os.listdir(folders[i][0]) if x.endswith(".png") and x != "contact.png")
        if len(pics) != n:
            raise EvalError("%s: %d pictures (expected %d)" % (folders[i][0], len(pics), n))
        paths += [os.path.join(folders[i][0], x) for x in pics]
    imgs = np.stack([x[:, :, :3] for x in read_pngs(paths)])
    return imgs.reshape((len(prompts), n) + imgs.shape[1:]), state, p.stderr


def faithfulness_scores(gen_feats, n, prompt_recs, pool_feats, pool_recs, seed):
    """Scores of one language in one retrieval space. gen_feats [P*n, D] (n pictures per prompt,
    prompt by prompt); prompt_recs: the prompt's records; pool: every real picture."""
    P = len(prompt_recs)
    idx, dist = nearest(gen_feats, pool_feats, max(KS))
    labels = [(r["base"], r["style"]) for r in pool_recs]
    keys = [r["key"] for r in pool_recs]
    bases = [r["base"] for r in pool_recs]
    styles = [r["style"] for r in pool_recs]

    def targets(recs_per_prompt, field):
        return [{field(r)} for r in recs_per_prompt for _ in range(n)]

    lab = lambda r: (r["base"], r["style"])  # noqa: E731
    res = {"hit": score_hits(idx, labels, targets(prompt_recs, lab))}
    res["exact_picture_top1"] = score_hits(idx, keys, targets(prompt_recs, lambda r: r["key"]), ks=(1,))["top1"]
    res["emoji_top1"] = score_hits(idx, bases, targets(prompt_recs, lambda r: r["base"]), ks=(1,))["top1"]
    res["style_top1"] = score_hits(idx, styles, targets(prompt_recs, lambda r: r["style"]), ks=(1,))["top1"]
    res["nearest_distance_mean"] = float(dist[:, 0].mean())
    perm = derangement(P, seed)
    if perm is None:
        res["baseline"] = None
    else:
        shuffled = [prompt_recs[perm[i]] for i in range(P)]
        res["baseline"] = {"hit": score_hits(idx, labels, targets(shuffled, lab)),
                           "emoji_top1": score_hits(idx, bases, targets(shuffled, lambda r: r["base"]), ks=(1,))["top1"],
                           "style_top1": score_hits(idx, styles, targets(shuffled, lambda r: r["style"]), ks=(1,))["top1"],
                           "derangement": perm}
    per_prompt = []
    for i in range(P):
        rows = idx[i * n:(i + 1) * n]
        per_prompt.append({"key": prompt_recs[i]["key"],
                           "top1_hits": int(sum(lab(pool_recs[j]) == lab(prompt_recs[i]) for j in rows[:, 0])),
                           "nearest": [pool_recs[j]["key"] for j in rows[:, 0]]})
    res["per_prompt"] = per_prompt
    return res


def reconstruction_retrieval(rec_imgs, recs, pool_feats, pool_recs):
    """The faithfulness metric applied to the tokenizer's reconstructions of real pictures, each
    scored against its own record: the most a generator drawing through this tokenizer can score
    for prompts that name these pictures (its ceiling)."""
    labels = [(r["base"], r["style"]) for r in pool_recs]
    targets = [{(r["base"], r["style"])} for r in recs]
    out = {}
    for name, feats in (("pixels", pixel_features), ("shape", shape_features)):
        idx, _ = nearest(feats(rec_imgs), pool_feats[name], max(KS))
        out[name] = score_hits(idx, labels, targets)
    return out


def pct(x):
    return "   -  " if x is None else "%5.1f%%" % (100.0 * x)


def build_table(report):
    lines = ["hwaga emoji model quality: %s (%s, %.1f MiB)" % (
        report["model"]["path"], report["model"]["sha256"][:12], report["model"]["bytes"] / 2 ** 20)]
    r = report.get("reconstruction")
    if r:
        lines.append("tokenizer reconstruction, %s split, %d pictures at %dx%d%s:" % (
            report["split"], r["pictures"], r["resolution"], r["resolution"],
            " (reference area-resized from 64x64)" if r["reference_resized"] else ""))
        lines.append("  PSNR mean %.2f dB, median %.2f, 10th pct %.2f, min %.2f; MAE %.2f / 255" % (
            r["psnr_mean"], r["psnr_median"], r["psnr_p10"], r["psnr_min"], r["mae_mean"]))
        lines.append("  " + ", ".join("%s %.2f dB" % (s, v["psnr_mean"]) for s, v in r["by_style"].items()))
        for space, v in (r.get("retrieval") or {}).items():
            lines.append("  the reconstructions scored as drawings of their own captions (the ceiling), %s: "
                         "top-1 %s, top-5 %s" % (space, pct(v["top1"]).strip(), pct(v["top5"]).strip()))
    g = report.get("faithfulness")
    if g:
        lines.append("prompt faithfulness, %s split, %d captions x %d pictures, seed %d" % (
            report["split"], g["captions"], g["pictures_per_caption"], g["seed"]))
        lines.append("  hit: one of the k nearest real pictures (both splits) has the prompt's base emoji and style")
        lines.append("  %-4s %-7s %7s %7s %9s %9s %9s %8s" % ("lang", "space", "top-1", "top-5", "chance@1", "chance@5",
                                                            "emoji@1", "style@1"))
        for lang, v in g["languages"].items():
            for space, s in v["spaces"].items():
                b = s["baseline"] or {"hit": {"top1": None, "top5": None}}
                lines.append("  %-4s %-7s %7s %7s %9s %9s %9s %8s" % (
                    lang, space, pct(s["hit"]["top1"]), pct(s["hit"]["top5"]), pct(b["hit"]["top1"]), pct(b["hit"]["top5"]),
                    pct(s["emoji_top1"]), pct(s["style_top1"])))
            lines.append("  %-4s %d prompts (%d pictures), %d cut off at the model's context" % (
                lang, v["prompts"], v["pictures"], v["prompts_truncated"]))
    t = report["timings"]
    lines.append("time: %.1f s in all (reconstruction %.1f s, generation %.1f s, retrieval %.1f s)" % (
        t["total"], t.get("reconstruction", 0.0), t.get("generation", 0.0), t.get("retrieval", 0.0)))
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="hwaga text-to-image model file (.safetensors)")
    ap.add_argument("--data", required=True, help="prepare_emoji.py's output folder (train.jsonl, eval.jsonl)")
    ap.add_argument("--split", choices=["eval", "train"], default="eval", help="pictures and captions to evaluate on")
    ap.add_argument("--max-captions", type=int, default=100, help="captions to draw (0 = all of the split)")
    ap.add_argument("-n", type=int, default=4, help="pictures per caption")
    ap.add_argument("--seed", type=int, default=0, help="seed of the caption choice, the sampling and the derangement")
    ap.add_argument("--lang", choices=["en", "ko", "both"], default="both")
    ap.add_argument("--out", help="JSON report")
    ap.add_argument("--hwaga", default=os.environ.get("HWAGA_BIN", "./build/hwaga"), help="the hwaga executable")
    ap.add_argument("--threads", type=int, help="CPU threads for hwaga (default: all cores)")
    ap.add_argument("--batch", type=int, default=16, help="pictures per batch in hwaga encode/decode")
    ap.add_argument("--max-recon-pictures", type=int, default=0, help="reconstruct only the first N pictures (0 = all)")
    ap.add_argument("--skip-recon", action="store_true", help="skip the tokenizer reconstruction")
    ap.add_argument("--skip-generate", action="store_true", help="skip the prompt faithfulness")
    ap.add_argument("--top-k", help="hwaga's --top-k (default: the model file's recommendation, else the family's)")
    ap.add_argument("--top-p", help="hwaga's --top-p (default: as --top-k)")
    ap.add_argument("--temperature", help="hwaga's --temperature (default: as --top-k)")
    ap.add_argument("--cfg", help="hwaga's --cfg, the classifier-free guidance scale (default: as --top-k)")
    ap.add_argument("--rerank", help="hwaga's --rerank, candidates drawn per prompt to keep the -n best (default: as --top-k)")
    ap.add_argument("--gallery-dir", help="keep the drawn pictures here (a hwaga gallery folder; a rerun continues it)")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("-n must be at least 1")
    if a.max_captions < 0 or a.seed < 0:
        ap.error("--max-captions and --seed must not be negative")
    return a


def evaluate(a):
    t_start = time.time()
    check_hwaga(a.hwaga)
    if not os.path.isfile(a.model):
        raise EvalError("%s: no such model file" % a.model)
    run = Runner(a.hwaga, a.threads)
    split_recs = load_records(a.data, a.split)
    other = "train" if a.split == "eval" else "eval"
    pool_recs = split_recs + (load_records(a.data, other) if os.path.isfile(os.path.join(a.data, other + ".jsonl")) else [])
    if not split_recs:
        raise EvalError("%s: no records" % os.path.join(a.data, a.split + ".jsonl"))
    report = {
        "tool": "tools/emoji/eval_quality.py",
        "command": " ".join([sys.argv[0]] + sys.argv[1:]),
        "model": {"path": os.path.abspath(a.model), "bytes": os.path.getsize(a.model), "sha256": sha256_file(a.model)},
        "hwaga": {"path": os.path.abspath(a.hwaga), "version": None},
        "data": os.path.abspath(a.data), "split": a.split,
        "pool": {"pictures": len(pool_recs), "base_emoji": len({r["base"] for r in pool_recs}),
                 "spaces": {"pixels": "%dx%d RGB on white in [0,1], L2" % (PIXEL_SIZE, PIXEL_SIZE),
                            "shape": "%dx%d luminance, mean removed, unit norm, L2" % (SHAPE_SIZE, SHAPE_SIZE)}},
        "hit_definition": "a generated picture is a hit at k when one of its k nearest real pictures (all pictures "
                          "of both splits) has the same base emoji (English name without the skin tone suffix) and "
                          "the same style as the prompt's record; chance: the same pictures against a fixed "
                          "derangement of the prompts",
        "timings": {},
    }
    work = tempfile.mkdtemp(prefix="hwaga-eval-")
    try:
        pool = {}  # retrieval features of every real picture, computed once

        def pool_feats():
            if not pool:
                imgs = on_white(np.stack(read_pngs([r["image"] for r in pool_recs])))
                pool.update(pixels=pixel_features(imgs), shape=shape_features(imgs))
            return pool

        if not a.skip_recon:
            t0 = time.time()
            log("reconstruction: %d pictures" % (a.max_recon_pictures or len(split_recs)))
            report["reconstruction"], rec_imgs = reconstruction(run, a.model, split_recs, work, a.batch,
                                                                a.max_recon_pictures)
            report["reconstruction"]["retrieval"] = reconstruction_retrieval(
                rec_imgs, split_recs[:len(rec_imgs)], pool_feats(), pool_recs)
            del rec_imgs
            report["timings"]["reconstruction"] = round(time.time() - t0, 3)
        if not a.skip_generate:
            chosen = choose_prompts(split_recs, a.max_captions, a.seed)
            langs = ["en", "ko"] if a.lang == "both" else [a.lang]
            sets = {}
            if "en" in langs:
                sets["en"] = [(r["caption"], r) for r in chosen]
            if "ko" in langs:
                sets["ko"] = [(r["caption_ko"], r) for r in chosen if r["caption_ko"] and usable_prompt(r["caption_ko"])]
            prompts = [t for lang in langs for t, _ in sets[lang]]
            if not prompts:
                raise EvalError("no captions to draw in the %s split for --lang %s" % (a.split, a.lang))
            t0 = time.time()
            log("generation: %d prompts x %d pictures" % (len(prompts), a.n))
            sampling = [x for opt in ("top_k", "top_p", "temperature", "cfg", "rerank") if getattr(a, opt) is not None
                        for x in ("--" + opt.replace("_", "-"), str(getattr(a, opt)))]
            imgs, state, stderr = run_gallery(run, a.model, prompts, a.n, a.seed, work, a.gallery_dir, sampling)
            report["timings"]["generation"] = round(time.time() - t0, 3)
            report["hwaga"]["version"] = state.get("software")
            truncated = set(int(m) for m in re.findall(r"line \d+ \(prompt (\d+)\) has \d+ tokens", stderr))
            t0 = time.time()
            gen = imgs.reshape((-1,) + imgs.shape[2:]).astype(np.float32)
            spaces = {"pixels": (pool_feats()["pixels"], pixel_features(gen)),
                      "shape": (pool_feats()["shape"], shape_features(gen))}
            langs_out, start = {}, 0
            for lang in langs:
                recs = [r for _, r in sets[lang]]
                sl = slice(start * a.n, (start + len(recs)) * a.n)
                v = {"prompts": len(recs), "pictures": len(recs) * a.n,
                     "prompts_truncated": sum(1 for i in range(start, start + len(recs)) if i + 1 in truncated),
                     "captions": [t for t, _ in sets[lang]], "spaces": {}}
                if recs:
                    for name, (pool_f, gen_f) in spaces.items():
                        v["spaces"][name] = faithfulness_scores(gen_f[sl], a.n, recs, pool_f, pool_recs, a.seed)
                langs_out[lang] = v
                start += len(recs)
            report["timings"]["retrieval"] = round(time.time() - t0, 3)
            report["faithfulness"] = {"captions": len(chosen), "pictures_per_caption": a.n, "seed": a.seed,
                                      "resolution": int(imgs.shape[2]), "gallery": state, "languages": langs_out}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["hwaga_commands"] = run.commands
    report["timings"]["total"] = round(time.time() - t_start, 3)
    return report


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = evaluate(a)
    except EvalError as e:
        print("eval_quality.py: error: %s" % e, file=sys.stderr)
        return 1
    print(build_table(report))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
