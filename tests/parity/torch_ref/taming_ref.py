"""Independent PyTorch reference of the two stage-1 image tokenizers, written from
/work/shared/reference/architecture.md (sections 1, 4.1, 5, 8), not from the released code.

Module attribute names copy the released module trees so that state_dict keys match the
released checkpoints one to one:
  RQ-VAE: encoder.*, decoder.*, quant_conv, post_quant_conv,
          quantizer.codebooks.{0..D-1} = the SAME VQEmbedding module D times (aliased keys),
          each with K+1 rows (row K = zero padding row, never chosen) and EMA buffers
          cluster_size_ema [K], embed_ema [K,E].
  VQGAN:  encoder.*, decoder.*, quant_conv, post_quant_conv, quantize.embedding [K,E].
Everything runs in float32 (the released decode paths use no autocast).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=1, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, stride=1, padding=0)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))  # dropout p=0
        s = self.nin_shortcut(x) if self.in_channels != self.out_channels else x
        return s + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = group_norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(n).reshape(b, c, hh * ww)
        k = self.k(n).reshape(b, c, hh * ww)
        v = self.v(n).reshape(b, c, hh * ww)
        scores = torch.einsum("bci,bcj->bij", q, k) * (float(c) ** -0.5)  # [b, query, key]
        p = torch.softmax(scores, dim=2)
        out = torch.einsum("bcj,bij->bci", v, p).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))  # right 1, bottom 1


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):  # holds .block, .attn and optionally .downsample / .upsample
    pass


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, z_channels, resolution):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = resolution, ch
        for i, m in enumerate(ch_mult):
            lv = Level()
            lv.block, lv.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                lv.block.append(ResnetBlock(cin, ch * m))
                cin = ch * m
                if res in attn_resolutions:
                    lv.attn.append(AttnBlock(cin))
            if i != len(ch_mult) - 1:
                lv.downsample = Downsample(cin)
                res //= 2
            self.down.append(lv)
        self.mid = Mid(cin)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for lv in self.down:
            for j, blk in enumerate(lv.block):
                h = blk(h)
                if len(lv.attn) > 0:
                    h = lv.attn[j](h)
            if hasattr(lv, "downsample"):
                h = lv.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, out_ch, z_channels, resolution):
        super().__init__()
        n = len(ch_mult)
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = Mid(cin)
        levels = [None] * n
        for i in reversed(range(n)):  # built from the lowest resolution up; up[n-1] is the lowest
            lv = Level()
            lv.block, lv.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                lv.block.append(ResnetBlock(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if res in attn_resolutions:
                    lv.attn.append(AttnBlock(cin))
            if i != 0:
                lv.upsample = Upsample(cin)
                res *= 2
            levels[i] = lv
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            lv = self.up[i]
            for j, blk in enumerate(lv.block):
                h = blk(h)
                if len(lv.attn) > 0:
                    h = lv.attn[j](h)
            if hasattr(lv, "upsample"):
                h = lv.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # no tanh


def nearest_codes(r, table):
    """r [N,E], table [K,E] (candidates only) -> argmin_k (||r||^2 + ||e_k||^2) - 2 r.e_k."""
    base = r.pow(2).sum(dim=1, keepdim=True) + table.pow(2).sum(dim=1)[None, :]
    dist = torch.addmm(base, r, table.t(), alpha=-2.0)
    return dist.argmin(dim=1)  # ties -> first index


class VQEmbedding(nn.Embedding):
    """K+1 rows; row K is the zero padding row (padding_idx) and is never a candidate."""

    def __init__(self, n_embed, embed_dim):
        super().__init__(n_embed + 1, embed_dim, padding_idx=n_embed)
        self.n_embed = n_embed
        self.weight.requires_grad_(False)
        self.register_buffer("cluster_size_ema", torch.zeros(n_embed))
        self.register_buffer("embed_ema", self.weight[:-1, :].detach().clone())


class RQBottleneck(nn.Module):
    def __init__(self, n_embed, embed_dim, depth):
        super().__init__()
        shared = VQEmbedding(n_embed, embed_dim)
        self.codebooks = nn.ModuleList([shared] * depth)  # the same module D times
        self.depth = depth

    @torch.no_grad()
    def quantize(self, z):  # z [B,h,w,E] -> codes int64 [B,h,w,D]
        b, hh, ww, e = z.shape
        r = z.reshape(-1, e).clone()
        codes = []
        for d in range(self.depth):
            cb = self.codebooks[d]
            table = cb.weight[: cb.n_embed]
            c = nearest_codes(r, table)
            r = r - table[c]
            codes.append(c)
        return torch.stack(codes, dim=1).reshape(b, hh, ww, self.depth)

    def embed_sum(self, codes):  # codes [B,h,w,D] -> [B,h,w,E], plain sum over depth
        out = 0
        for d in range(codes.shape[-1]):
            out = out + F.embedding(codes[..., d], self.codebooks[d].weight)
        return out


class RQVAE(nn.Module):
    def __init__(self, dd, embed_dim, n_embed, code_shape):
        super().__init__()
        self.encoder = Encoder(dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["attn_resolutions"],
                               dd["in_channels"], dd["z_channels"], dd["resolution"])
        self.decoder = Decoder(dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["attn_resolutions"],
                               dd["out_ch"], dd["z_channels"], dd["resolution"])
        self.quantizer = RQBottleneck(n_embed, embed_dim, code_shape[2])
        self.quant_conv = nn.Conv2d(dd["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, dd["z_channels"], 1)

    def encode_latent(self, x):  # [B,3,R,R] -> z_e [B,h,w,E] (NHWC)
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1).contiguous()

    def encode(self, x):
        return self.quantizer.quantize(self.encode_latent(x))

    def decode(self, codes):  # [B,h,w,D] -> [B,3,R,R]
        z_q = self.quantizer.embed_sum(codes).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(z_q))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed, embed_dim):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)  # no padding row


class VQGAN(nn.Module):
    def __init__(self, hp, embed_dim, n_embed):
        super().__init__()
        self.encoder = Encoder(hp["ch"], hp["ch_mult"], hp["num_res_blocks"], hp["attn_resolutions"],
                               hp["in_channels"], hp["z_channels"], hp["resolution"])
        self.decoder = Decoder(hp["ch"], hp["ch_mult"], hp["num_res_blocks"], hp["attn_resolutions"],
                               hp["out_ch"], hp["z_channels"], hp["resolution"])
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(hp["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, hp["z_channels"], 1)

    def encode_latent(self, x):
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def encode(self, x):  # -> codes [B,h,w,1]
        z = self.encode_latent(x)
        b, hh, ww, e = z.shape
        c = nearest_codes(z.reshape(-1, e), self.quantize.embedding.weight)
        return c.reshape(b, hh, ww, 1)

    def decode(self, codes):  # [B,h,w] or [B,h,w,1]
        if codes.dim() == 4:
            codes = codes[..., 0]
        z_q = self.quantize.embedding(codes).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(z_q))


# ---- configs -------------------------------------------------------------------------------

def load_config(ckpt_dir, kind):
    """Reads DIR/config.yaml in the released layout -> (model, checkpoint file name, json config)."""
    import os
    import yaml
    with open(os.path.join(ckpt_dir, "config.yaml")) as f:
        y = yaml.safe_load(f)
    if kind == "rq-vae":
        hp, dd = y["arch"]["hparams"], y["arch"]["ddconfig"]
        model = RQVAE(dd, hp["embed_dim"], hp["n_embed"], hp["code_shape"])
        js = dict(type="rq-vae", embed_dim=hp["embed_dim"], n_embed=hp["n_embed"],
                  code_shape=list(hp["code_shape"]), shared_codebook=bool(hp["shared_codebook"]))
        ckpt = "model.pt"
    elif kind == "vqgan":
        s1 = y["stage1"]
        dd = s1["hparams"]
        model = VQGAN(dd, s1["embed_dim"], s1["n_embed"])
        lat = dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)
        js = dict(type="vqgan", embed_dim=s1["embed_dim"], n_embed=s1["n_embed"],
                  code_shape=[lat, lat, 1], shared_codebook=True)
        ckpt = "stage1_last.ckpt"
    else:
        raise ValueError("kind must be rq-vae or vqgan")
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch",
                "z_channels", "resolution"):
        js[key] = dd[key]
    return model, ckpt, js
