"""Runs the PyTorch reference tokenizer (taming_ref.py) on a checkpoint that make_checkpoint.py
wrote (or any checkpoint in the released layout: DIR/config.yaml + DIR/model.pt for RQ-VAE,
DIR/stage1_last.ckpt for minDALL-E's VQGAN).

  encode --ckpt DIR --kind K (--images a.png ... | --images-npy x.npy) --out codes.npy [--dump-ze ze.npy]
         [--decode-codes c.npy --decode-out pixels.npy]
      codes int64 [N,h,w,D] (VQGAN: D = 1). PNGs must be exactly RxR; pixels map to x/127.5-1.
      --images-npy takes float32 [N,3,R,R] already in [-1,1].
  decode --ckpt DIR --kind K --codes codes.npy --out pixels.npy
      float32 [N,3,R,R], before any clamping.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pngio  # noqa: E402
import taming_ref  # noqa: E402


def read_png(path):
    """A PNG (8-bit gray/RGB/RGBA, no interlace) -> uint8 [H,W,3]: gray repeated, alpha composited
    on white as hwaga does."""
    try:
        img, _ = pngio.read_png(path)
    except pngio.PngError as e:
        raise SystemExit(str(e))
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:  # composite on white, as hwaga does
        a = img[..., 3:4].astype(np.float64) / 255.0
        img = np.round(img[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
    return img


def load_model(ckpt_dir, kind):
    model, ckpt_name, _ = taming_ref.load_config(ckpt_dir, kind)
    # make_checkpoint.py pickles an instance of its own class into the Lightning-style VQGAN
    # checkpoint (standing in for OmegaConf objects). Unpickling needs *some* class under that
    # name; torch 1.13's load ignores a custom pickle_module, so provide a stand-in on __main__.
    import __main__
    if not hasattr(__main__, "LightningHyperParameters"):
        __main__.LightningHyperParameters = type("LightningHyperParameters", (), {})
    ck = torch.load(os.path.join(ckpt_dir, ckpt_name), map_location="cpu")
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--kind", choices=["rq-vae", "vqgan"], required=True)
    e.add_argument("--images", nargs="*", default=[])
    e.add_argument("--images-npy")
    e.add_argument("--out", required=True)
    e.add_argument("--dump-ze", help="also write z_e float32 [N,h,w,E]")
    e.add_argument("--decode-codes", help="also decode these codes (saves a second start-up) ...")
    e.add_argument("--decode-out", help="... into this file, as the decode command would")
    d = sub.add_parser("decode")
    d.add_argument("--ckpt", required=True)
    d.add_argument("--kind", choices=["rq-vae", "vqgan"], required=True)
    d.add_argument("--codes", required=True)
    d.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = load_model(a.ckpt, a.kind)
    with torch.no_grad():
        if a.cmd == "encode":
            if a.images_npy:
                x = torch.from_numpy(np.load(a.images_npy).astype(np.float32))
            else:
                imgs = [read_png(p) for p in a.images]
                x = torch.from_numpy(np.stack(imgs).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
            if a.dump_ze:
                np.save(a.dump_ze, model.encode_latent(x).numpy().astype(np.float32))
            np.save(a.out, model.encode(x).numpy().astype(np.int64))
            if a.decode_codes:
                codes = torch.from_numpy(np.load(a.decode_codes).astype(np.int64))
                np.save(a.decode_out, model.decode(codes).numpy().astype(np.float32))
        else:
            codes = torch.from_numpy(np.load(a.codes).astype(np.int64))
            np.save(a.out, model.decode(codes).numpy().astype(np.float32))


if __name__ == "__main__":
    main()
