#!/usr/bin/env python3
"""Grows an RQ-Transformer model file by appending blocks that start as the identity.

    grow_model.py IN.safetensors OUT.safetensors --body N --head M [--seed S]

The new blocks of the spatial body (after block n_layer_body-1) and of the depth head get
LayerNorms of ones and zeros, query/key/value and mlp.0 weights drawn from N(0, 0.02^2) (the
trainer's init), and zero output projections (attn.proj, mlp.2) with zero biases, so that each
new block adds nothing to the residual stream: the grown model computes exactly what IN computes.
Training it further (`hwaga train --init OUT ...`) then has more parameters to fit the data with,
starting from what IN already knows. Every other tensor and all metadata are copied; the config's
n_layer_body / n_layer_head are raised. New tensors take the dtype of the blocks they follow.
Needs only the Python standard library (plus numpy-free bf16 packing).
"""
import argparse
import json
import random
import struct
import sys


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def f32_to_bf16_bytes(values):
    out = bytearray()
    for v in values:
        u = struct.unpack("<I", struct.pack("<f", v))[0]
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
        out += struct.pack("<H", u)
    return bytes(out)


def pack(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "BF16":
        return f32_to_bf16_bytes(values)
    sys.exit(f"grow_model: dtype {dtype} is not supported (F32 or BF16)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--body", type=int, required=True, help="body blocks of the grown model")
    ap.add_argument("--head", type=int, required=True, help="head blocks of the grown model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    header, data = read_safetensors(a.inp)
    meta = header.pop("__metadata__", {})
    cfg = json.loads(meta["config"])
    s2 = cfg.get("stage2", {})
    if s2.get("type") != "rq-transformer":
        sys.exit(f"grow_model: {a.inp} has no rq-transformer stage 2")
    C = int(s2["embed_dim"])
    rng = random.Random(a.seed)
    tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}
    for part, key, want in (("body_transformer", "n_layer_body", a.body), ("head_transformer", "n_layer_head", a.head)):
        have = int(s2[key])
        if want < have:
            sys.exit(f"grow_model: {key} {want} is below the model's {have}")
        ref = f"stage2.{part}.blocks.{have - 1}."
        for b in range(have, want):
            pre = f"stage2.{part}.blocks.{b}."
            for name in [k[len(ref):] for k in tensors if k.startswith(ref)]:
                dtype, shape, _ = tensors[ref + name]
                n = 1
                for d in shape:
                    n *= d
                if name.endswith(".bias") or name in ("attn.proj.weight", "mlp.2.weight"):
                    vals = [0.0] * n
                elif name in ("ln1.weight", "ln2.weight"):
                    vals = [1.0] * n
                else:
                    vals = [rng.gauss(0.0, 0.02) for _ in range(n)]
                tensors[pre + name] = (dtype, shape, pack(vals, dtype))
        s2[key] = want
    cfg["stage2"] = s2
    meta["config"] = json.dumps(cfg)
    meta["grown_from"] = json.dumps({"file": a.inp.split("/")[-1], "n_layer_body": a.body, "n_layer_head": a.head,
                                     "note": "new blocks start as the identity (tools/emoji/grow_model.py)"})
    out_header = {"__metadata__": meta}
    blobs, off = [], 0
    for k in sorted(tensors):
        dtype, shape, raw = tensors[k]
        out_header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(out_header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    import os
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: n_layer_body {a.body}, n_layer_head {a.head} ({C} channels)")


if __name__ == "__main__":
    main()
