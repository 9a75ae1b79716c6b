"""PyTorch autograd reference of one stage-2 training step (hwaga train), for
tests/parity/test_train_stage2.py.

  train_stage2_ref.py --before CKPT_A --dump DUMP --after CKPT_B --stage1 STAGE1.safetensors
                      --lr LR --clip C --weight-decay WD [--pad-id 0] --out report.json

CKPT_A: hwaga's training checkpoint before the step (parameters "stage2.*", AdamW moments
"optim.m.*"/"optim.v.*", "optimizer_steps" in its "train" metadata); DUMP: what `hwaga train
--dump-step` wrote for that step (the batch "text" [B,L] and "codes" [B,H,W,D], "loss" [total,
image, text], and "grad.<name>" before clipping); CKPT_B: the checkpoint after the step.

The step is redone with rq_transformer_ref.RQTransformerRef (written from architecture.md §2,
independently of hwaga) loaded with CKPT_A's weights:
  loss = 0.9 * CE(image logits, codes) + 0.1 * CE(text logits, text[:,1:], ignore_index=PAD)
  backward (autograd) -> compare with DUMP's gradients
  clip_grad_norm_(C), torch.optim.AdamW(betas 0.9/0.95, eps 1e-8; weight decay on nn.Linear
  weights only) with CKPT_A's moments -> compare with CKPT_B's parameters.
Writes report.json: {"loss": [hwaga, torch], "image_loss": [...], "text_loss": [...],
"grad": {name: [max |hwaga - torch|, max |torch|]}, "param": {name: [max |diff|, max |torch
update|]}}; the test applies the tolerances.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rq_transformer_ref  # noqa: E402
from train_stage2_fixtures import read_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--stage1", required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--clip", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)

    before, meta = read_safetensors(a.before)
    train_meta = json.loads(meta["train"])
    cfg = train_meta["config"]["stage2"]
    dump, _ = read_safetensors(a.dump)
    after, _ = read_safetensors(a.after)
    s1, _ = read_safetensors(a.stage1)
    codebook = torch.from_numpy(s1["stage1.quantizer.codebooks.0.weight"]).float()

    model = rq_transformer_ref.RQTransformerRef(cfg)
    sd = {k[len("stage2."):]: torch.from_numpy(v) for k, v in before.items() if k.startswith("stage2.")}
    model.load_state_dict(sd, strict=True)
    model.train()  # no dropout modules with p > 0 in the reference: the step runs with --dropout 0

    text = torch.from_numpy(dump["text"].astype(np.int64))
    codes = torch.from_numpy(dump["codes"].astype(np.int64))
    # hwaga train --code-noise: the embeddings read the noisy input codes, the loss the true ones
    inputs = torch.from_numpy(dump["input_codes"].astype(np.int64)) if "input_codes" in dump else codes
    logits, cond_logits = model(inputs, text, codebook)
    K = logits.shape[-1]
    img = F.cross_entropy(logits.reshape(-1, K), codes.reshape(-1))
    txt = F.cross_entropy(cond_logits.reshape(-1, cond_logits.shape[-1]), text[:, 1:].reshape(-1),
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

    # clip + AdamW from CKPT_A's moments
    torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay = [p for p in model.parameters() if id(p) in linear_weights]
    no_decay = [p for p in model.parameters() if id(p) not in linear_weights]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
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
