"""PyTorch autograd reference of one minDALL-E GPT training step (hwaga train with a
"mindalle-gpt" config), for tests/parity/test_train_stage2_gpt.py; plus the fixtures that the
GPT training tests share (tests/cli/test_train.py imports them too).

  train_gpt_ref.py --before CKPT_A --dump DUMP --after CKPT_B --lr LR --clip C --weight-decay WD
                   [--pad-id 0] --out report.json

CKPT_A: hwaga's training checkpoint before the step (parameters "stage2.*", AdamW moments
"optim.m.*"/"optim.v.*", "optimizer_steps" in its "train" metadata); DUMP: what `hwaga train
--dump-step` wrote for that step (the batch "text" [B,L] and "codes" [B,h,w,1], "loss" [total,
image, text], and "grad.<name>" before clipping); CKPT_B: the checkpoint after the step.

The step is redone with mindalle_ref.Transformer1dRef (written from architecture.md §4.2,
independently of hwaga) loaded with CKPT_A's weights. Its forward feeds all T codes and reads
outputs L-1..L+T-2, so the last code's input row is computed but reaches no loss:
  loss = 0.9 * CE(image logits, codes) + 0.1 * CE(text logits, text[:,1:], ignore_index=PAD)
  backward (autograd) -> compare with DUMP's gradients
  clip_grad_norm_(C), torch.optim.AdamW(betas 0.9/0.99 of minDALL-E's OptConfig (§6.3), eps 1e-8;
  weight decay on nn.Linear weights only: blocks' Linear layers and both heads) with CKPT_A's
  moments -> compare with CKPT_B's parameters.
Writes report.json: {"loss": [hwaga, torch], "image_loss": [...], "text_loss": [...],
"grad": {name: [max |hwaga - torch|, max |torch|]}, "param": {name: [max |diff|, max |torch
update|]}}; the test applies the tolerances.

Fixtures (importable):
  make_vqgan_stage1(dir)     a tiny random VQGAN model file (make_checkpoint.py --kind vqgan):
                             32x32 pictures -> 16x16x1 codes, K 64
  write_gpt_config(path,..)  a mindalle-gpt config JSON pairing with it and the tiny CharBPE
                             vocabulary (85 ids): C 32, 2 layers, 2 heads, text 8, image 256
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_stage2_fixtures import read_safetensors  # noqa: E402

PYTHON = "/usr/bin/python3"


def make_vqgan_stage1(folder, seed=0):
    """folder/model.safetensors: a tiny random VQGAN (16x16 codes of depth 1, K 64)."""
    subprocess.run([PYTHON, os.path.join(HERE, "make_checkpoint.py"), "--kind", "vqgan", "--size", "tiny",
                    "--seed", str(seed), "--out", folder, "--safetensors"], check=True, capture_output=True, timeout=300)
    return os.path.join(folder, "model.safetensors")


def write_gpt_config(path, vocab_size_txt=85, vocab_size_img=64, embed_dim=32, n_layers=2, n_heads=2, ctx_len_txt=8,
                     ctx_len_img=256):
    cfg = {"type": "mindalle-gpt", "vocab_size_txt": vocab_size_txt, "vocab_size_img": vocab_size_img,
           "embed_dim": embed_dim, "n_layers": n_layers, "n_heads": n_heads, "ctx_len_txt": ctx_len_txt,
           "ctx_len_img": ctx_len_img}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def main():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import mindalle_ref

    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--clip", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)

    before, meta = read_safetensors(a.before)
    train_meta = json.loads(meta["train"])
    if train_meta.get("stage") != "mindalle-gpt":
        raise SystemExit(f"{a.before}: stage {train_meta.get('stage')!r}, expected 'mindalle-gpt'")
    cfg = train_meta["config"]["stage2"]
    dump, _ = read_safetensors(a.dump)
    after, _ = read_safetensors(a.after)

    model = mindalle_ref.Transformer1dRef(cfg)
    sd = {k[len("stage2."):]: torch.from_numpy(v) for k, v in before.items() if k.startswith("stage2.")}
    model.load_state_dict(sd, strict=True)
    model.train()  # no dropout with p > 0 in the reference: the step runs with --dropout 0

    text = torch.from_numpy(dump["text"].astype(np.int64))
    codes = torch.from_numpy(dump["codes"].astype(np.int64)).reshape(text.shape[0], -1)  # raster order
    # hwaga train --code-noise: the embeddings read the noisy input codes, the loss the true ones
    inputs = (torch.from_numpy(dump["input_codes"].astype(np.int64)).reshape(text.shape[0], -1)
              if "input_codes" in dump else codes)
    logits, txt_logits = model(text, inputs)
    K = logits.shape[-1]
    img = F.cross_entropy(logits.reshape(-1, K), codes.reshape(-1))
    txt = F.cross_entropy(txt_logits.reshape(-1, txt_logits.shape[-1]), text[:, 1:].reshape(-1),
                          ignore_index=a.pad_id)
    loss = 0.9 * img + 0.1 * txt
    loss.backward()

    rep = {"noisy_inputs": float((inputs != codes).double().mean()),
           "loss": [float(dump["loss"][0]), float(loss)], "image_loss": [float(dump["loss"][1]), float(img)],
           "text_loss": [float(dump["loss"][2]), float(txt)], "grad": {}, "param": {}}
    names = dict(model.named_parameters())
    for n, p in names.items():
        g = p.grad.numpy() if p.grad is not None else np.zeros(p.shape, np.float32)
        h = dump["grad.stage2." + n]
        rep["grad"][n] = [float(np.abs(h - g).max()), float(np.abs(g).max())]
    # the last image position's row of pos_emb_img feeds no loss: exactly zero on both sides
    rep["pos_img_last"] = [float(np.abs(dump["grad.stage2.pos_emb_img.weight"][-1]).max()),
                           float(names["pos_emb_img.weight"].grad[-1].abs().max())]

    torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay = [p for p in model.parameters() if id(p) in linear_weights]
    no_decay = [p for p in model.parameters() if id(p) not in linear_weights]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    steps = int(train_meta["optimizer_steps"])
    for n, p in names.items():
        opt.state[p] = {"step": torch.tensor(float(steps)),
                        "exp_avg": torch.from_numpy(before["optim.m.stage2." + n]).clone(),
                        "exp_avg_sq": torch.from_numpy(before["optim.v.stage2." + n]).clone()}
    p0 = {n: p.detach().clone() for n, p in names.items()}
    opt.step()
    for n, p in names.items():
        t = p.detach().numpy()
        rep["param"][n] = [float(np.abs(after["stage2." + n] - t).max()), float((p.detach() - p0[n]).abs().max())]
    with open(a.out, "w") as f:
        json.dump(rep, f, indent=1)


if __name__ == "__main__":
    main()
