"""PyTorch reference of one VQGAN training step (taming VQModel, architecture.md §4.1), written
from the reference text, independent of hwaga: the taming net of taming_ref.py under autograd,
and the vector quantizer's training rule written here.

  z = quant_conv(encoder(x)) as [N,E] (NHWC rows)
  c = argmin_k ||z||^2 + ||e_k||^2 - 2 z.e_k            (no gradient)
  e_c = embedding(c)                                     (gradient to the chosen rows)
  commitment = mean((e_c.detach() - z)^2)                (reaches the encoder)
  codebook   = mean((e_c - z.detach())^2)                (reaches the codebook)
  legacy taming (VectorQuantizer, VectorQuantizer2 with legacy=True, what the released VQGAN
  used):  q_loss = commitment + beta * codebook;  otherwise beta * commitment + codebook
  z_q = z + (e_c - z).detach()                           (straight-through)
  x_rec = decoder(post_quant_conv(z_q as NCHW))
  recon = mean|x - x_rec| (taming's L1) or mean (x - x_rec)^2
  loss = recon + q_loss
"""
import torch

import taming_ref


def build(cfg):
    hp = {k: cfg[k] for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch",
                              "z_channels", "resolution")}
    return taming_ref.VQGAN(hp, cfg["embed_dim"], cfg["n_embed"])


def load(model, tensors, prefix="before.stage1."):
    """Copies hwaga's tensors ({name: numpy}) into the model; every parameter must be given."""
    params = dict(model.named_parameters())
    seen = set()
    with torch.no_grad():
        for k, v in tensors.items():
            if not k.startswith(prefix):
                continue
            name = k[len(prefix):]
            if name not in params:
                raise KeyError("hwaga tensor %s has no place in the reference model" % k)
            params[name].copy_(torch.from_numpy(v.copy()))
            seen.add(name)
    missing = [n for n in params if n not in seen]
    if missing:
        raise KeyError("reference parameters not in hwaga's dump: %s" % missing[:5])


def train_step(model, x, beta=0.25, legacy=True, l1=True):
    """One forward + backward (gradients in .grad). Returns dict(loss, recon, commitment, codes,
    margin): commitment = mean((z - e_c)^2) (the value of both quantizer terms); margin = the
    smallest gap between the best and second-best distance, relative to the largest distance
    (how safe the argmin is: f32 rounding of a distance is ~1e-7 of it)."""
    z = model.encode_latent(x)  # [B,h,w,E]
    b, h, w, e = z.shape
    zf = z.reshape(-1, e)
    table = model.quantize.embedding.weight
    with torch.no_grad():
        base = zf.pow(2).sum(1, keepdim=True) + table.pow(2).sum(1)[None, :]
        dist = torch.addmm(base, zf, table.t(), alpha=-2.0)
        c = dist.argmin(1)
        two = dist.topk(2, dim=1, largest=False).values
        margin = (two[:, 1] - two[:, 0]).min().item() / dist.abs().max().item()
    ec = torch.nn.functional.embedding(c, table)
    commitment = (ec.detach() - zf).pow(2).mean()
    codebook = (ec - zf.detach()).pow(2).mean()
    q_loss = commitment + beta * codebook if legacy else beta * commitment + codebook
    zq = zf + (ec - zf).detach()
    xr = model.decoder(model.post_quant_conv(zq.reshape(b, h, w, e).permute(0, 3, 1, 2).contiguous()))
    recon = (xr - x).abs().mean() if l1 else (xr - x).pow(2).mean()
    loss = recon + q_loss
    loss.backward()
    return dict(loss=loss.item(), recon=recon.item(), commitment=commitment.item(), codes=c.reshape(b, h, w, 1),
                margin=margin)
