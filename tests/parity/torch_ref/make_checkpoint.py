"""Writes a random-weight stage-1 checkpoint in the released on-disk layout.

  --kind rq-vae  -> DIR/model.pt  = torch.save({'state_dict', 'epoch', 'optimizer', 'scheduler'})
                    DIR/config.yaml (rq-vae-transformer layout: arch.hparams + arch.ddconfig)
  --kind vqgan   -> DIR/stage1_last.ckpt = Lightning-style {'state_dict' (no prefix), 'epoch',
                    'global_step', 'optimizer_states', 'lr_schedulers', 'hyper_parameters'
                    (an instance of a class defined here, standing in for OmegaConf objects)}
                    DIR/config.yaml (minDALL-E layout: stage1 + stage2 blocks)
  --safetensors  -> also DIR/model.safetensors, a hwaga model file written by hand
                    (8-byte LE header length + JSON header + data; metadata format=hwaga,
                    version=1, config={"stage1": ...}), tensors "stage1.<key>" without the
                    aliased codebooks.1-3 and the EMA buffers.

--size tiny: small shapes for fast tests (RQ: 32x32 -> 8x8x4 with ch_mult [1,1,2];
VQGAN: 32x32 -> 16x16 with ch_mult [1,2]; ch 32, z/embed 32, K 64 unless --n-embed).
--size full: the released shapes. --variant attn8|attn16 picks the RQ attention level
(tiny: attention at 8 or at 16; VQGAN always attends at 16).

Weights: torch default init for convs; GroupNorm affine parameters and the codebook are drawn
at random too (a default-init GroupNorm is the identity and would hide a swapped weight/bias).
The codebook is scaled to the measured spread of z_e so that codes are well spread and
residuals shrink with depth.
"""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taming_ref  # noqa: E402


class LightningHyperParameters:
    """Stands in for the OmegaConf objects a Lightning checkpoint pickles (a class the C++
    unpickler does not know and must skip)."""

    def __init__(self, d):
        self.content = d


def shapes(kind, size, variant, n_embed):
    if size == "full":
        if kind == "rq-vae":
            dd = dict(ch=128, ch_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2,
                      attn_resolutions=[16] if variant == "attn16" else [8])
            K = n_embed or 16384
        else:
            dd = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16])
            K = n_embed or 16384
        dd.update(in_channels=3, out_ch=3, z_channels=256, resolution=256, double_z=False)
        E = 256
    else:
        if kind == "rq-vae":
            dd = dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=2,
                      attn_resolutions=[16] if variant == "attn16" else [8])
        else:
            dd = dict(ch=32, ch_mult=[1, 2], num_res_blocks=2, attn_resolutions=[16])
        dd.update(in_channels=3, out_ch=3, z_channels=32, resolution=32, double_z=False)
        E = 32
        K = n_embed or 64
    return dd, E, K


def randomize(model, gen):
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)   # [0.5, 1.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.2)


def scale_codebook(model, kind, K, E, res, gen):
    """Draws codebook rows with norms spread around the measured z_e spread."""
    with torch.no_grad():
        x = torch.rand(2, 3, res, res, generator=gen) * 2 - 1
        z = model.encode_latent(x).reshape(-1, E)
        sd = float(z.std())
        rows = torch.randn(K, E, generator=gen) * sd * (0.2 + torch.rand(K, 1, generator=gen))
        if kind == "rq-vae":
            w = model.quantizer.codebooks[0].weight
            w[:K].copy_(rows)
            w[K].zero_()  # padding row, as released
            model.quantizer.codebooks[0].embed_ema.copy_(rows)
            model.quantizer.codebooks[0].cluster_size_ema.copy_(torch.rand(K, generator=gen) * 10)
        else:
            model.quantize.embedding.weight.copy_(rows)


def adam_one_step(model, gen):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=4e-5, betas=(0.5, 0.9))
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def write_safetensors(path, tensors, metadata):
    """hwaga model file: header padded so that every tensor starts 64-byte aligned."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        t = t.detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        pad = (-len(data)) % 64
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    header["__metadata__"] = metadata
    hj = json.dumps(header).encode()
    hj += b" " * ((-(8 + len(hj))) % 64)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def rq_yaml(dd, E, K):
    import yaml
    return yaml.safe_dump({
        "dataset": {"type": "imagenet", "transforms": {"type": "imagenet256x256"}},
        "arch": {
            "type": "rq-vae", "code_hier": 1,
            "hparams": {"bottleneck_type": "rq", "embed_dim": E, "n_embed": K,
                        "latent_shape": [dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)] * 2 + [E],
                        "code_shape": [dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)] * 2 + [4],
                        "shared_codebook": True, "decay": 0.99, "restart_unused_codes": True,
                        "loss_type": "mse", "latent_loss_weight": 0.25},
            "ddconfig": dict(dd, dropout=0.0),
            "checkpointing": True,
        },
        "gan": {"disc": {"arch": {"in_channels": 3, "num_layers": 2, "use_actnorm": False, "ndf": 64}}},
    }, sort_keys=False)


def vqgan_yaml(dd, E, K):
    import yaml
    hp = dict(dd)
    hp["pdrop"] = 0.0
    return yaml.safe_dump({
        "dataset": {"tokenizer_type": "CharBPE", "context_length": 64, "image_resolution": 256},
        "stage1": {"type": "vqgan", "embed_dim": E, "n_embed": K, "hparams": hp},
        "stage2": {"type": "transformer1d", "vocab_size_txt": 16384, "vocab_size_img": 16384,
                   "use_cls_cond": None,
                   "hparams": {"embed_dim": 1536, "n_layers": 42, "n_heads": 24, "n_dense_layers": 42,
                               "ctx_len_img": 256, "ctx_len_txt": 64, "embd_pdrop": 0.0,
                               "resid_pdrop": 0.0, "attn_pdrop": 0.0, "mlp_bias": True,
                               "attn_bias": True, "gelu_use_approx": False}},
    }, sort_keys=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["rq-vae", "vqgan"], required=True)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--variant", choices=["attn8", "attn16"], default="attn8")
    ap.add_argument("--n-embed", type=int, default=0, help="K (default: 64 tiny, 16384 full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--safetensors", action="store_true", help="also write DIR/model.safetensors")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    dd, E, K = shapes(a.kind, a.size, a.variant, a.n_embed)
    os.makedirs(a.out, exist_ok=True)
    if a.kind == "rq-vae":
        with open(os.path.join(a.out, "config.yaml"), "w") as f:
            f.write(rq_yaml(dd, E, K))
    else:
        with open(os.path.join(a.out, "config.yaml"), "w") as f:
            f.write(vqgan_yaml(dd, E, K))
    model, ckpt_name, js = taming_ref.load_config(a.out, a.kind)
    model.eval()
    randomize(model, gen)
    opt = adam_one_step(model, gen)
    scale_codebook(model, a.kind, K, E, dd["resolution"], gen)
    sd = model.state_dict()

    if a.kind == "rq-vae":
        torch.save({"state_dict": sd, "epoch": 3, "optimizer": opt.state_dict(),
                    "scheduler": {"last_epoch": 3, "base_lrs": [4e-5]}},
                   os.path.join(a.out, ckpt_name))
    else:
        torch.save({"state_dict": sd, "epoch": 7, "global_step": 12345,
                    "pytorch-lightning_version": "1.5.0",
                    "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                    "hyper_parameters": LightningHyperParameters({"stage1": js})},
                   os.path.join(a.out, ckpt_name))

    if a.safetensors:
        keep = {}
        for k, v in sd.items():
            if k.startswith("quantizer.codebooks.") and not k.startswith("quantizer.codebooks.0.weight"):
                continue  # aliases 1..3 and the EMA buffers
            if k.startswith("quantizer.codebooks.0.") and not k.endswith(".weight"):
                continue
            keep["stage1." + k] = v
        write_safetensors(os.path.join(a.out, "model.safetensors"), keep,
                          {"format": "hwaga", "version": "1", "config": json.dumps({"stage1": js})})
    print(json.dumps({"out": a.out, "checkpoint": ckpt_name, "config": js}))


if __name__ == "__main__":
    main()
