#!/usr/bin/env python3
"""docs/model-spec.md, checked against a real run: everything below is written from that page and
docs/checkpoint-format.md alone (it imports nothing of anyk and runs the binary only to train).

Trains a tiny model for one step with `anyk train` (layer strategy, a non-default seed), then
recomputes in numpy (float64):
  1. the initial parameters from the seed (hash chain, hash_name, Box-Muller);
  2. step 1's training windows (the loader stream) and per-layer K (the `layer` draws), against
     metrics.jsonl's k_per_layer;
  3. step 1's training loss from those weights and windows (RoPE, attention, top-K, gates),
     against metrics.jsonl's loss;
  4. from checkpoints/step_1: raw moments, the clipped gradient's norm, and every parameter as
     the AdamW update of its initial value, weight decay exactly where the page says;
  5. the final K-sweep's val loss at every K from model.h5 and the val shard, against sweep.json;
  6. the top-K tie-break, on a copy of model.h5 whose router rows 1 and 2 are equal (anyk eval);
  7. that a --precision bf16 run saves f32.
Exit 0 when every check passes, 1 otherwise, 77 (skipped) without numpy or h5py. Needs numpy and h5py (Debian: python3-numpy,
python3-h5py). Usage: python3 tools/model_spec_check.py --anyk build/anyk [--keep DIR]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zlib

try:
    import h5py
    import numpy as np
except ImportError as e:  # ctest reports 77 as skipped, never as passed
    print(f"model_spec_check: skipped: {e} (tools/deps.sh installs python3-numpy and python3-h5py)")
    sys.exit(77)

U64 = np.uint64
FAILED = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILED.append(what)


# ---- random numbers (model-spec.md "Random numbers"), vectorised over uint64 arrays -------------
def mix64(z):
    z = np.asarray(z, dtype=U64)
    with np.errstate(over="ignore"):
        z = z + U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def hash_key(a, b=0, c=0, d=0, e=0):
    h = mix64(np.asarray(a, dtype=U64) ^ U64(0x5851F42D4C957F2D))
    for w in (b, c, d, e):
        h = mix64(h ^ np.asarray(w, dtype=U64))
    return h


def uniform01(h):
    return (np.asarray(h, dtype=U64) >> U64(11)).astype(np.float64) * 2.0**-53


def uniform_int(h, n):
    return (np.floor(uniform01(h) * n).astype(np.int64)) % n


def hash_name(s):
    h = 0xCBF29CE484222325
    for byte in s.encode():
        h = ((h ^ byte) * 0x100000001B3) & ((1 << 64) - 1)
    return h


def normal_from(h):
    u1 = np.maximum(uniform01(mix64(h ^ U64(0x1234567))), 1e-300)
    u2 = uniform01(mix64(h ^ U64(0x89ABCDEF)))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)


# ---- files (checkpoint-format.md) ----------------------------------------------------------------
def checked(ds):
    a = ds[()]
    assert zlib.crc32(a.astype("<f4").tobytes()) == int(ds.attrs["crc32"]), ds.name
    return a.astype(np.float64)


def attrs_of(f):
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def load_checkpoint(step_dir):
    with h5py.File(f"{step_dir}/meta.h5", "r") as f:
        meta = attrs_of(f)
        state = {g: {n: checked(d) for n, d in f[g].items()} for g in ("params", "adam_m", "adam_v") if g in f}
    experts = {g: {} for g in state}
    for r in range(meta["ep_size"]):
        with h5py.File(f"{step_dir}/experts_{r}.h5", "r") as f:
            for gid in f["experts"]:
                for g in state:
                    for n, d in f[f"experts/{gid}/{g}"].items():
                        experts[g].setdefault(n, [None] * meta["experts"])[int(gid)] = checked(d)
    for g in state:
        for n, parts in experts[g].items():
            state[g][n] = np.stack(parts)
    return state, meta


def load_weights(path):
    with h5py.File(path, "r") as f:
        return {n: checked(d) for n, d in f.items() if isinstance(d, h5py.Dataset)}, attrs_of(f)


def shard_tokens(path):
    b = open(path, "rb").read()
    head = np.frombuffer(b[:1024], dtype="<i4")
    assert head[0] == 20240520 and head[1] == 1, path
    return np.frombuffer(b[1024:1024 + 2 * int(head[2])], dtype="<u2").astype(np.int64)


def ini(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# ---- the model (model-spec.md "Forward pass") ------------------------------------------------------
def param_names(L):
    names = ["wte"]
    for l in range(L):
        p = f"layers.{l}."
        names += [p + "ln1", p + "attn.wqkv", p + "attn.wo", p + "ln2", p + "moe.router", p + "moe.experts.w13",
                  p + "moe.experts.w2"]
    return names + ["lnf"]


def shapes(m):
    V, C, E, H = m["vocab"], m["dim"], m["experts"], m["expert_hidden"]
    s = {"wte": (V, C), "lnf": (C,)}
    for l in range(m["layers"]):
        p = f"layers.{l}."
        s.update({p + "ln1": (C,), p + "ln2": (C,), p + "attn.wqkv": (3 * C, C), p + "attn.wo": (C, C),
                  p + "moe.router": (E, C), p + "moe.experts.w13": (E, 2 * H, C), p + "moe.experts.w2": (E, C, H)})
    return s


def init_params(m, seed):
    out = {}
    out_std = m["init_std"] / np.sqrt(2.0 * m["layers"])
    for name, shape in shapes(m).items():
        if name == "lnf" or name.endswith(".ln1") or name.endswith(".ln2"):
            out[name] = np.ones(shape)
            continue
        std = out_std if name.endswith(".attn.wo") or name.endswith(".experts.w2") else m["init_std"]
        idx = np.arange(int(np.prod(shape)), dtype=U64)
        vals = (std * normal_from(hash_key(seed, hash_name(name), idx))).astype(np.float32)
        out[name] = vals.astype(np.float64).reshape(shape)
    return out


def rmsnorm(x, w, eps):
    return x * (1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)) * w


def rope(x, theta):  # x (B, T, NH, D): pairs (i, i + D/2)
    T, D = x.shape[1], x.shape[3]
    i = np.arange(D // 2)
    ang = np.arange(T)[:, None] * theta ** (-2.0 * i / D)
    cos = np.cos(ang).astype(np.float32).astype(np.float64)[None, :, None, :]
    sin = np.sin(ang).astype(np.float32).astype(np.float64)[None, :, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def moe(h, P, pre, K, E, H, renorm=True, low_id_wins=True):
    p = softmax(h @ P[pre + "moe.router"].T)  # (N, E)
    if low_id_wins:  # descending; a tie keeps the lower id first
        order = np.argsort(-p, axis=-1, kind="stable")
    else:  # the other tie-break, for the check's negative control
        order = E - 1 - np.argsort(-p[:, ::-1], axis=-1, kind="stable")
    ids = order[:, :K]
    chosen = np.take_along_axis(p, ids, axis=-1)
    w = chosen / chosen.sum(-1, keepdims=True) if renorm else chosen
    w13, w2 = P[pre + "moe.experts.w13"], P[pre + "moe.experts.w2"]
    y = np.zeros_like(h)
    for e in range(E):
        g, u = h @ w13[e, :H].T, h @ w13[e, H:].T
        ye = (g / (1.0 + np.exp(-g)) * u) @ w2[e].T
        y += (w * (ids == e)).sum(-1, keepdims=True) * ye
    return y


def token_losses(P, m, inputs, targets, ks, low_id_wins=True):
    B, T = inputs.shape
    C, NH, E, H = m["dim"], m["heads"], m["experts"], m["expert_hidden"]
    D, eps = C // NH, m["norm_eps"]
    x = P["wte"][inputs]  # (B, T, C)
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for l in range(m["layers"]):
        pre = f"layers.{l}."
        qkv = rmsnorm(x, P[pre + "ln1"], eps) @ P[pre + "attn.wqkv"].T
        q = rope(qkv[..., :C].reshape(B, T, NH, D), m["rope_theta"])
        k = rope(qkv[..., C:2 * C].reshape(B, T, NH, D), m["rope_theta"])
        v = qkv[..., 2 * C:].reshape(B, T, NH, D)
        s = np.einsum("bihd,bjhd->bhij", q, k) * (1.0 / np.sqrt(D))
        a = softmax(np.where(mask, -np.inf, s))
        o = np.einsum("bhij,bjhd->bihd", a, v).reshape(B, T, C)
        x = x + o @ P[pre + "attn.wo"].T
        h = rmsnorm(x, P[pre + "ln2"], eps).reshape(B * T, C)
        x = x + moe(h, P, pre, ks[l], E, H, bool(m["router_renormalize"]), low_id_wins).reshape(B, T, C)
    logits = rmsnorm(x, P["lnf"], eps) @ P["wte"].T
    mx = logits.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(logits - mx).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


# ---- the run -------------------------------------------------------------------------------------
def corpus(n):
    rng = random.Random(5)
    words = ("the a an of to in is was for on that with as by at from it this be are or have not one "
             "model expert router token layer train loss step value data run weight gate sum mean").split()
    text = []
    while sum(map(len, text)) < n:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        text.append(s[0].upper() + s[1:] + rng.choice([".", "!", "?", ","]) + rng.choice([" ", "\n"]))
    return "".join(text)


def anyk(binary, *args, cwd):
    r = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"model_spec_check: anyk {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anyk", default=os.environ.get("ANYK_BIN", "anyk"))
    ap.add_argument("--keep", help="work in this directory and keep it")
    a = ap.parse_args()
    a.anyk = os.path.abspath(a.anyk) if os.sep in a.anyk else a.anyk
    d = a.keep or tempfile.mkdtemp(prefix="model_spec_check.")
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/corpus.txt", "w") as f:
        f.write(corpus(60000))
    anyk(a.anyk, "prepare", "--input", "corpus.txt", "--out", "data", cwd=d)
    seed, B, T = 7, 4, 32
    anyk(a.anyk, "train", "--data", "data", "--run-dir", "run", "--overwrite", "--steps", "1", "--warmup", "1",
         "--layers", "2", "--dim", "32", "--heads", "4", "--experts", "4", "--expert-hidden", "32", "--seq-len",
         str(T), "--batch", str(B), "--k-strategy", "layer", "--k-min", "1", "--k-max", "4", "--lr", "0.01",
         "--eval-windows", "16", "--threads", "1", "--seed", str(seed), cwd=d)
    run = f"{d}/run"
    state, meta = load_checkpoint(f"{run}/checkpoints/step_1")
    cfg = ini(meta["config_ini"])
    check(int(cfg["seed"]) == seed and meta["step"] == 1 and meta["adam_step"] == 1, "step_1: seed, step, adam_step")
    m = {k: meta[k] for k in ("vocab", "dim", "layers", "heads", "experts", "expert_hidden", "seq_len", "rope_theta",
                              "norm_eps", "init_std", "router_renormalize")}
    L, E = m["layers"], m["experts"]
    P0 = init_params(m, seed)
    record = [json.loads(x) for x in open(f"{run}/metrics.jsonl") if '"type": "train"' in x][0]

    # 2. windows and K of step 0 (micro-batch 0): samples 0..B-1.
    train = shard_tokens(f"{d}/data/train.bin")
    S = len(train) - T
    starts = uniform_int(hash_key(seed, 0x10ADE5, np.arange(B, dtype=U64)), S)
    inputs = np.stack([train[s:s + T] for s in starts])
    targets = np.stack([train[s + 1:s + T + 1] for s in starts])
    span = int(cfg["k-max"]) - int(cfg["k-min"]) + 1
    ks = [int(cfg["k-min"]) + int(uniform_int(hash_key(seed, 0x4B5EED03, 0, 0, l), span)) for l in range(L)]
    check(ks == record["k_per_layer"], f"step 1 K per layer {ks} (anyk: {record['k_per_layer']})")

    # 3. step 1's loss from the initial weights.
    loss = token_losses(P0, m, inputs, targets, ks).mean()
    check(abs(loss - record["loss"]) <= 1e-6 * abs(record["loss"]),
          f"step 1 train loss {loss:.9f} (anyk: {record['loss']:.9f})")

    # 4. raw moments, the clip, AdamW with decay on the listed parameters.
    b1, b2, eps = 0.9, 0.95, 1e-8
    lr, wd, clip = float(cfg["lr"]) * 1 / int(cfg["warmup"]), float(cfg["weight-decay"]), float(cfg["grad-clip"])
    check(clip == 1.0, f"the default --grad-clip is 1 (config.ini: {cfg['grad-clip']})")
    sq = 0.0
    raw_err = 0.0
    for n in param_names(L):
        g = state["adam_m"][n] / (1 - b1)
        sq += (g * g).sum()
        want_v = (1 - b2) * g * g
        raw_err = max(raw_err, float(np.max(np.abs(state["adam_v"][n] - want_v) / np.maximum(want_v, 1e-30))))
    check(raw_err <= 1e-5, f"stored moments are raw: v = (1-b2)(m/(1-b1))^2 after one step (max rel err {raw_err:.1e})")
    want_norm = min(record["grad_norm"], clip)
    check(abs(np.sqrt(sq) - want_norm) <= 1e-5 * want_norm,
          f"|m/(1-b1)| = {np.sqrt(sq):.7f} = min(grad_norm {record['grad_norm']:.5f}, clip {clip})")
    decayed = (".attn.wqkv", ".attn.wo", ".moe.router", ".moe.experts.w13", ".moe.experts.w2")
    for n in param_names(L):
        p1, mm, vv = state["params"][n], state["adam_m"][n], state["adam_v"][n]
        decay = n.endswith(decayed)
        upd = (lr / (1 - b1)) * mm / (np.sqrt(vv) / np.sqrt(1 - b2) + eps)
        # p1 is one f32 rounding of a double; the stored m, v are f32 roundings of anyk's doubles,
        # which moves the update by ~1e-7 of itself.
        tol = 3 * np.spacing(np.abs(p1).astype(np.float32)).astype(np.float64) + 4e-7 * np.abs(upd)
        err = np.abs(p1 - (P0[n] * (1 - lr * wd * decay) - upd))
        alt = np.abs(p1 - (P0[n] * (1 - lr * wd * (not decay)) - upd))  # the other decay choice must fail
        check(bool(np.all(err <= tol)) and not bool(np.all(alt <= tol)),
              f"{n}: init + AdamW step ({'decay' if decay else 'no decay'}), max |err| {err.max():.1e}")

    # 5. the final sweep (model.h5 = the step-1 weights) on the val windows.
    P1, attrs = load_weights(f"{run}/model.h5")
    check(all(np.array_equal(P1[n], state["params"][n]) for n in P1), "model.h5 holds step_1's parameters")
    val = shard_tokens(f"{d}/data/val.bin")
    W = min(int(cfg["eval-windows"]), (len(val) - 1) // T)
    vin = np.stack([val[w * T:w * T + T] for w in range(W)])
    vtg = np.stack([val[w * T + 1:w * T + T + 1] for w in range(W)])
    sweep = json.load(open(f"{run}/sweep.json"))["results"]
    for r in sweep:
        k = r["k"][0]
        got = token_losses(P1, m, vin, vtg, [k] * L).mean()
        check(abs(got - r["val_loss"]) <= 1e-6 * r["val_loss"],
              f"val loss at K={k}: {got:.8f} (anyk: {r['val_loss']:.8f}, {r['windows']} windows)")
    check(len(sweep) == E and all(r["windows"] == W for r in sweep), f"sweep: K = 1..{E} on {W} windows")

    # 6. the top-K tie-break: experts 1 and 2 get the same router row in every layer, so every
    # token's p ties between them; the lower id must win (and the other rule must not match).
    shutil.copy(f"{run}/model.h5", f"{d}/tied.h5")
    with h5py.File(f"{d}/tied.h5", "r+") as f:
        for l in range(L):
            ds = f[f"layers.{l}.moe.router"]
            w = ds[()]
            w[2] = w[1]
            ds[...] = w
            ds.attrs.modify("crc32", np.uint32(zlib.crc32(w.astype("<f4").tobytes())))
            P1[f"layers.{l}.moe.router"] = w.astype(np.float64)
    anyk(a.anyk, "eval", "--weights", "tied.h5", "--data", "data", "--k", "1,2", "--batch", str(B), "--eval-windows",
         str(W), "--threads", "1", "--json", "tied.json", cwd=d)
    for r in json.load(open(f"{d}/tied.json"))["results"]:
        k = r["k"][0]
        got = token_losses(P1, m, vin, vtg, [k] * L).mean()
        other = token_losses(P1, m, vin, vtg, [k] * L, low_id_wins=False).mean()
        # At K=1 the tie decides the only expert: the other rule must be visibly off.
        check(abs(got - r["val_loss"]) <= 1e-6 * r["val_loss"] and (k > 1 or abs(other - r["val_loss"]) > 1e-4),
              f"tied router rows, K={k}: lower id wins {got:.8f}, higher id wins {other:.8f} (anyk: {r['val_loss']:.8f})")
    # 7. a --precision bf16 run saves f32: every dataset is <f4 and holds values bf16 cannot.
    anyk(a.anyk, "train", "--data", "data", "--run-dir", "run_bf16", "--overwrite", "--steps", "1", "--warmup", "1",
         "--layers", "2", "--dim", "32", "--heads", "4", "--experts", "4", "--expert-hidden", "32", "--seq-len",
         str(T), "--batch", str(B), "--precision", "bf16", "--eval-windows", "2", "--threads", "1", cwd=d)
    files = [f"{d}/run_bf16/model.h5", f"{d}/run_bf16/checkpoints/step_1/meta.h5",
             f"{d}/run_bf16/checkpoints/step_1/experts_0.h5"]
    dtypes, low_bits = set(), 0
    for path in files:
        with h5py.File(path, "r") as f:
            def visit(_, obj):
                nonlocal low_bits
                if isinstance(obj, h5py.Dataset):
                    dtypes.add(obj.dtype.str)
                    low_bits += int(np.count_nonzero(obj[()].astype("<f4").view("<u4") & 0xFFFF))
            f.visititems(visit)
    check(dtypes == {"<f4"} and low_bits > 0,
          f"--precision bf16 saves f32: dtypes {sorted(dtypes)}, {low_bits} values with bits below bf16's mantissa")
    print(f"model_spec_check: {'FAILED ' + str(len(FAILED)) if FAILED else 'all passed'}" + (f" ({d})" if a.keep else ""))
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
