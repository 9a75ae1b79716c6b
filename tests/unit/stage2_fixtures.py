#!/usr/bin/python3
"""Builds the stage-2 fixtures that tests/unit/test_stage2_models.cpp compares hwaga against.

Usage: /usr/bin/python3 stage2_fixtures.py CASE OUT_DIR
CASE: rq-tiny | gpt-tiny (f32 weights, the tiny shapes of make_stage2_checkpoint.py) |
      rq-real (bf16: C=1280, 20 heads, E=256, L_c=32 like rq-cc3m-654m, but 2 body + 1 head
      layers, K=4096, V_c=2048) | gpt-real (bf16: C=1536, 24 heads, 64 text ids, 16x16
      codes like minDALL-E 1.3B, but 2 layers, K=4096, V=2048). The vocabularies are cut to keep
      the fixture small (K is only a row count of the head; the widths and head splits are real).
For the bf16 cases the stage-2 weights are rounded to bf16 BEFORE the reference runs, so both
sides compute with the same weight values and the comparison is an f32 one.

OUT_DIR receives
  model.safetensors  the hwaga model file (written here: 8-byte LE header length + JSON header +
                     raw data; metadata format=hwaga, version=1, config {stage1, stage2, text})
  settings.json      text ids, sampler settings, seed and candidate counts
  codes.npy          int64 [2,h,w,D] random codes for teacher forcing
  logits.npy         the reference's teacher-forced logits f32 [2,h,w,D,K] (minDALL-E: [2,T,K])
  greedy.npy         the reference's cached loop, greedy, 2 candidates
  sampled.npy        the reference's cached loop with temperature/top-k/top-p, 3 candidates,
                     drawn with hwaga's Philox streams (--rng hwaga)
"""
import json
import os
import struct
import sys

import numpy as np

# One thread: the references run hundreds of tiny steps, where torch's thread pool only spins
# (22 s instead of 1 s for a tiny sampling loop on a loaded 2-core machine). The scripts call
# set_num_threads themselves, so it is pinned here; OpenBLAS, which torch multiplies through
# (tools/torch_blas.py), sizes its own pool from the environment when it loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
torch.set_num_threads(1)
torch.set_num_threads = lambda n: None

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "parity", "torch_ref")
sys.path.insert(0, REF)
import make_checkpoint as mc  # noqa: E402
import make_stage2_checkpoint as m2  # noqa: E402
import mindalle_ref  # noqa: E402
import rq_transformer_ref  # noqa: E402
import taming_ref  # noqa: E402

def run(args):
    """Runs one of the torch_ref scripts' main() in this process (importing torch once instead of
    once per script keeps the fixture fast), with its stdout silenced."""
    import contextlib
    import importlib
    import io
    name = os.path.splitext(os.path.basename(args[0]))[0]
    module = importlib.import_module(name)
    saved = sys.argv
    sys.argv = [args[0]] + list(args[1:])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module.main()
    finally:
        sys.argv = saved


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, v in header.items():
        assert v["dtype"] == "F32", v
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[base + a:base + b], dtype=np.float32).reshape(v["shape"]).copy())
    return out, meta


def write_model(path, tensors, metadata):
    """tensors: name -> (torch tensor, 'F32'|'BF16'); every tensor starts 64-byte aligned."""
    header, offset, blobs = {}, 0, []
    for name, (t, dt) in tensors.items():
        t = t.detach().contiguous()
        if dt == "BF16":
            raw = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        else:
            raw = t.to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        pad = (-len(raw)) % 64
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header["__metadata__"] = metadata
    hj = json.dumps(header).encode()
    hj += b" " * ((-(8 + len(hj))) % 64)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def round_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def rq_stage2_json(cfg):
    return {"type": "rq-transformer", "embed_dim": cfg["embed_dim"], "n_layer_body": cfg["n_layer_body"],
            "n_layer_head": cfg["n_layer_head"], "n_head": cfg["n_head"], "block_size": cfg["block_size"],
            "vocab_size": cfg["vocab_size"], "vocab_size_cond": cfg["vocab_size_cond"],
            "block_size_cond": cfg["block_size_cond"], "input_embed_dim": cfg["input_embed_dim"]}


def gpt_stage2_json(cfg):
    keys = ("vocab_size_txt", "vocab_size_img", "embed_dim", "n_layers", "n_heads", "ctx_len_txt", "ctx_len_img")
    return dict({"type": "mindalle-gpt"}, **{k: cfg[k] for k in keys})


def make_rq_real(out, gen):
    """Stage 1: a small RQ-VAE (32x32 -> 8x8x4) with 256-d codebook vectors, as released;
    stage 2: the rq-cc3m-654m widths with 2 + 1 layers, rounded to bf16."""
    s1 = os.path.join(out, "s1")
    os.makedirs(s1, exist_ok=True)
    dd, _, _ = mc.shapes("rq-vae", "tiny", "attn8", 0)
    dd["z_channels"] = 256
    E, K = 256, 4096
    with open(os.path.join(s1, "config.yaml"), "w") as f:
        f.write(mc.rq_yaml(dd, E, K))
    vae, _, js = taming_ref.load_config(s1, "rq-vae")
    with torch.no_grad():
        w = vae.quantizer.codebooks[0].weight
        w[:K].copy_(torch.randn(K, E, generator=gen) * 0.5)
        w[K].zero_()
    s1_tensors = {}
    for k, v in vae.state_dict().items():
        if k.startswith("quantizer.codebooks.") and not k.startswith("quantizer.codebooks.0.weight"):
            continue
        if k.startswith("quantizer.codebooks.0.") and not k.endswith(".weight"):
            continue
        s1_tensors["stage1." + k] = v
    cfg = dict(embed_dim=1280, n_layer_body=2, n_layer_head=1, n_head=20, block_size=[8, 8, 4], vocab_size=K,
               vocab_size_cond=2048, block_size_cond=32, input_embed_dim=E)
    s2 = os.path.join(out, "s2")
    os.makedirs(s2, exist_ok=True)
    codebook = vae.quantizer.codebooks[0].weight.detach().clone()
    model = rq_transformer_ref.RQTransformerRef(cfg).eval()
    m2.randomize(model, gen)
    codes = torch.randint(0, K, (2, 8, 8, 4), generator=gen)
    cond = torch.randint(0, 2048, (2, 32), generator=gen)
    with torch.no_grad():
        feats = []
        h = model.classifier.layer_norm.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
        model(codes, cond, codebook)
        h.remove()
        m2.scale_head(model.classifier.linear.weight, feats[0].reshape(-1, cfg["embed_dim"]))
    round_bf16(model)
    with open(os.path.join(s2, "config.yaml"), "w") as f:
        f.write(m2.rq_yaml(cfg, False))
    torch.save({"state_dict": model.state_dict()}, os.path.join(s2, "model.pt"))
    np.save(os.path.join(s2, "codebook.npy"), codebook.numpy().astype(np.float32))
    return s1_tensors, js, s2, cfg


def make_gpt_real(out, gen):
    d = os.path.join(out, "g")
    run([os.path.join(REF, "make_checkpoint.py"), "--kind", "vqgan", "--size", "tiny", "--n-embed", "4096",
         "--seed", "3", "--safetensors", "--out", d])
    s1_tensors, meta = read_safetensors(os.path.join(d, "model.safetensors"))
    js = json.loads(meta["config"])["stage1"]
    cfg = dict(vocab_size_txt=2048, vocab_size_img=4096, embed_dim=1536, n_layers=2, n_heads=24, ctx_len_txt=64,
               ctx_len_img=256)
    model = mindalle_ref.Transformer1dRef(cfg).eval()
    m2.randomize(model, gen)
    texts = torch.randint(0, 2048, (2, 64), generator=gen)
    codes = torch.randint(0, 4096, (2, 256), generator=gen)
    with torch.no_grad():
        feats = []
        h = model.ln_f.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
        model(texts, codes)
        h.remove()
        m2.scale_head(model.head_img.weight, feats[0].reshape(-1, 1536))
        m2.scale_head(model.head_txt.weight, feats[0].reshape(-1, 1536))
    round_bf16(model)
    import yaml
    path = os.path.join(d, "config.yaml")
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["stage2"] = {"type": "transformer1d", "vocab_size_txt": 2048, "vocab_size_img": 4096, "use_cls_cond": None,
                     "hparams": {"embed_dim": 1536, "n_layers": 2, "n_heads": 24, "n_dense_layers": 2,
                                 "ctx_len_img": 256, "ctx_len_txt": 64, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
                                 "attn_pdrop": 0.0, "mlp_bias": True, "attn_bias": True, "gelu_use_approx": False}}
    with open(path, "w") as f:
        f.write(yaml.safe_dump(doc, sort_keys=False))
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, os.path.join(d, "stage2_last.ckpt"))
    return s1_tensors, js, d, cfg


def main():
    case, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    rq = case.startswith("rq")
    real = case.endswith("real")
    dtype = "BF16" if real else "F32"
    if case == "rq-tiny":
        s1 = os.path.join(out, "s1")
        run([os.path.join(REF, "make_checkpoint.py"), "--kind", "rq-vae", "--size", "tiny", "--seed", "3",
             "--safetensors", "--out", s1])
        s2 = os.path.join(out, "s2")
        run([os.path.join(REF, "make_stage2_checkpoint.py"), "--kind", "rq", "--size", "tiny", "--cond", "text",
             "--codebook-from", s1, "--seed", "5", "--out", s2])
        s1_tensors, meta = read_safetensors(os.path.join(s1, "model.safetensors"))
        js = json.loads(meta["config"])["stage1"]
        ckpt = s2
        model, cfg = rq_transformer_ref.load_model(s2)
    elif case == "gpt-tiny":
        ckpt = os.path.join(out, "g")
        run([os.path.join(REF, "make_checkpoint.py"), "--kind", "vqgan", "--size", "tiny", "--seed", "3",
             "--safetensors", "--out", ckpt])
        run([os.path.join(REF, "make_stage2_checkpoint.py"), "--kind", "mindalle", "--size", "tiny", "--seed", "5",
             "--out", ckpt])
        s1_tensors, meta = read_safetensors(os.path.join(ckpt, "model.safetensors"))
        js = json.loads(meta["config"])["stage1"]
        model, cfg = mindalle_ref.load_model(ckpt)
    elif case == "rq-real":
        s1_tensors, js, ckpt, cfg = make_rq_real(out, gen)
        model, cfg = rq_transformer_ref.load_model(ckpt)
    elif case == "gpt-real":
        s1_tensors, js, ckpt, cfg = make_gpt_real(out, gen)
        model, cfg = mindalle_ref.load_model(ckpt)
    else:
        raise SystemExit("unknown case " + case)

    tensors = {k: (v, "F32") for k, v in s1_tensors.items()}
    for k, v in model.state_dict().items():
        tensors["stage2." + k] = (v, dtype)
    if rq:
        s2j, L, V, K = rq_stage2_json(cfg), cfg["block_size_cond"], cfg["vocab_size_cond"], cfg["vocab_size"]
        shape = list(cfg["block_size"])
    else:
        s2j, L, V, K = gpt_stage2_json(cfg), cfg["ctx_len_txt"], cfg["vocab_size_txt"], cfg["vocab_size_img"]
        side = int(round(cfg["ctx_len_img"] ** 0.5))
        shape = [side, side, 1]
    config = {"stage1": js, "stage2": s2j, "text": {"tokenizer": "", "context_length": L}}
    write_model(os.path.join(out, "model.safetensors"), tensors,
                {"format": "hwaga", "version": "1", "config": json.dumps(config)})

    # inputs and reference runs
    text = [int(x) for x in torch.randint(2, V, (L,), generator=gen)]
    text[L // 2:] = [0] * (L - L // 2)  # right-padded with [PAD] = 0, as the tokenizer does
    codes = torch.randint(0, K, (2, *shape), generator=gen)
    np.save(os.path.join(out, "codes.npy"), codes.numpy().astype(np.int64))
    with open(os.path.join(out, "text.json"), "w") as f:
        json.dump(text, f)
    if rq:
        top_k = [8, 16, 32, 48] if not real else [64, 256, 1024, 4096]
        top_p = [0.9]
    else:
        top_k = [16] if not real else [256]
        top_p = [0.95]
    settings = {"text": text, "temperature": 0.9, "top_k": top_k, "top_p": top_p, "seed": 7, "n_sampled": 3,
                "n_greedy": 2, "dtype": dtype}
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(settings, f)
    ref = os.path.join(REF, "rq_transformer_ref.py" if rq else "mindalle_ref.py")
    common = ["--ckpt", ckpt, "--text-ids", os.path.join(out, "text.json")]
    run([ref, "logits"] + common + ["--codes", os.path.join(out, "codes.npy"), "--out", os.path.join(out, "logits.npy")])
    run([ref, "sample"] + common + ["--greedy", "--n", "2", "--out", os.path.join(out, "greedy.npy")])
    run([ref, "sample"] + common + ["--temperature", "0.9", "--top-k", ",".join(map(str, top_k)), "--top-p",
                                    ",".join(map(str, top_p)), "--seed", "7", "--n", "3", "--rng", "hwaga",
                                    "--out", os.path.join(out, "sampled.npy")])
    # the released-layout checkpoints are no longer needed (they are most of the size)
    import shutil
    for sub in ("s1", "s2", "g"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)


if __name__ == "__main__":
    main()
