"""PyTorch reference of one RQ-VAE training step (architecture.md §1.5, §1.6, §6.1), written from
the reference text, independent of hwaga: the taming net of taming_ref.py under autograd, and
the residual quantizer's training rules written here.

Per depth d, with the residuals r_d (detached) and the ONE shared codebook (VQEmbedding.forward
in training mode, in this order):
  1. codes = argmin_k ||r_d||^2 + ||e_k||^2 - 2 r_d.e_k over rows [0, K)
  2. cluster_size_ema = decay * cse + (1 - decay) * n_k;  embed_ema = decay * ee + (1 - decay) * s_k
  3. restart: rows with cluster_size_ema < 1 take embed_ema = the candidate row, cse = 1
     (candidates: a random permutation of r_d, tiled with uniform [0, 0.01/sqrt(E)) noise when
     there are fewer than K; here they are GIVEN, drawn by hwaga, and checked by the caller)
  4. q_d = table[codes] with the table before this depth's update
  5. table[:K] = embed_ema / (n (cse + eps) / (n + K eps)),  n = sum(cse)
  r_{d+1} = r_d - q_d, S_d = q_0 + ... + q_d
loss = mse(x_rec, x) + beta * mean_d mean((z - S_d.detach())^2), x_rec = decoder(post_quant_conv(
z + (S_D - z).detach())).
"""
import torch
import torch.nn.functional as F

import taming_ref


def build(cfg):
    dd = {k: cfg[k] for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch",
                              "z_channels", "resolution")}
    return taming_ref.RQVAE(dd, cfg["embed_dim"], cfg["n_embed"], cfg["code_shape"])


def load(model, tensors, prefix="before.stage1."):
    """Copies hwaga's tensors ({name: numpy}) into the model (weights and the codebook buffers)."""
    sd = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            sd[k[len(prefix):]] = torch.from_numpy(v.copy())
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    cb = model.quantizer.codebooks[0]
    with torch.no_grad():
        for k, v in sd.items():
            if k.startswith("quantizer.codebooks.0."):
                what = k.split(".")[-1]
                getattr(cb, what).copy_(v)
            elif k in params:
                params[k].copy_(v)
            elif k in buffers:
                buffers[k].copy_(v)
            else:
                raise KeyError("hwaga tensor %s has no place in the reference model" % k)
    missing = [n for n in params if not n.startswith("quantizer.") and n not in sd]
    if missing:
        raise KeyError("reference parameters not in hwaga's dump: %s" % missing[:5])


@torch.no_grad()
def quantize_train(cb, z, restart, decay=0.99, eps=1e-5):
    """z [N,E] (detached) -> (list of S_d [N,E], codes [N,D], list of residuals r_d)."""
    K = cb.n_embed
    r = z.clone()
    S = torch.zeros_like(z)
    sums, codes, residuals = [], [], []
    for d in range(len(restart)):
        residuals.append(r.clone())
        table = cb.weight[:K]
        base = r.pow(2).sum(1, keepdim=True) + table.pow(2).sum(1)[None, :]
        c = torch.addmm(base, r, table.t(), alpha=-2.0).argmin(1)
        n = torch.zeros(K, dtype=z.dtype, device=z.device).index_add_(0, c, torch.ones_like(c, dtype=z.dtype))
        s = torch.zeros(K, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, c, r)
        cb.cluster_size_ema.mul_(decay).add_(n, alpha=1 - decay)
        cb.embed_ema.mul_(decay).add_(s, alpha=1 - decay)
        if restart[d] is not None:
            usage = (cb.cluster_size_ema.view(-1, 1) >= 1).to(z.dtype)
            cb.embed_ema.mul_(usage).add_(restart[d] * (1 - usage))
            cb.cluster_size_ema.mul_(usage.view(-1)).add_(1 - usage.view(-1))
        q = cb.weight[c].clone()
        tot = cb.cluster_size_ema.sum()
        norm = tot * (cb.cluster_size_ema + eps) / (tot + K * eps)
        cb.weight[:K] = cb.embed_ema / norm.view(-1, 1)
        r = r - q
        S = S + q
        sums.append(S.clone())
        codes.append(c)
    return sums, torch.stack(codes, 1), residuals


def train_step(model, x, restart, beta=0.25, gan=None, lpips=None, lpips_weight=1.0):
    """One forward + backward (gradients in .grad). Returns dict(loss, recon, commitment, codes,
    residuals, xr). lpips (lpips_ref.LPIPS) adds lpips_weight * LPIPS(x, x_rec) and gan
    (patch_gan_ref.generator_term, measured against recon + that) its term to what is
    differentiated, not to the returned loss; their figures go into the dict."""
    ze = model.encode_latent(x)  # [B,h,w,E] NHWC
    b, h, w, e = ze.shape
    z = ze.reshape(-1, e)
    sums, codes, residuals = quantize_train(model.quantizer.codebooks[0], z.detach(), restart)
    commitment = torch.stack([(z - s).pow(2).mean() for s in sums]).mean()
    zq = z + (sums[-1] - z).detach()
    xr = model.decoder(model.post_quant_conv(zq.reshape(b, h, w, e).permute(0, 3, 1, 2).contiguous()))
    recon = F.mse_loss(xr, x)
    loss = recon + beta * commitment
    extra = {}
    total, nll = loss, recon
    if lpips is not None:
        p = lpips(x, xr)
        extra["lpips"] = p.item()
        total, nll = total + lpips_weight * p, nll + lpips_weight * p
    if gan is not None:
        term, g = gan(nll, xr, model.decoder.conv_out.weight)
        extra.update(g)
        total = total + term
    total.backward()
    return dict(loss=loss.item(), recon=recon.item(), commitment=commitment.item(),
                codes=codes.reshape(b, h, w, -1), residuals=residuals, xr=xr.detach(), **extra)
