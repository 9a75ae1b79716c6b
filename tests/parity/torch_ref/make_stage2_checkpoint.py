"""Writes a random-weight stage-2 checkpoint in the released on-disk layout.

  --kind rq        -> DIR/model.pt = torch.save({'state_dict', 'epoch'}) (RQTransformerRef keys)
                      DIR/config.yaml in the released stage-2 layout (dataset:, arch: {...,
                      body: {n_layer, block: {n_head}}, head: {...}}, loss:, optimizer:, experiment:)
                      DIR/codebook.npy: the stage-1 codebook [K+1, E] the model is paired with
                      (random, last row zero; or copied with --codebook-from STAGE1_DIR)
  --kind mindalle  -> DIR/stage2_last.ckpt = Lightning-style {'state_dict' (no prefix), 'epoch',
                      'global_step', 'pytorch-lightning_version', 'hyper_parameters' (an instance
                      of omegaconf.dictconfig.DictConfig from a stand-in module: a class a C++
                      unpickler does not know and must skip)}
                      DIR/config.yaml: the `stage2:` block (merged into an existing config.yaml,
                      e.g. one make_checkpoint.py --kind vqgan wrote; then vocab_size_img and
                      ctx_len_img follow its stage1 block, and dataset.context_length is set to
                      ctx_len_txt)

--size tiny: RQ C=64, 2+2 layers, 2 heads, codes 8x8x4, K=64, E=32 (the tiny stage-1 RQ-VAE's
  shapes), --cond text: V_c=100, L_c=8 | class: V_c=10, L_c=1 | none: 1, 1.
  minDALL-E C=64, 2 layers, 2 heads, ctx_len_txt 8, ctx_len_img 16 (4x4), K=64, text vocab 100.
--size real: the released shapes (RQ text = cc3m 654M, class = imagenet_480M, none = church;
  minDALL-E 1.3B). Several GB: slow. --arch JSON overrides shape fields (e.g. the 3.9B model:
  '{"embed_dim": 2560, "n_layer_body": 42, "n_layer_head": 6, "n_head": 40}'), --dtype bf16 builds
  and stores the weights in bf16 (half the memory and disk; the 3.9B model in 7.8 GB).

Weights: PyTorch default init, then LayerNorm weight 1+0.2N / bias 0.2N (a default LN would hide
a swapped weight/bias), positional tensors N(0, 0.3), input_mlp bias N(0, 0.5) (so that the
D-fold spatial bias of §2.3 is visible), and the classifier / head_img weights scaled so that
logits have a standard deviation of about 2: O(1), neither flat nor one-hot.
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mindalle_ref  # noqa: E402
import rq_transformer_ref  # noqa: E402

# A stand-in for omegaconf.dictconfig.DictConfig, registered under that module name so that the
# pickle refers to "omegaconf.dictconfig DictConfig", as a real Lightning checkpoint does.
_omegaconf = types.ModuleType("omegaconf")
_dictconfig = types.ModuleType("omegaconf.dictconfig")


class DictConfig:
    def __init__(self, content):
        self._content = content


DictConfig.__module__ = "omegaconf.dictconfig"
_dictconfig.DictConfig = DictConfig
_omegaconf.dictconfig = _dictconfig


def rq_shapes(size, cond):
    if size == "tiny":
        Vc, Lc = {"text": (100, 8), "class": (10, 1), "none": (1, 1)}[cond]
        return dict(embed_dim=64, n_layer_body=2, n_layer_head=2, n_head=2, block_size=[8, 8, 4],
                    vocab_size=64, vocab_size_cond=Vc, block_size_cond=Lc, input_embed_dim=32)
    C, body, head, nh, Vc, Lc = {"text": (1280, 26, 4, 20, 16384, 32), "class": (1536, 12, 4, 24, 1000, 1),
                                 "none": (1024, 24, 4, 16, 1, 1)}[cond]
    return dict(embed_dim=C, n_layer_body=body, n_layer_head=head, n_head=nh, block_size=[8, 8, 4],
                vocab_size=16384, vocab_size_cond=Vc, block_size_cond=Lc, input_embed_dim=256)


def gpt_shapes(size):
    if size == "tiny":
        return dict(vocab_size_txt=100, vocab_size_img=64, embed_dim=64, n_layers=2, n_heads=2,
                    ctx_len_txt=8, ctx_len_img=16)
    return dict(vocab_size_txt=16384, vocab_size_img=16384, embed_dim=1536, n_layers=42, n_heads=24,
                ctx_len_txt=64, ctx_len_img=256)


@torch.no_grad()
def randomize(model, gen):
    for name, p in model.named_parameters():
        if ".ln" in name or "layer_norm" in name or name.startswith("ln_f"):
            if name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif name.startswith("pos_emb_") and not name.endswith(".weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))  # RQ's bare positional tensors
        elif name.startswith("pos_emb_"):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))  # minDALL-E's nn.Embedding
        elif name == "input_mlp.bias":
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def scale_head(linear_weight, feats, target_std=2.0):
    """Scales a head so that logits on typical features have the target spread."""
    std = float((feats @ linear_weight.t()).std())
    linear_weight.mul_(target_std / max(std, 1e-6))


def rq_yaml(cfg, no_arch_vocab):
    import yaml
    text = cfg["block_size_cond"] > 1
    dataset = {"dataset": "cc3m" if text else "synthetic", "vocab_size": cfg["vocab_size"]}
    if text:
        dataset.update(txt_tok_name="bpe16k_huggingface", vocab_size_txt=cfg["vocab_size_cond"],
                       image_resolution=256, context_length=cfg["block_size_cond"], transforms="dalle-vqvae",
                       bpe_dropout=0.1)
    arch = {"type": "rq-transformer", "block_size": cfg["block_size"], "embed_dim": cfg["embed_dim"],
            "input_embed_dim": cfg["input_embed_dim"], "shared_tok_emb": True, "shared_cls_emb": True,
            "input_emb_vqvae": True, "head_emb_vqvae": True, "cumsum_depth_ctx": True,
            "vocab_size_cond": cfg["vocab_size_cond"], "block_size_cond": cfg["block_size_cond"]}
    if not no_arch_vocab:
        arch["vocab_size"] = cfg["vocab_size"]  # the training setup copies dataset.vocab_size here
    arch["body"] = {"n_layer": cfg["n_layer_body"], "block": {"n_head": cfg["n_head"]}}
    arch["head"] = {"n_layer": cfg["n_layer_head"], "block": {"n_head": cfg["n_head"]}}
    doc = {"dataset": dataset, "arch": arch,
           "loss": {"type": "soft_target_cross_entropy", "stochastic_codes": True, "temp": 0.5},
           "optimizer": {"type": "adamW", "init_lr": 0.0005, "weight_decay": 0.0001, "betas": [0.9, 0.95]},
           "experiment": {"amp": True, "batch_size": 32, "epochs": 100,
                          "sample": {"top_k": cfg["vocab_size"], "top_p": 0.7}}}
    return yaml.safe_dump(doc, sort_keys=False)


def make_rq(a):
    cfg = rq_shapes(a.size, a.cond)
    cfg.update(a.arch)
    codebook = None
    if a.codebook_from:
        sd1 = torch.load(os.path.join(a.codebook_from, "model.pt"), map_location="cpu")["state_dict"]
        codebook = sd1["quantizer.codebooks.0.weight"].float().clone()
        cfg["vocab_size"] = codebook.shape[0] - 1
        cfg["input_embed_dim"] = codebook.shape[1]
    gen = torch.Generator().manual_seed(a.seed + 1)
    if codebook is None:
        codebook = torch.randn(cfg["vocab_size"] + 1, cfg["input_embed_dim"], generator=gen)
        codebook[-1] = 0.0  # the padding row
    with open(os.path.join(a.out, "config.yaml"), "w") as f:
        f.write(rq_yaml(cfg, a.no_arch_vocab))
    model = rq_transformer_ref.RQTransformerRef(cfg).eval()  # in torch's default dtype (--dtype)
    randomize(model, gen)
    codebook_f32, codebook = codebook, codebook.to(torch.get_default_dtype())
    # scale the classifier on the features it sees for random codes
    B = 2
    codes = torch.randint(0, cfg["vocab_size"], (B, *cfg["block_size"]), generator=gen)
    cond = torch.randint(0, max(cfg["vocab_size_cond"], 1), (B, max(cfg["block_size_cond"], 1)), generator=gen)
    with torch.no_grad():
        feats = []
        h = model.classifier.layer_norm.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
        model(codes, cond, codebook)
        h.remove()
        scale_head(model.classifier.linear.weight, feats[0].reshape(-1, cfg["embed_dim"]))
        out = model(codes, cond, codebook)
        logits = out[0] if isinstance(out, tuple) else out
    torch.save({"state_dict": model.state_dict(), "epoch": 99}, os.path.join(a.out, "model.pt"))
    np.save(os.path.join(a.out, "codebook.npy"), codebook_f32.float().numpy().astype(np.float32))
    print(f"rq stage2: {sum(p.numel() for p in model.parameters())} params, logits std "
          f"{float(logits.std()):.3f}, max prob {float(torch.softmax(logits, -1).max(-1).values.mean()):.3f}")


def make_mindalle(a):
    import yaml
    cfg = gpt_shapes(a.size)
    cfg.update(a.arch)
    path = os.path.join(a.out, "config.yaml")
    doc = {}
    if os.path.exists(path):
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        s1 = doc.get("stage1")
        if s1:
            hp = s1.get("hparams", {})
            cfg["vocab_size_img"] = s1.get("n_embed", cfg["vocab_size_img"])
            side = hp.get("resolution", 256) >> (len(hp.get("ch_mult", [1, 1, 2, 2, 4])) - 1)
            cfg["ctx_len_img"] = side * side
    if a.ctx_len_img:
        cfg["ctx_len_img"] = a.ctx_len_img
    if a.text_vocab:
        cfg["vocab_size_txt"] = a.text_vocab
    doc["stage2"] = {"type": "transformer1d", "vocab_size_txt": cfg["vocab_size_txt"],
                     "vocab_size_img": cfg["vocab_size_img"], "use_cls_cond": None,
                     "hparams": {"embed_dim": cfg["embed_dim"], "n_layers": cfg["n_layers"],
                                 "n_heads": cfg["n_heads"], "n_dense_layers": cfg["n_layers"],
                                 "ctx_len_img": cfg["ctx_len_img"], "ctx_len_txt": cfg["ctx_len_txt"],
                                 "embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0,
                                 "mlp_bias": True, "attn_bias": True, "gelu_use_approx": False}}
    ds = doc.setdefault("dataset", {"tokenizer_type": "CharBPE", "image_resolution": 256})
    ds["context_length"] = cfg["ctx_len_txt"]
    with open(path, "w") as f:
        f.write(yaml.safe_dump(doc, sort_keys=False))

    gen = torch.Generator().manual_seed(a.seed + 1)
    model = mindalle_ref.Transformer1dRef(cfg).eval()
    randomize(model, gen)
    B = 2
    texts = torch.randint(0, cfg["vocab_size_txt"], (B, cfg["ctx_len_txt"]), generator=gen)
    codes = torch.randint(0, cfg["vocab_size_img"], (B, cfg["ctx_len_img"]), generator=gen)
    with torch.no_grad():
        feats = []
        h = model.ln_f.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
        model(texts, codes)
        h.remove()
        scale_head(model.head_img.weight, feats[0].reshape(-1, cfg["embed_dim"]))
        scale_head(model.head_txt.weight, feats[0].reshape(-1, cfg["embed_dim"]))
        logits, _ = model(texts, codes)
    sys.modules.setdefault("omegaconf", _omegaconf)
    sys.modules.setdefault("omegaconf.dictconfig", _dictconfig)
    torch.save({"state_dict": model.state_dict(), "epoch": 7, "global_step": 4242,
                "pytorch-lightning_version": "1.5.0", "hparams_name": "config",
                "hyper_parameters": DictConfig({"stage2": doc["stage2"]})},
               os.path.join(a.out, "stage2_last.ckpt"))
    print(f"mindalle stage2: {sum(p.numel() for p in model.parameters())} params, logits std "
          f"{float(logits.std()):.3f}, max prob {float(torch.softmax(logits, -1).max(-1).values.mean()):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["rq", "mindalle"], required=True)
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--cond", choices=["text", "class", "none"], default="text", help="RQ conditioning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--codebook-from", default=None, help="RQ: stage-1 DIR whose model.pt codebook to pair with")
    ap.add_argument("--no-arch-vocab", action="store_true",
                    help="RQ: leave arch.vocab_size out of config.yaml (K only in dataset.vocab_size)")
    ap.add_argument("--ctx-len-img", type=int, default=0, help="minDALL-E: override ctx_len_img")
    ap.add_argument("--text-vocab", type=int, default=0, help="minDALL-E: override vocab_size_txt")
    ap.add_argument("--arch", type=json.loads, default={}, help="JSON object of shape fields that override --size's")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="dtype of the stored weights")
    a = ap.parse_args()
    if not isinstance(a.arch, dict):
        ap.error("--arch must be a JSON object")
    if a.dtype == "bf16":
        torch.set_default_dtype(torch.bfloat16)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    if a.kind == "rq":
        make_rq(a)
    else:
        make_mindalle(a)


if __name__ == "__main__":
    main()
