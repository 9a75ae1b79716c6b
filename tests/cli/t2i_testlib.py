"""Fixtures for the text-to-image CLI tests (test_convert_t2i.py, test_generate.py, test_gallery.py).

Not a test itself (ctest runs only test_*.py). Builds, in a temp dir, tiny random checkpoints in
the released layouts with tests/parity/torch_ref (make_checkpoint.py + make_stage2_checkpoint.py
--size tiny), a tiny CharBPE vocabulary (85 tokens, fits the tiny models' 100 text ids), and
converts them with `hwaga convert rq` / `hwaga convert mindalle`:

  RQ:        32x32 pictures, codes 8x8x4, K 64, C 64, text 8 ids (256 sampling steps)
  minDALL-E: 32x32 pictures, codes 16x16, K 64, C 64, text 8 ids (256 sampling steps)
"""
import json
import os
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(__file__))
from hwaga_testlib import hwaga, torch_ref  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("r", "e"), ("d", "o"), ("do", "g</w>"),
          ("c", "a"), ("ca", "t</w>")]


def write_tiny_vocab(folder, vocab_name="vocab.json", merges_name="merges.txt"):
    """A CharBPE vocabulary in the released file formats: [PAD]=0, [UNK]=1, letters and digits with
    and without </w>, '.' and ',', and the merge results."""
    toks = ["[PAD]", "[UNK]"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
    toks += list("0123456789") + [d + "</w>" for d in "0123456789"] + [".</w>", ",</w>"]
    toks += [a + b for a, b in MERGES]
    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, vocab_name)
    merges = os.path.join(folder, merges_name)
    with open(vocab, "w") as f:
        json.dump({t: i for i, t in enumerate(toks)}, f)
    with open(merges, "w") as f:
        f.write("#version: 0.2\n" + "".join("%s %s\n" % m for m in MERGES))
    return vocab, merges


def make_rq_dirs(root, seed=0, n_embed=None):
    """root/rq/stage1 (model.pt + config.yaml) and root/rq/stage2 (paired with its codebook)."""
    s1 = os.path.join(root, "rq", "stage1")
    s2 = os.path.join(root, "rq", "stage2")
    args = ["--kind", "rq-vae", "--size", "tiny", "--seed", str(seed), "--out", s1]
    if n_embed:
        args += ["--n-embed", str(n_embed)]
    torch_ref("make_checkpoint.py", *args, timeout=300)
    torch_ref("make_stage2_checkpoint.py", "--kind", "rq", "--size", "tiny", "--cond", "text", "--seed", str(seed),
              "--codebook-from", s1, "--out", s2, timeout=300)
    return s1, s2


def make_mindalle_dir(root, seed=0):
    """root/md: config.yaml, stage1_last.ckpt, stage2_last.ckpt, tokenizer/bpe-16k-*."""
    d = os.path.join(root, "md")
    torch_ref("make_checkpoint.py", "--kind", "vqgan", "--size", "tiny", "--seed", str(seed), "--out", d, timeout=300)
    torch_ref("make_stage2_checkpoint.py", "--kind", "mindalle", "--size", "tiny", "--seed", str(seed), "--out", d,
              timeout=300)
    write_tiny_vocab(os.path.join(d, "tokenizer"), "bpe-16k-vocab.json", "bpe-16k-merges.txt")
    return d


def convert_rq(root, out, dtype="f32"):
    s1, s2 = os.path.join(root, "rq", "stage1"), os.path.join(root, "rq", "stage2")
    vocab, merges = write_tiny_vocab(os.path.join(root, "tok"))
    hwaga("convert", "rq", "--stage1", s1, "--stage2", s2, "--vocab", vocab, "--merges", merges, "-o", out,
          "--dtype", dtype, check=True)
    return out


def convert_mindalle(root, out, dtype="f32"):
    hwaga("convert", "mindalle", os.path.join(root, "md"), "-o", out, "--dtype", dtype, check=True)
    return out


def build_models(root):
    """Both tiny models as f32 model files: returns (rq.safetensors, md.safetensors)."""
    make_rq_dirs(root)
    make_mindalle_dir(root)
    return (convert_rq(root, os.path.join(root, "rq.safetensors")),
            convert_mindalle(root, os.path.join(root, "md.safetensors")))


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return header.pop("__metadata__", {}), header, 8 + n


def png_text(path):
    """{key: value} of a PNG's tEXt (Latin-1) and iTXt (UTF-8, uncompressed) chunks."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, out = 8, {}
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        pos += 12 + n
        if tag == b"tEXt":
            k, v = body.split(b"\x00", 1)
            out[k.decode("latin-1")] = v.decode("latin-1")
        elif tag == b"iTXt":
            k, rest = body.split(b"\x00", 1)
            comp, rest = rest[0], rest[2:]
            _lang, rest = rest.split(b"\x00", 1)
            _tkey, text = rest.split(b"\x00", 1)
            out[k.decode("latin-1")] = (zlib.decompress(text) if comp else text).decode("utf-8")
        elif tag == b"IEND":
            break
    return out


def copy_binary(src, dst_dir):
    """The hwaga executable in another folder (a hard link when possible), for the default-model lookup."""
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, "hwaga")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
