"""Independent PyTorch reference of the RQ-Transformer (stage 2 of rq-vae-transformer), written
from /work/shared/reference/architecture.md §2, §3, §5.1, §8 (not from the released code).

Module attribute names copy the released module tree, so state_dict keys match the released
checkpoints one to one:
  cond_emb.weight [V_c,C], pos_emb_cond [1,L_c,C], pos_emb_hw [1,H*W,C], pos_emb_d [1,D,C],
  input_mlp / head_mlp (Linear E->C), body_transformer.blocks.i.*, head_transformer.blocks.j.*
  (ln1, ln2, attn.{key,query,value,proj}, mlp.0, mlp.2), classifier.{layer_norm,linear},
  cond_classifier.{layer_norm,linear} (text models, L_c > 1).
The model has no token table: codes are embedded with the stage-1 codebook [K+1, E] (row K is
the padding row), passed in as a tensor. Everything runs in float32 (the released sampler ran
the matmuls under fp16 autocast; compare logits with a tolerance, or argmax codes).

CLI:
  logits --ckpt DIR [--stage1 DIR|codebook.npy] [--text-ids ids.json] --codes codes.npy --out logits.npy
      teacher-forced logits float32 [B,H,W,D,K] for codes int [B,H,W,D].
  sample --ckpt DIR [--stage1 ...] [--text-ids ids.json] (--greedy | [--top-k K[,K..]]
         [--top-p P[,P..]] [--temperature T]) [--seed S] [--n N] [--rng hwaga|torch] --out codes.npy
      the released cached sampling loop (§3.1) -> int64 [N,H,W,D].
DIR holds model.pt ({'state_dict': ...}) and config.yaml (released stage-2 layout). --stage1
defaults to DIR/codebook.npy (written by make_stage2_checkpoint.py); a directory means
DIR/model.pt of a stage-1 checkpoint (key quantizer.codebooks.0.weight). ids.json holds one id
list (repeated for every candidate) or one list per candidate; class models take [[label], ...];
without --text-ids the condition is all zeros (the SOS token of unconditional models).
--rng hwaga draws with hwaga's Philox streams (sample_ref.HwagaStreams), so codes can be
compared with hwaga's when the probabilities agree; --rng torch uses torch.multinomial.
"""
import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_ref  # noqa: E402

LN_EPS = 1e-5


# ---- the pre-norm GPT block shared by the body and head stacks (§2.1; minDALL-E §4.2 too) ----

class SelfAttention(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        assert C % n_head == 0
        self.n_head = n_head
        self.key = nn.Linear(C, C)
        self.query = nn.Linear(C, C)
        self.value = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)

    def forward(self, x, past=None):
        """x [B,T,C]; past = (k, v) each [B,nh,T_past,hd] or None -> (y [B,T,C], (k, v))."""
        B, T, C = x.shape
        nh, hd = self.n_head, C // self.n_head
        # heads are contiguous channel slices: channel c = head*hd + j
        q = self.query(x).view(B, T, nh, hd).transpose(1, 2)
        k = self.key(x).view(B, T, nh, hd).transpose(1, 2)
        v = self.value(x).view(B, T, nh, hd).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        T_all = k.shape[2]
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd)  # [B,nh,T,T_all]
        # causal: new token i (absolute position T_all-T+i) sees keys 0..T_all-T+i
        qpos = torch.arange(T_all - T, T_all).view(T, 1)
        kpos = torch.arange(T_all).view(1, T_all)
        att = att.masked_fill(kpos > qpos, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        self.attn = SelfAttention(C, n_head)
        # mlp.0 Linear(C,4C), mlp.1 exact erf GELU, mlp.2 Linear(4C,C), mlp.3 Dropout (no params)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C), nn.Dropout(0.0))

    def forward(self, x, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, present


class Stack(nn.Module):
    def __init__(self, n_layer, C, n_head):
        super().__init__()
        self.blocks = nn.ModuleList([Block(C, n_head) for _ in range(n_layer)])

    def forward(self, x, cache=None):
        """cache: list of per-layer (k, v) (updated in place) or None for a plain forward."""
        for i, blk in enumerate(self.blocks):
            past = cache[i] if cache is not None else None
            x, present = blk(x, past)
            if cache is not None:
                cache[i] = present
        return x


def classifier_head(C, n_out):
    return nn.Sequential(OrderedDict([("layer_norm", nn.LayerNorm(C, eps=LN_EPS)),
                                      ("linear", nn.Linear(C, n_out))]))


# ---- the RQ-Transformer ----

class RQTransformerRef(nn.Module):
    def __init__(self, cfg):
        """cfg: dict with embed_dim, n_layer_body, n_layer_head, n_head, block_size [H,W,D],
        vocab_size K, vocab_size_cond V_c, block_size_cond L_c, input_embed_dim E."""
        super().__init__()
        C = cfg["embed_dim"]
        self.H, self.W, self.D = cfg["block_size"]
        self.K = cfg["vocab_size"]
        self.V_c = max(cfg["vocab_size_cond"], 1)
        self.L_c = max(cfg["block_size_cond"], 1)
        E = cfg["input_embed_dim"]
        self.cond_emb = nn.Embedding(self.V_c, C)
        self.pos_emb_cond = nn.Parameter(torch.zeros(1, self.L_c, C))
        self.pos_emb_hw = nn.Parameter(torch.zeros(1, self.H * self.W, C))
        self.pos_emb_d = nn.Parameter(torch.zeros(1, self.D, C))
        self.input_mlp = nn.Linear(E, C)
        self.head_mlp = nn.Linear(E, C)
        self.body_transformer = Stack(cfg["n_layer_body"], C, cfg["n_head"])
        self.head_transformer = Stack(cfg["n_layer_head"], C, cfg["n_head"])
        self.classifier = classifier_head(C, self.K)
        if self.L_c > 1:
            self.cond_classifier = classifier_head(C, self.V_c)

    # -- pieces (§2.3, §2.4) --
    def cond_tokens(self, cond):
        """cond [B,L_c] -> s [B,L_c,C] = cond_emb[y_j] + pos_emb_cond[j]."""
        return self.cond_emb(cond) + self.pos_emb_cond[:, :cond.shape[1]]

    def spatial_input(self, e, p0):
        """e [B,P,D,E] codebook vectors of positions p0..p0+P-1 -> u [B,P,C]:
        Σ_d input_mlp(e_d) (the bias counts D times) + pos_emb_hw[p]."""
        P = e.shape[1]
        return self.input_mlp(e).sum(dim=2) + self.pos_emb_hw[:, p0:p0 + P]

    def depth_inputs(self, h, e):
        """h [N,C] spatial context, e [N,D,E] -> v [N,D,C]: slot 0 = h, slot d = head_mlp(e_0+..+e_{d-1});
        + pos_emb_d; no pos_emb_hw."""
        cum = torch.cumsum(e, dim=1)[:, :-1]  # e_0, e_0+e_1, ...
        v = torch.cat([h.unsqueeze(1), self.head_mlp(cum)], dim=1)
        return v + self.pos_emb_d[:, :v.shape[1]]

    def forward(self, codes, cond, codebook):
        """Teacher-forced: codes int [B,H,W,D], cond int [B,L_c], codebook [K+1,E] ->
        logits [B,H,W,D,K] (and cond_logits [B,L_c-1,V_c] for text models)."""
        B = codes.shape[0]
        HW = self.H * self.W
        e = codebook[codes.reshape(B, HW, self.D)]  # [B,HW,D,E]
        u = self.spatial_input(e, 0)
        seq = torch.cat([self.cond_tokens(cond), u[:, :-1]], dim=1)  # [B, L_c+HW-1, C]
        out = self.body_transformer(seq)
        h = out[:, self.L_c - 1:]  # [B,HW,C]: output at L_c-1+p predicts position p
        v = self.depth_inputs(h.reshape(B * HW, -1), e.reshape(B * HW, self.D, -1))
        o = self.head_transformer(v)
        logits = self.classifier(o).reshape(B, self.H, self.W, self.D, self.K)
        if self.L_c > 1:
            return logits, self.cond_classifier(out[:, :self.L_c - 1])
        return logits

    @torch.no_grad()
    def sample(self, cond, codebook, pick):
        """The cached loop of §3.1. pick(logits [B,K], d) -> codes [B]. Returns int64 [B,H,W,D]."""
        B = cond.shape[0]
        codes = torch.zeros(B, self.H, self.W, self.D, dtype=torch.long)
        body_cache = [None] * len(self.body_transformer.blocks)
        for p in range(self.H * self.W):
            h_, w_ = divmod(p, self.W)
            if p == 0:
                h = self.body_transformer(self.cond_tokens(cond), body_cache)[:, -1]
            else:
                hp, wp = divmod(p - 1, self.W)
                e_prev = codebook[codes[:, hp, wp]].unsqueeze(1)  # [B,1,D,E], all D codes of p-1
                h = self.body_transformer(self.spatial_input(e_prev, p - 1), body_cache)[:, -1]
            head_cache = [None] * len(self.head_transformer.blocks)  # cleared at d = 0, every position
            for d in range(self.D):
                if d == 0:
                    v = h + self.pos_emb_d[:, 0]
                else:
                    cum = codebook[codes[:, h_, w_, :d]].sum(dim=1)
                    v = self.head_mlp(cum) + self.pos_emb_d[:, d]
                o = self.head_transformer(v.unsqueeze(1), head_cache)[:, -1]
                logits = self.classifier(o)
                codes[:, h_, w_, d] = pick(logits, d)
        return codes


# ---- loading ----

def read_config(yaml_path):
    """The released stage-2 config.yaml -> cfg dict (arch.vocab_size, else dataset.vocab_size)."""
    import yaml
    with open(yaml_path) as f:
        y = yaml.safe_load(f)
    a = y["arch"]
    K = a.get("vocab_size", None)
    if K is None:
        K = y["dataset"]["vocab_size"]
    if isinstance(K, list):
        K = K[0]
    for flag in ("shared_tok_emb", "shared_cls_emb", "input_emb_vqvae", "head_emb_vqvae", "cumsum_depth_ctx"):
        if not a.get(flag, False):
            raise SystemExit(f"{yaml_path}: arch.{flag} must be true for this reference")
    return dict(embed_dim=a["embed_dim"], n_layer_body=a["body"]["n_layer"], n_layer_head=a["head"]["n_layer"],
                n_head=a["body"]["block"]["n_head"], block_size=list(a["block_size"]), vocab_size=K,
                vocab_size_cond=a.get("vocab_size_cond", 0), block_size_cond=a.get("block_size_cond", 0),
                input_embed_dim=a["input_embed_dim"])


def load_model(ckpt_dir):
    cfg = read_config(os.path.join(ckpt_dir, "config.yaml"))
    model = RQTransformerRef(cfg)
    sd = torch.load(os.path.join(ckpt_dir, "model.pt"), map_location="cpu")["state_dict"]
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg


def load_codebook(path, ckpt_dir):
    if path is None:
        path = os.path.join(ckpt_dir, "codebook.npy")
    if os.path.isdir(path):
        sd = torch.load(os.path.join(path, "model.pt"), map_location="cpu")["state_dict"]
        return sd["quantizer.codebooks.0.weight"].float()
    return torch.from_numpy(np.load(path)).float()


def load_cond(path, n, L_c):
    if path is None:
        return torch.zeros(n, L_c, dtype=torch.long)
    with open(path) as f:
        ids = json.load(f)
    if ids and not isinstance(ids[0], list):
        ids = [ids]
    if len(ids) == 1 and n > 1:
        ids = ids * n
    t = torch.tensor(ids, dtype=torch.long)
    if t.shape[1] != L_c:
        raise SystemExit(f"{path}: {t.shape[1]} ids per row, the model takes block_size_cond = {L_c}")
    return t


def parse_list(s, typ):
    return None if s is None else [typ(v) for v in s.split(",")]


def make_picker(a, n, semantics, D):
    """Returns pick(logits [B,K], d) for the sampling loop: greedy or filtered + one draw."""
    top_k, top_p = parse_list(a.top_k, int), parse_list(a.top_p, float)
    if a.greedy:
        return lambda logits, d: torch.argmax(logits, dim=-1)
    streams = sample_ref.HwagaStreams(a.seed, n) if a.rng == "hwaga" else None
    gen = torch.Generator().manual_seed(a.seed)

    def per_depth(lst, d):
        if lst is None:
            return None
        return lst[0] if len(lst) == 1 else lst[d]

    def pick(logits, d):
        if semantics == "rq":
            probs = sample_ref.rq_probs(logits, a.temperature, per_depth(top_k, d), per_depth(top_p, d))
        else:
            probs = sample_ref.mindalle_probs(logits, a.temperature, per_depth(top_k, d), per_depth(top_p, d))
        if streams is not None:
            return streams.draw(probs)
        return torch.multinomial(probs, 1, generator=gen).view(-1)

    return pick


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["logits", "sample"])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--stage1", default=None)
    ap.add_argument("--text-ids", "--cond-ids", dest="text_ids", default=None)
    ap.add_argument("--codes", default=None)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--top-k", default=None, help="K or K0,K1,K2,K3 (per depth)")
    ap.add_argument("--top-p", default=None, help="P or P0,P1,P2,P3 (per depth)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--rng", choices=["hwaga", "torch"], default="hwaga")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    model, cfg = load_model(a.ckpt)
    codebook = load_codebook(a.stage1, a.ckpt)
    E = cfg["input_embed_dim"]
    if tuple(codebook.shape) != (model.K + 1, E):
        raise SystemExit(f"codebook shape {tuple(codebook.shape)} does not match K+1={model.K + 1}, E={E}")
    with torch.no_grad():
        if a.cmd == "logits":
            if a.codes is None:
                raise SystemExit("logits needs --codes")
            codes = torch.from_numpy(np.load(a.codes).astype(np.int64))
            cond = load_cond(a.text_ids, codes.shape[0], model.L_c)
            out = model(codes, cond, codebook)
            logits = out[0] if isinstance(out, tuple) else out
            np.save(a.out, logits.numpy().astype(np.float32))
        else:
            cond = load_cond(a.text_ids, a.n, model.L_c)
            pick = make_picker(a, cond.shape[0], "rq", model.D)
            codes = model.sample(cond, codebook, pick)
            np.save(a.out, codes.numpy().astype(np.int64))


if __name__ == "__main__":
    main()
