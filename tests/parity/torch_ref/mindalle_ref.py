"""Independent PyTorch reference of minDALL-E's stage 2 (Transformer1d, the text-to-image GPT),
written from /work/shared/reference/architecture.md §4.2, §4.4, §5.2, §8 (not from the released code).

state_dict keys as released: tok_emb_img.weight [K,C], tok_emb_txt.weight [V,C],
pos_emb_img.weight [ctx_len_img,C], pos_emb_txt.weight [ctx_len_txt,C] (nn.Embedding),
blocks.i.{ln1,ln2,attn.{key,query,value,proj},mlp.0,mlp.2}, ln_f, head_img / head_txt (no bias).
Sequence [txt_i + pos_txt_i]_{i<N} ++ [img_j + pos_img_j]_{j<T}; the output at N-1+j (after ln_f)
predicts image code j through head_img. Everything runs in float32.

CLI:
  logits --ckpt DIR --text-ids ids.json --codes codes.npy --out logits.npy
      teacher-forced image logits float32 [B,T,K] (codes int [B,h,w(,1)] or [B,T], raster order).
  sample --ckpt DIR --text-ids ids.json (--greedy | [--top-k K] [--top-p P] [--temperature T])
         [--seed S] [--n N] [--rng hwaga|torch] --out codes.npy
      the cached loop of §4.4 -> int64 [N,h,w,1] (h = w = sqrt(ctx_len_img)).
DIR holds stage2_last.ckpt (Lightning-style, weights under 'state_dict') and config.yaml with
the `stage2:` block. --stage1 is accepted and ignored (the GPT has its own image token table).
"""
import argparse
import json
import math
import os
import pickle
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_ref  # noqa: E402
from rq_transformer_ref import Block, LN_EPS  # noqa: E402  (the same pre-norm block, §4.2)


class Transformer1dRef(nn.Module):
    def __init__(self, cfg):
        """cfg: vocab_size_txt, vocab_size_img, embed_dim, n_layers, n_heads, ctx_len_txt, ctx_len_img."""
        super().__init__()
        C = cfg["embed_dim"]
        self.N = cfg["ctx_len_txt"]
        self.T = cfg["ctx_len_img"]
        self.K = cfg["vocab_size_img"]
        self.tok_emb_img = nn.Embedding(cfg["vocab_size_img"], C)
        self.tok_emb_txt = nn.Embedding(cfg["vocab_size_txt"], C)
        self.pos_emb_img = nn.Embedding(self.T, C)
        self.pos_emb_txt = nn.Embedding(self.N, C)
        self.blocks = nn.Sequential(*[Block(C, cfg["n_heads"]) for _ in range(cfg["n_layers"])])
        self.ln_f = nn.LayerNorm(C, eps=LN_EPS)
        self.head_img = nn.Linear(C, cfg["vocab_size_img"], bias=False)
        self.head_txt = nn.Linear(C, cfg["vocab_size_txt"], bias=False)

    def run_blocks(self, x, cache=None):
        for i, blk in enumerate(self.blocks):
            x, present = blk(x, cache[i] if cache is not None else None)
            if cache is not None:
                cache[i] = present
        return x

    def forward(self, texts, codes):
        """texts [B,N], codes [B,T'] (T' <= T) -> (logits_img [B,T',K], logits_txt [B,N-1,V])."""
        B, Tp = codes.shape
        t = self.tok_emb_txt(texts) + self.pos_emb_txt(torch.arange(self.N))
        i = self.tok_emb_img(codes) + self.pos_emb_img(torch.arange(Tp))
        x = self.ln_f(self.run_blocks(torch.cat([t, i], dim=1)))
        return self.head_img(x[:, self.N - 1:-1]), self.head_txt(x[:, :self.N - 1])

    @torch.no_grad()
    def sample(self, texts, pick):
        """§4.4: step 0 runs the N text tokens (cached) and reads position N-1; step j feeds
        code j-1 with pos_img j-1 alone. pick(logits [B,K], d=0) -> codes [B]."""
        B = texts.shape[0]
        cache = [None] * len(self.blocks)
        x = self.tok_emb_txt(texts) + self.pos_emb_txt(torch.arange(self.N))
        codes = torch.zeros(B, self.T, dtype=torch.long)
        for j in range(self.T):
            if j > 0:
                x = (self.tok_emb_img(codes[:, j - 1]) + self.pos_emb_img.weight[j - 1]).unsqueeze(1)
            h = self.run_blocks(x, cache)
            logits = self.head_img(self.ln_f(h[:, -1]))
            codes[:, j] = pick(logits, 0)
        return codes


# ---- loading ----

class _Unknown:
    """Stands in for any class a Lightning checkpoint pickles that we do not have (OmegaConf...)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _SkippingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Unknown


def load_lightning_ckpt(path):
    """torch.load that turns classes it cannot import into _Unknown. (Debian's torch 1.13 ignores
    torch.load's pickle_module argument, so pickle.Unpickler is swapped for the call.)"""
    saved = pickle.Unpickler
    pickle.Unpickler = _SkippingUnpickler
    try:
        return torch.load(path, map_location="cpu")
    finally:
        pickle.Unpickler = saved


def read_config(yaml_path):
    import yaml
    with open(yaml_path) as f:
        y = yaml.safe_load(f)
    s2 = y["stage2"]
    hp = s2.get("hparams", {}) or {}
    cfg = dict(vocab_size_txt=s2.get("vocab_size_txt", 16384), vocab_size_img=s2.get("vocab_size_img", 16384),
               embed_dim=hp.get("embed_dim", 1536), n_layers=hp.get("n_layers", 42), n_heads=hp.get("n_heads", 24),
               ctx_len_txt=hp.get("ctx_len_txt", 64), ctx_len_img=hp.get("ctx_len_img", 256))
    if hp.get("gelu_use_approx", False) or not hp.get("mlp_bias", True) or not hp.get("attn_bias", True):
        raise SystemExit(f"{yaml_path}: this reference implements exact GELU with biases only")
    return cfg


def load_model(ckpt_dir):
    cfg = read_config(os.path.join(ckpt_dir, "config.yaml"))
    model = Transformer1dRef(cfg)
    ck = load_lightning_ckpt(os.path.join(ckpt_dir, "stage2_last.ckpt"))
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.eval(), cfg


def load_texts(path, n, N):
    with open(path) as f:
        ids = json.load(f)
    if ids and not isinstance(ids[0], list):
        ids = [ids]
    if len(ids) == 1 and n > 1:
        ids = ids * n
    t = torch.tensor(ids, dtype=torch.long)
    if t.shape[1] != N:
        raise SystemExit(f"{path}: {t.shape[1]} ids per row, the model takes ctx_len_txt = {N}")
    return t


def main():
    import rq_transformer_ref as rq
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["logits", "sample"])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--stage1", default=None, help="ignored (accepted for a CLI shared with rq_transformer_ref.py)")
    ap.add_argument("--text-ids", required=True)
    ap.add_argument("--codes", default=None)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--top-k", default=None)
    ap.add_argument("--top-p", default=None)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--rng", choices=["hwaga", "torch"], default="hwaga")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    model, cfg = load_model(a.ckpt)
    side = int(math.isqrt(model.T))
    with torch.no_grad():
        if a.cmd == "logits":
            if a.codes is None:
                raise SystemExit("logits needs --codes")
            codes = torch.from_numpy(np.load(a.codes).astype(np.int64))
            codes = codes.reshape(codes.shape[0], -1)
            texts = load_texts(a.text_ids, codes.shape[0], model.N)
            logits, _ = model(texts, codes)
            np.save(a.out, logits.numpy().astype(np.float32))
        else:
            texts = load_texts(a.text_ids, a.n, model.N)
            pick = rq.make_picker(a, texts.shape[0], "mindalle", 1)
            codes = model.sample(texts, pick)
            if side * side == model.T:
                codes = codes.reshape(-1, side, side, 1)
            np.save(a.out, codes.numpy().astype(np.int64))


if __name__ == "__main__":
    main()
