"""PyTorch reference of the adversarial part of stage-1 training (architecture.md §6.1), written
from the reference text, independent of hwaga: the patch-GAN discriminator (4x4 convs with
padding 1; the first stride 2 with a bias; layers-1 more stride-2 convs and one stride-1 conv,
each without bias and followed by BatchNorm; LeakyReLU 0.2 after all but the last conv, a
stride-1 conv to one channel with a bias), the hinge loss, the generator term -mean D(x_rec)
and VQGAN's adaptive weight on decoder.conv_out.weight.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    def __init__(self, in_ch, ndf, layers):
        super().__init__()
        seq = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                    nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2)]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*seq)

    def forward(self, x):
        return self.main(x)


def load(disc, tensors, prefix="disc.before.discriminator."):
    """Copies hwaga's discriminator tensors ({name: numpy}) into `disc` (every param and the
    running statistics); raises when either side has a tensor the other lacks."""
    own = dict(disc.named_parameters())
    own.update({k: v for k, v in disc.named_buffers() if not k.endswith("num_batches_tracked")})
    theirs = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if set(own) != set(theirs):
        raise KeyError("discriminator tensors differ: reference only %s, hwaga only %s" %
                       (sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))))
    with torch.no_grad():
        for k, v in theirs.items():
            own[k].copy_(torch.from_numpy(v.copy()))


def generator_term(disc, disc_weight):
    """The callable train_stage1_ref.train_step(gan=...) adds to the generator's loss."""
    def term(recon, xr, last):
        logits = disc(xr)
        loss_gen = -logits.mean()
        g_rec = torch.autograd.grad(recon, last, retain_graph=True)[0]
        g_gen = torch.autograd.grad(loss_gen, last, retain_graph=True)[0]
        w = (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, 1e4).detach()
        return w * disc_weight * loss_gen, {"loss_gen": loss_gen.item(), "g_weight": w.item()}
    return term


def discriminator_step(disc, x, xr, disc_weight):
    """Gradients of disc_weight * hinge loss in disc's .grad (zeroed first); D(fake) runs first."""
    disc.zero_grad(set_to_none=True)
    lf = disc(xr.detach())
    lr = disc(x)
    loss = 0.5 * (F.relu(1.0 - lr).mean() + F.relu(1.0 + lf).mean())
    (disc_weight * loss).backward()
    return {"loss_disc": loss.item(), "logits_real": lr.mean().item(), "logits_fake": lf.mean().item()}
