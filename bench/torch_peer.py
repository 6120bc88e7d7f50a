#!/usr/bin/python3
"""PyTorch peer of anyk's training step, for the speed benchmark (bench/compare.py).

Same model, same shapes, same K draws as `anyk train`:
  tied token embedding / LM head (vocab V), L pre-norm blocks
    [RMSNorm -> qkv = x W_qkv^T -> RoPE(q, k; half-split pairs (i, i+D/2), angle t*theta^(-2i/D))
     -> causal softmax attention -> W_o -> residual -> RMSNorm -> MoE -> residual]
  -> final RMSNorm -> logits = x wte^T -> mean cross-entropy (+ router aux losses).
  MoE: router logits x W_r^T (E), softmax over E, top-K (K per layer), weights renormalised over the
  chosen; aux = lb_coef * E * sum_e f_e P_e + z_coef * mean(logsumexp^2); SwiGLU experts with
  W13 (E, 2H, C) = [gate | up] and W2 (E, C, H), run the usual PyTorch way: sort the (token, slot)
  assignments by expert, one matmul pair per expert on its contiguous rows, index_add_ back.
  AdamW (betas 0.9/0.95, eps 1e-8, decoupled weight decay on matrices only, not on the embedding
  or the norms), global grad-norm clip, linear warm-up + cosine lr schedule as optim/schedule.cpp.

Also reproduced bit-for-bit from anyk's counter-based RNG (runtime/rng.h):
  * the K draws of every strategy but top_p (model/k_schedule.cpp; `layer` by default),
  * the parameter initialisation (LM::init: N(0, 0.02), out projections 0.02/sqrt(2L), norms 1),
  * the training windows (data/loader.cpp: sample g = step*B + b starts at uniform_int(hash)),
so step 1's loss matches anyk's first logged loss up to float rounding (a correctness check;
timings do not depend on it).

Run with Debian's interpreter, which has python3-torch:  /usr/bin/python3 bench/torch_peer.py ...
  --print-k N   print the K lists of steps 1..N (metrics.jsonl numbering) and exit
Prints one line per step and, at the end, "peer median tok/s: X" over the steps after --warmup-steps.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

M64 = (1 << 64) - 1

# ----------------------------------------------------------------------------------------------
# runtime/rng.h, scalar (Python ints with masks) and vectorised (numpy uint64, wrapping multiply)


def mix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def hash_key(a, b=0, c=0, d=0, e=0):
    h = mix64((a & M64) ^ 0x5851F42D4C957F2D)
    h = mix64(h ^ (b & M64))
    h = mix64(h ^ (c & M64))
    h = mix64(h ^ (d & M64))
    return mix64(h ^ (e & M64))


def hash_name(s):
    h = 0xCBF29CE484222325
    for ch in s.encode():
        h = ((h ^ ch) * 0x100000001B3) & M64
    return h


def uniform01(h):
    return float(h >> 11) * 2.0 ** -53


def uniform_int(h, n):
    return int(uniform01(h) * float(n)) % n


def _u64(x):
    return np.uint64(x & M64)


def mix64_np(z):
    with np.errstate(over="ignore"):
        z = z + _u64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * _u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * _u64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_key_np(a, b, c):
    """hash_key(a, b, c[i], 0, 0) for an array c of uint64."""
    h = np.uint64(mix64(mix64((a & M64) ^ 0x5851F42D4C957F2D) ^ (b & M64)))
    h = mix64_np(c ^ h)
    h = mix64_np(h)  # ^ d = 0
    return mix64_np(h)  # ^ e = 0


def uniform01_np(h):
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def normal_from_np(h):
    u1 = uniform01_np(mix64_np(h ^ np.uint64(0x1234567)))
    u2 = uniform01_np(mix64_np(h ^ np.uint64(0x89ABCDEF)))
    u1 = np.maximum(u1, 1e-300)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)


# ----------------------------------------------------------------------------------------------
# model/k_schedule.cpp

K_STREAM = {"global": 0x4B5EED01, "micro": 0x4B5EED02, "layer": 0x4B5EED03, "layer_weighted": 0x4B5EED04}


def draw_k(strategy, seed, step, micro, L, k_min, k_max, k_fixed=2, tau=2.0):
    """K per layer at (0-based step, micro-batch), as KSchedule::draw."""
    span = k_max - k_min + 1
    if strategy == "fixed":
        return [k_fixed] * L
    if strategy == "global":
        return [k_min + uniform_int(hash_key(seed, K_STREAM["global"], step), span)] * L
    if strategy == "micro":
        return [k_min + uniform_int(hash_key(seed, K_STREAM["micro"], step, micro), span)] * L
    if strategy == "layer":
        return [k_min + uniform_int(hash_key(seed, K_STREAM["layer"], step, micro, l), span) for l in range(L)]
    if strategy == "layer_weighted":
        w = [math.exp(math.log(float(k)) / tau) for k in range(k_min, k_max + 1)]
        s = sum(w)
        cdf, c = [], 0.0
        for x in w:
            c += x / s
            cdf.append(c)
        out = []
        for l in range(L):
            u = uniform01(hash_key(seed, K_STREAM["layer_weighted"], step, micro, l))
            j = 0
            while j + 1 < len(cdf) and u >= cdf[j]:
                j += 1
            out.append(k_min + j)
        return out
    raise SystemExit(f"torch_peer: K strategy '{strategy}' is not supported by the peer "
                     "(fixed, global, micro, layer, layer_weighted)")


def lr_at(step, max_lr, min_lr, warmup, total):
    """optim/schedule.cpp LrSchedule::at."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    d = total - 1 - warmup
    if step >= total - 1 or d <= 0:
        return min_lr
    frac = (step - warmup) / d
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


# ----------------------------------------------------------------------------------------------
# data: llm.c shard + data/loader.cpp windows

LOADER_STREAM = 0x10ADE5


def read_shard(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(256 * 4), dtype=np.int32)
        if header.size != 256 or header[0] != 20240520:
            raise SystemExit(f"torch_peer: {path} is not an llm.c token shard (bad header)")
        n = int(header[2])
        toks = np.frombuffer(f.read(), dtype=np.uint16)
    if toks.size != n:
        raise SystemExit(f"torch_peer: {path}: header says {n} tokens, file holds {toks.size}")
    return toks


class Loader:
    def __init__(self, tokens, T, seed):
        self.tok = tokens.astype(np.int64)
        self.T = T
        self.seed = seed
        self.pos = 0
        n = self.tok.size
        if n < T + 1:
            raise SystemExit(f"torch_peer: {n} tokens cannot hold one window of T={T}")
        self.span = n - T
        self.offs = np.arange(T + 1)

    def next(self, B):
        g = np.arange(self.pos, self.pos + B, dtype=np.uint64)
        self.pos += B
        h = hash_key_np(self.seed, LOADER_STREAM, g)
        starts = (uniform01_np(h) * float(self.span)).astype(np.uint64) % np.uint64(self.span)
        win = self.tok[starts.astype(np.int64)[:, None] + self.offs[None, :]]  # (B, T+1)
        return win[:, :-1], win[:, 1:]


# ----------------------------------------------------------------------------------------------
# model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="directory with train.bin (or a path to a .bin shard)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-hidden", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--k-strategy", default="layer")
    ap.add_argument("--k-min", type=int, default=1)
    ap.add_argument("--k-max", type=int, default=4)
    ap.add_argument("--k", type=int, default=2, help="K of the fixed strategy")
    ap.add_argument("--tau", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50, help="lr warm-up steps (capped at --steps)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--lb-coef", type=float, default=0.01)
    ap.add_argument("--z-coef", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the median tok/s")
    ap.add_argument("--init", choices=["anyk", "torch"], default="anyk",
                    help="anyk: reproduce LM::init bit-for-bit (default); torch: torch.randn (faster start)")
    ap.add_argument("--print-k", type=int, default=0, metavar="N",
                    help="self-check: print the K lists of steps 1..N as metrics.jsonl numbers them, then exit")
    ap.add_argument("--json", help="write a JSON summary (per-step times, median tok/s) to this file")
    ap.add_argument("--quiet", action="store_true", help="no per-step lines")
    a = ap.parse_args()

    L, C, NH, E, H, T, B, V = a.layers, a.dim, a.heads, a.experts, a.expert_hidden, a.seq_len, a.batch, a.vocab
    if a.print_k > 0:
        for s in range(a.print_k):
            k = draw_k(a.k_strategy, a.seed, s, 0, L, a.k_min, a.k_max, a.k, a.tau)
            print(json.dumps({"step": s + 1, "k_per_layer": k}))
        return 0
    if C % NH or (C // NH) % 2:
        raise SystemExit(f"torch_peer: heads {NH} must divide dim {C} into an even head dim")
    if not 1 <= a.k_min <= a.k_max <= E:
        raise SystemExit(f"torch_peer: need 1 <= k-min <= k-max <= experts, got {a.k_min}, {a.k_max}, {E}")
    if not a.data:
        raise SystemExit("torch_peer: --data is required (a directory with train.bin)")

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    D = C // NH
    path = a.data if a.data.endswith(".bin") else os.path.join(a.data, "train.bin")
    toks = read_shard(path)
    if toks.size and int(toks.max()) >= V:
        raise SystemExit(f"torch_peer: token {int(toks.max())} >= vocab {V}")
    loader = Loader(toks, T, a.seed)

    # ---- parameters (names as anyk's ParamStore, for the hash-keyed init) ----
    std = 0.02
    out_std = std / math.sqrt(2.0 * L)

    def param(name, shape, kind):
        n = int(np.prod(shape))
        if kind == "norm":
            t = torch.ones(shape)
        elif a.init == "anyk":
            s = out_std if kind == "out" else std
            h = hash_key_np(a.seed, hash_name(name), np.arange(n, dtype=np.uint64))
            t = torch.from_numpy((s * normal_from_np(h)).astype(np.float32).reshape(shape))
        else:
            t = torch.randn(shape) * (out_std if kind == "out" else std)
        return t.requires_grad_(True)

    P = {"wte": param("wte", (V, C), "emb")}
    for l in range(L):
        p = f"layers.{l}"
        P[p + ".ln1"] = param(p + ".ln1", (C,), "norm")
        P[p + ".attn.wqkv"] = param(p + ".attn.wqkv", (3 * C, C), "mat")
        P[p + ".attn.wo"] = param(p + ".attn.wo", (C, C), "out")
        P[p + ".ln2"] = param(p + ".ln2", (C,), "norm")
        P[p + ".moe.router"] = param(p + ".moe.router", (E, C), "mat")
        P[p + ".moe.experts.w13"] = param(p + ".moe.experts.w13", (E, 2 * H, C), "mat")
        P[p + ".moe.experts.w2"] = param(p + ".moe.experts.w2", (E, C, H), "out")
    P["lnf"] = param("lnf", (C,), "norm")
    decay = [v for k, v in P.items() if v.dim() >= 2 and k != "wte"]
    no_decay = [v for k, v in P.items() if not (v.dim() >= 2 and k != "wte")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    params = list(P.values())
    n_params = sum(v.numel() for v in params)

    # RoPE tables: angle t * theta^(-2i/D), computed in double like the C++ kernel.
    i = torch.arange(D // 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * torch.pow(10000.0, -2.0 * i / D)[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()  # (T, D/2)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    scale = 1.0 / math.sqrt(D)

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rope(x):  # (B, NH, T, D)
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def moe(h, l, K):
        p = f"layers.{l}.moe"
        N = h.shape[0]
        logits = h @ P[p + ".router"].t()  # (N, E)
        probs = logits.softmax(-1)
        topv, topi = probs.topk(K, dim=-1)  # (N, K), best first
        w = topv / topv.sum(-1, keepdim=True)
        flat = topi.reshape(-1)
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=E)
        tok = order // K  # token of each sorted assignment
        xs = h.index_select(0, tok)
        w13, w2 = P[p + ".experts.w13"], P[p + ".experts.w2"]
        outs, start = [], 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            gu = xs[start:start + c] @ w13[e].t()  # (c, 2H)
            g, u = gu.chunk(2, dim=-1)
            outs.append((F.silu(g) * u) @ w2[e].t())  # (c, C)
            start += c
        ys = torch.cat(outs) * w.reshape(-1).index_select(0, order).unsqueeze(1)
        out = torch.zeros_like(h).index_add_(0, tok, ys)
        f = counts.to(h.dtype) / float(N * K)  # no gradient, as in anyk
        lb = E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return out, a.lb_coef * lb + a.z_coef * z

    def forward(inp, tgt, ks):
        N = B * T
        x = P["wte"].index_select(0, inp.reshape(-1))  # (N, C)
        aux = 0.0
        for l in range(L):
            p = f"layers.{l}"
            h = rmsnorm(x, P[p + ".ln1"])
            qkv = (h @ P[p + ".attn.wqkv"].t()).view(B, T, 3, NH, D)
            q = rope(qkv[:, :, 0].transpose(1, 2))
            k = rope(qkv[:, :, 1].transpose(1, 2))
            v = qkv[:, :, 2].transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * scale  # (B, NH, T, T)
            att = att.masked_fill(causal, float("-inf")).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(N, C)
            x = x + y @ P[p + ".attn.wo"].t()
            m, aux_l = moe(rmsnorm(x, P[p + ".ln2"]), l, ks[l])
            x = x + m
            aux = aux + aux_l
        x = rmsnorm(x, P["lnf"])
        logits = x @ P["wte"].t()
        ce = F.cross_entropy(logits, tgt.reshape(-1))
        return ce, aux

    warmup = min(a.warmup, a.steps)
    print(f"torch peer: torch {torch.__version__}, {torch.get_num_threads()} threads; L={L} C={C} NH={NH} E={E} "
          f"H={H} T={T} B={B} V={V}; {n_params} params; K {a.k_strategy} [{a.k_min},{a.k_max}]; "
          f"{toks.size} train tokens from {path}", flush=True)
    times, rows = [], []
    for s in range(a.steps):
        t0 = time.perf_counter()
        ks = draw_k(a.k_strategy, a.seed, s, 0, L, a.k_min, a.k_max, a.k, a.tau)
        inp, tgt = loader.next(B)
        inp, tgt = torch.from_numpy(inp), torch.from_numpy(tgt)
        ce, aux = forward(inp, tgt, ks)
        (ce + aux).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip) if a.grad_clip > 0 else torch.tensor(0.0)
        lr = lr_at(s, a.lr, a.min_lr, warmup, a.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        times.append(dt)
        row = {"step": s + 1, "loss": ce.item(), "grad_norm": float(gnorm), "lr": lr,
               "tok_per_s": B * T / dt, "k_per_layer": ks}
        rows.append(row)
        if not a.quiet:
            print(f"peer step {s + 1:>{len(str(a.steps))}}/{a.steps} | loss {row['loss']:.4f} | gnorm "
                  f"{row['grad_norm']:.3f} | lr {lr:.2e} | {dt * 1e3:7.1f} ms | {row['tok_per_s']:.0f} tok/s | "
                  f"K {ks}", flush=True)
    post = times[a.warmup_steps:] if len(times) > a.warmup_steps else times
    med = B * T / statistics.median(post)
    print(f"peer median tok/s: {med:.1f} (median step {statistics.median(post) * 1e3:.1f} ms over {len(post)} "
          f"steps after {len(times) - len(post)} warm-up)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"median_tok_per_s": med, "threads": a.threads, "steps": rows,
                       "step_seconds": times, "warmup_steps": a.warmup_steps}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
