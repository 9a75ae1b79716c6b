"""Reference logit processing of the two samplers, in PyTorch, written from
/work/shared/reference/architecture.md §3.2 (RQ-Transformer `sample_from_logits`) and §4.4
(minDALL-E `sampling`), plus hwaga's random streams so that sampled codes can be compared.

Library use (rq_transformer_ref.py, mindalle_ref.py):
  rq_probs(logits[B,K], temperature, top_k, top_p)        -> probs[B,K] float32
  mindalle_probs(logits[B,K], temperature, top_k, top_p)  -> probs[B,K] float32
  HwagaStreams(seed, n).draw(probs)                        -> codes[B] (one draw per row)

CLI (used by tests/unit/test_sampler.cpp; raw little-endian float32 files, shape [rows, K]):
  filter --in X.f32 --rows R --semantics rq|mindalle --temperature T [--top-k K] [--top-p P]
         --out P.f32
      writes the probabilities each reference hands to torch.multinomial.
  topp --in P.f32 --rows R --top-p P --out Q.f32
      applies only the top-p step (sort, cumsum, shift-by-one, renormalise) to given probabilities.
  draw --in P.f32 --rows R --seed S --out C.i64
      one draw per row with hwaga's stream (seed, row) -> int64 codes.
  jobs --spec jobs.json
      several of the above in one process (a JSON list of {cmd, in, rows, out, ...}).

hwaga's stream for candidate i under seed s is Philox4x64-10 with key {s, i} and counter {n,0,0,0}
for block n, words in order; u = (word >> 11) * 2^-53; the drawn token is the first i with
p[i] > 0 and u * sum(p) < cumsum(p)[i] (double sums). NumPy's Philox bit generator is the same
function, but it increments its counter before each block, so it starts at counter -1.
"""
import argparse
import sys

import numpy as np
import torch

NEG_INF = float("-inf")


# ---- the two references' filters (architecture.md §3.2, §4.4) ----

def top_k_logits(logits, k):
    """k-th largest value v_k per row (torch.topk order, NaN ranks highest); x < v_k -> -inf."""
    v, _ = torch.topk(logits, k)
    out = logits.clone()
    out[out < v[:, [-1]]] = NEG_INF
    return out


def top_p_probs(probs, p):
    """Sort descending, cumsum, remove token j when the cumsum BEFORE it is >= p (shift by one:
    the first token and the crossing token stay), zero the removed ones, renormalise.
    The released code sorts with torch.sort's default (unstable) algorithm, so which of several
    EQUAL probabilities at the cut is dropped is unspecified there (it differs between sizes and
    devices). hwaga breaks such ties by token index; stable=True is the same rule, which makes
    the masks comparable exactly. Without ties the two sorts give the same order."""
    sorted_probs, sorted_idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    cum = torch.cumsum(sorted_probs, dim=-1)
    remove_sorted = cum >= p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    probs = probs.masked_fill(remove, 0.0)
    return probs / torch.sum(probs, dim=-1, keepdim=True)


def rq_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """RQ-Transformer, one depth: k None -> K and capped at K; NaN -> -inf after top-k (with a
    warning); top_p None -> 1.0, capped at 1.0, always applied."""
    K = logits.shape[-1]
    x = logits.to(torch.float32) / temperature
    k = K if top_k is None else min(int(top_k), K)
    x = top_k_logits(x, k)
    if torch.isnan(x).any():
        print("WARNING... NaN observed", file=sys.stderr)
        x[torch.isnan(x)] = NEG_INF
    probs = torch.softmax(x, dim=-1)
    p = 1.0 if top_p is None else min(float(top_p), 1.0)
    return top_p_probs(probs, p)


def mindalle_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """minDALL-E: top_k None skips the cutoff (k > K raises in torch.topk); top_p None skips
    top-p; no NaN handling (torch.multinomial raises on NaN)."""
    x = logits.to(torch.float32) / temperature
    if top_k is not None:
        x = top_k_logits(x, int(top_k))
    probs = torch.softmax(x, dim=-1)
    if top_p is not None:
        probs = top_p_probs(probs, float(top_p))
    if torch.isnan(probs).any():
        raise RuntimeError("probability tensor contains NaN (minDALL-E has no NaN handling)")
    return probs


# ---- hwaga's random streams ----

class HwagaStreams:
    """One Philox4x64-10 stream per candidate: key = {seed, candidate}, counter = {block,0,0,0}."""

    def __init__(self, seed, n, first_candidate=0):
        mask = (1 << 64) - 1
        self.gens = []
        for i in range(n):
            key = (seed & mask) | (((first_candidate + i) & mask) << 64)
            self.gens.append(np.random.Philox(key=key, counter=(1 << 256) - 1))

    def uniform(self, i):
        w = int(self.gens[i].random_raw())
        return (w >> 11) * 2.0 ** -53

    def draw(self, probs):
        probs = probs.detach().cpu().numpy().astype(np.float32)
        out = np.zeros(probs.shape[0], dtype=np.int64)
        for b in range(probs.shape[0]):
            out[b] = draw_row(probs[b], self.uniform(b))
        return torch.from_numpy(out)


def draw_row(p, u):
    p64 = p.astype(np.float64)
    cum = np.cumsum(p64)  # strictly sequential in NumPy: the order hwaga sums in
    total = cum[-1]
    if not total > 0.0:
        raise RuntimeError("no token has a probability > 0")
    target = u * total
    # first i with cum[i] > target; cum only grows at tokens with p > 0, so that token has p > 0
    i = int(np.searchsorted(cum, target, side="right"))
    if i >= len(p64):
        i = int(np.nonzero(p64 > 0)[0][-1])  # u * total rounded up to the full sum
    return i


# ---- CLI ----

def _read(path, rows):
    a = np.fromfile(path, dtype=np.float32)
    if a.size % rows:
        raise SystemExit(f"{path}: {a.size} floats do not split into {rows} rows")
    return torch.from_numpy(a.reshape(rows, -1).copy())


def run_job(cmd, inp, rows, out, semantics="rq", temperature=1.0, top_k=None, top_p=None, seed=0):
    x = _read(inp, rows)
    if cmd == "filter":
        f = rq_probs if semantics == "rq" else mindalle_probs
        f(x, temperature, top_k, top_p).numpy().astype(np.float32).tofile(out)
    elif cmd == "topp":
        top_p_probs(x, top_p).numpy().astype(np.float32).tofile(out)
    elif cmd == "draw":
        HwagaStreams(seed, rows).draw(x).numpy().astype(np.int64).tofile(out)
    else:
        raise SystemExit(f"unknown job {cmd!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["filter", "topp", "draw", "jobs"])
    ap.add_argument("--in", dest="inp")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--semantics", choices=["rq", "mindalle"], default="rq")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--spec", help="jobs: a JSON list of {cmd, in, rows, out, semantics?, temperature?, "
                                   "top_k?, top_p?, seed?} run in one process")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "jobs":
        import json
        with open(a.spec) as f:
            for job in json.load(f):
                job["inp"] = job.pop("in")
                run_job(**job)
    else:
        run_job(a.cmd, a.inp, a.rows, a.out, a.semantics, a.temperature, a.top_k, a.top_p, a.seed)


if __name__ == "__main__":
    main()
