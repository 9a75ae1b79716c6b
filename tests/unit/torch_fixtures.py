#!/usr/bin/python3
"""Writes the torch checkpoint fixtures that tests/unit/test_torch_checkpoint.cpp reads.

Usage: /usr/bin/python3 torch_fixtures.py OUT_DIR [--marker PATH] [--seeds SEED_DIR]

Every file is small (a few KiB). OUT_DIR/expected.json holds, per loadable checkpoint, the key
to load and each tensor's dtype, shape and contiguous bytes (hex) as torch itself produces them,
so the C++ side compares bit-exactly. Variants of one checkpoint are re-zipped by the small zip
writer below (forced zip64, unaligned data, a storage left out, deflated entries, flipped bytes),
and a few hand-made pickles test the unpickler on its own. With --seeds, a handful of the files
are also copied into SEED_DIR as a fuzzing seed corpus. The "evil" pickles would create the
file PATH (default OUT_DIR/executed.marker) if anything ever ran them.
"""
import collections
import json
import os
import pickle
import shlex
import shutil
import struct
import sys
import zipfile
import zlib

import torch

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
MARKER = sys.argv[sys.argv.index("--marker") + 1] if "--marker" in sys.argv else os.path.join(OUT, "executed.marker")
torch.manual_seed(1234)

DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.int64: "i64",
          torch.int32: "i32", torch.uint8: "u8", torch.bool: "u8"}
expected = {}


def path(name):
    return os.path.join(OUT, name)


def tensor_record(t):
    t = t.detach().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        raw = t.view(torch.int16).numpy().tobytes()
    elif t.dtype == torch.bool:
        raw = t.to(torch.uint8).numpy().tobytes()
    else:
        raw = t.numpy().tobytes()
    return {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "hex": raw.hex()}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = prefix + str(k)
        if isinstance(v, dict):
            out.update(flat(v, name + "."))
        else:
            out[name] = v
    return out


def expect(file, key, tensors):
    expected[file] = {"key": key, "tensors": {k: tensor_record(v) for k, v in flat(tensors).items()}}


class UnknownConfig:  # pickled as __main__.UnknownConfig: unknown to hwaga
    def __init__(self):
        self.lr = 0.001
        self.layers = [1, 2, 3]


class Evil:  # pickled as a call of posix.system; nothing may run it
    def __reduce__(self):
        return (os.system, ("touch " + shlex.quote(MARKER),))


class EvilEval:  # pickled as a call of builtins.eval
    def __reduce__(self):
        return (eval, ("open(%r, 'w').close()" % MARKER,))


class View:  # a tensor view with arbitrary (possibly hostile) offset/size/stride over a real storage
    def __init__(self, storage, offset, size, stride, fn=None, extra=()):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict()) + tuple(extra)
        self.fn = fn or torch._utils._rebuild_tensor_v2

    def __reduce__(self):
        return (self.fn, self.args)


class Codebooks(torch.nn.Module):  # one module listed 4 times, like the RQ-VAE quantizer
    def __init__(self):
        super().__init__()
        cb = torch.nn.Embedding(5, 3)
        self.codebooks = torch.nn.ModuleList([cb, cb, cb, cb])


# ---- the main state dict: every supported dtype, strided/offset views, aliases, scalars ----
base = torch.randn(3, 4)
rows = torch.arange(24, dtype=torch.float32).reshape(8, 3)
sd = collections.OrderedDict()
sd["f32"] = base
sd["f16"] = torch.randn(5).half()
sd["bf16"] = torch.randn(2, 3).bfloat16()
sd["i64"] = torch.tensor([1, -2, 3, 1 << 40], dtype=torch.int64)
sd["i32"] = torch.tensor([7, -8, 9], dtype=torch.int32)
sd["u8"] = torch.tensor([0, 1, 255, 128, 3, 4], dtype=torch.uint8)
sd["flag"] = torch.tensor([True, False, True])
sd["transposed"] = base.t()                 # stride (1, 4), shares base's storage
sd["rows_2_5"] = rows[2:5]                  # storage offset 6
sd["every_other"] = rows[:, ::2]            # inner stride 2
sd["scalar"] = torch.tensor(2.5)            # 0-d
sd["num_batches_tracked"] = torch.tensor(7)  # 0-d int64, like BatchNorm's
sd["empty"] = torch.zeros(0, 3)
sd["pos_emb"] = torch.nn.Parameter(torch.randn(1, 4, 2))  # a bare Parameter, as RQ's pos_emb_*
for k, v in Codebooks().state_dict(prefix="quantizer.").items():  # 4 aliased keys
    sd[k] = v
sd._metadata = collections.OrderedDict([("", {"version": 1})])  # BUILD on the OrderedDict
torch.save({"state_dict": sd, "epoch": 3, "nested": {"inner": {"a": torch.ones(2)}}}, path("plain.pt"))
expect("plain.pt", "state_dict", sd)
expected["plain.pt"]["nested"] = {"inner.a": tensor_record(torch.ones(2))}
expected["plain.pt"]["aliases"] = ["quantizer.codebooks.%d.weight" % i for i in range(4)]

# torch.save(model.state_dict()): the top level is the state dict itself.
lin = torch.nn.Linear(3, 2)
torch.save(lin.state_dict(), path("bare.pt"))
expect("bare.pt", "", lin.state_dict())

# Other pickle protocols: 1 (text INT booleans), 4 and 5 (FRAME, MEMOIZE, STACK_GLOBAL...).
for proto in (1, 4, 5):
    torch.save({"state_dict": sd, "meta": {"ok": True, "ratio": 0.5, "name": "héllo"}},
               path("proto%d.pt" % proto), pickle_protocol=proto)
    expect("proto%d.pt" % proto, "state_dict", sd)

# ---- a Lightning-style checkpoint: optimizer state, unknown classes in hyper_parameters ----
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(2, 4)).sum().backward()
opt.step()
lightning = {
    "epoch": 5, "global_step": 1234, "pytorch-lightning_version": "1.4.2",
    "state_dict": model.state_dict(),
    "optimizer_states": [opt.state_dict()],
    "lr_schedulers": [{"last_epoch": 4, "base_lrs": [0.001]}],
    "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.25), "mode": "min"}},
    "hyper_parameters": {"config": UnknownConfig(), "betas": (0.9, 0.999), "big": 2 ** 100, "neg": -5,
                         "raw": b"abc", "tags": {1, 2}, "frozen": frozenset([3]), "none": None},
}
torch.save(lightning, path("lightning.ckpt"))
expect("lightning.ckpt", "state_dict", model.state_dict())

# ---- hostile or broken files ----
w = torch.randn(2, 2)
torch.save({"state_dict": {"w": w, "bad": UnknownConfig()}}, path("unknown_in_state_dict.pt"))
torch.save({"state_dict": {"w": w, "evil": Evil()}}, path("evil_in_state_dict.pt"))
torch.save({"state_dict": {"w": w}, "payload": [Evil(), EvilEval()], "more": {"x": Evil()}}, path("evil_top.pt"))
expect("evil_top.pt", "state_dict", {"w": w})
torch.save({"state_dict": {"w": w, "note": "text"}}, path("string_in_state_dict.pt"))
torch.save({"state_dict": {"w": w.double()}}, path("double_in_state_dict.pt"))
torch.save(torch.nn.Linear(2, 3), path("whole_model.pt"))
cyclic = {"w": w}
cyclic["self"] = cyclic
torch.save({"state_dict": cyclic}, path("cyclic.pt"))
torch.save({"state_dict": {"w": w}}, path("legacy.pt"), _use_new_zipfile_serialization=False)
with open(path("not_a_zip.pt"), "wb") as f:
    f.write(b"hello, this is not a checkpoint at all\n" * 4)
open(path("empty.pt"), "wb").close()

# Views outside their storage (12 floats) or with bad sizes; each must be refused by name.
st = torch.arange(12, dtype=torch.float32).storage()
bad_views = [(0, (13,), (1,)), (11, (2,), (1,)), (0, (-1, 3), (3, 1)), (0, (2, 3), (-1, 1)),
             (-1, (2,), (1,)), (0, (1 << 62, 1 << 62), (1, 1)), (0, (4, 4), (4, 1)), (1 << 62, (1,), (1,)),
             (0, (2, 2), (1 << 62, 1))]
for i, (off, size, stride) in enumerate(bad_views):
    torch.save({"state_dict": {"v": View(st, off, size, stride)}}, path("badview%d.pt" % i))
# A good hand-made view: overlapping rows (stride 1 in dim 0), read by a copy.
torch.save({"state_dict": {"v": View(st, 1, (3, 4), (2, 1))}}, path("overlap.pt"))
expect("overlap.pt", "state_dict", {"v": torch.arange(12, dtype=torch.float32).as_strided((3, 4), (2, 1), 1)})

# Forms newer PyTorch writes: _rebuild_from_type_v2, _rebuild_tensor_v3 (with a dtype global) and
# _rebuild_parameter_with_state. Functions missing from this torch are stood in by name only.
def stand_in(name):
    if not hasattr(torch._utils, name):
        def f(*args):
            raise RuntimeError("stand-in")
        f.__module__, f.__qualname__, f.__name__ = "torch._utils", name, name
        setattr(torch._utils, name, f)
    return getattr(torch._utils, name)


class FromType:
    def __init__(self, view, cls):
        self.view, self.cls = view, cls

    def __reduce__(self):
        return (torch._tensor._rebuild_from_type_v2, (self.view.fn, self.cls, self.view.args, {}))


class ParamWithState:
    def __init__(self, view):
        self.view = view

    def __reduce__(self):
        return (stand_in("_rebuild_parameter_with_state"), (self.view, True, collections.OrderedDict(), {}))


h = torch.randn(6).half()
newer = {"from_type": FromType(View(st, 2, (2, 3), (3, 1)), torch.Tensor),
         "from_type_param": FromType(View(st, 0, (4,), (1,)), torch.nn.Parameter),
         "v3_half": View(h.storage(), 1, (2, 2), (2, 1), fn=stand_in("_rebuild_tensor_v3"), extra=(torch.float16,)),
         "param_state": ParamWithState(View(st, 4, (2,), (1,)))}
torch.save({"state_dict": newer}, path("newer_forms.pt"))
ar = torch.arange(12, dtype=torch.float32)
expect("newer_forms.pt", "state_dict", {"from_type": ar[2:8].reshape(2, 3), "from_type_param": ar[0:4],
                                        "v3_half": h[1:5].reshape(2, 2), "param_state": ar[4:6]})


# ---- a small zip writer, to re-pack plain.pt in ways torch itself never writes ----
def write_zip(dst, entries, align=64, rem=0, zip64=False, deflate=False):
    """entries: [(name, data, crc or None)]. Data offsets are padded to `rem` modulo `align`."""
    out = bytearray()
    central = bytearray()
    for name, data, crc in entries:
        nb = name.encode()
        crc = zlib.crc32(data) if crc is None else crc
        method, payload = 0, data
        if deflate and "/data/" in name:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            method, payload = 8, c.compress(data) + c.flush()
        off = len(out)
        z64 = struct.pack("<HHQQ", 1, 16, len(data), len(payload)) if zip64 else b""
        pad = 0
        if align > 1:
            pad = (rem - (off + 30 + len(nb) + len(z64) + 4)) % align
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(payload), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, method, 0, 0x21, crc,
                           sizes[0], sizes[1], len(nb), len(extra)) + nb + extra + payload
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(payload), off) if zip64 else b""
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if zip64 else 20, 45 if zip64 else 20, 0,
                               method, 0, 0x21, crc, sizes[0], sizes[1], len(nb), len(cextra), 0, 0, 0, 0,
                               0xFFFFFFFF if zip64 else off) + nb + cextra
    cd_off, n = len(out), len(entries)
    out += central
    if zip64:
        eocd64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_off, 0)
    with open(dst, "wb") as f:
        f.write(out)


zf = zipfile.ZipFile(path("plain.pt"))
plain = [(i.filename, zf.read(i.filename), None) for i in zf.infolist()]
pkl_index = next(i for i, e in enumerate(plain) if e[0].endswith("/data.pkl"))
write_zip(path("zip64.pt"), plain, zip64=True)
expected["zip64.pt"] = expected["plain.pt"]
write_zip(path("unaligned.pt"), plain, rem=1)  # every storage at an odd address: read by copies
expected["unaligned.pt"] = expected["plain.pt"]
write_zip(path("deflated.pt"), plain, deflate=True)
write_zip(path("missing_storage.pt"), [e for e in plain if not e[0].endswith("/data/0")])
write_zip(path("short_storage.pt"), [(n, d[:4] if n.endswith("/data/0") else d, c) for n, d, c in plain])
pkl_name, pkl_data, _ = plain[pkl_index]
bad_crc = bytearray(pkl_data)
bad_crc[len(bad_crc) // 2] ^= 0x20
write_zip(path("flipped_crc.pt"), [(pkl_name, bytes(bad_crc), zlib.crc32(pkl_data))] + plain[1:])
# Flipped data.pkl bytes with a matching CRC: the unpickler itself must cope (error or success).
for i, at in enumerate([0, 1, 2, 5, 20, 60, 100, 161, 164, len(pkl_data) // 2, len(pkl_data) - 2, len(pkl_data) - 1]):
    flipped = bytearray(pkl_data)
    flipped[min(at, len(flipped) - 1)] ^= 0xFF if i % 2 else 0x01
    write_zip(path("flipped%d.pt" % i), [(pkl_name, bytes(flipped), None)] + plain[1:])

# ---- bare pickles of plain data, protocols 0-5, for the unpickler alone ----
plain_data = {"ints": [0, 1, -1, 255, 256, 65535, 65536, -(2 ** 31), 2 ** 31, 2 ** 63 - 1, -(2 ** 63)],
              "big": 2 ** 64, "float": -1.5, "text": "abc", "none": None, "t": True, "f": False,
              "tuple": (1, (2, 3), ()), "empty": {}, "od": collections.OrderedDict([("x", 1)])}
for proto in range(6):
    with open(path("data_p%d.pkl" % proto), "wb") as f:
        pickle.dump(plain_data, f, protocol=proto)

with open(path("expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)

if "--seeds" in sys.argv:
    seeds = sys.argv[sys.argv.index("--seeds") + 1]
    os.makedirs(seeds, exist_ok=True)
    for name in ["bare.pt", "lightning.ckpt", "evil_top.pt", "zip64.pt", "newer_forms.pt", "data_p0.pkl", "data_p4.pkl"]:
        shutil.copy(path(name), os.path.join(seeds, name))
