#!/usr/bin/python3
"""--precision f32 against bf16 (bf16 activation storage; on CUDA also bf16 GEMM inputs), side by side.

Trains the same model with each precision, alternating f32 and bf16 for --rounds rounds so
that both see the same machine load, and prints per precision the median tokens/s over the
rounds (each round's figure: the median of its logged steps after the first), the arena
high-water mark (MB) and the final loss, then the bf16/f32 ratios. --json FILE writes the same
figures. Example (CPU, the default model):

    /usr/bin/python3 bench/precision_bench.py --rounds 3 --steps 12
    /usr/bin/python3 bench/precision_bench.py --device cuda --model "--layers 8 --dim 2048 ..."
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ("--layers 4 --dim 256 --heads 4 --experts 8 --expert-hidden 512 --seq-len 128 --batch 8 "
         "--k-strategy fixed --k 2")


def run(args, anyk, data, tmp, precision, r):
    run_dir = os.path.join(tmp, f"{precision}_{r}")
    cmd = [anyk, "train", "--data", data, "--run-dir", run_dir, "--steps", str(args.steps), "--log-every", "1",
           "--eval-every", "0", "--eval-windows", "1", "--threads", str(args.threads), "--seed", "3",
           "--device", args.device, "--precision", precision] + args.model.split()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"precision_bench: {' '.join(cmd)} failed (rc {p.returncode}):\n{p.stderr.strip()}")
    recs = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if '"type": "train"' in l]
    if len(recs) < 3:
        sys.exit(f"precision_bench: {run_dir}: {len(recs)} step records; raise --steps")
    return {"tok_per_s": statistics.median(x["tok_per_s"] for x in recs[1:]),
            "arena_mb": max(x["arena_mb"] for x in recs), "loss": recs[-1]["loss"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anyk", default=os.path.join(ROOT, "build", "anyk"))
    ap.add_argument("--data", help="a prepared data dir (default: a synthetic corpus prepared in a temp dir)")
    ap.add_argument("--model", default=MODEL, help="model and batch options")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.steps < 3 or args.rounds < 1:
        sys.exit("precision_bench: --steps must be >= 3 and --rounds >= 1")
    if not os.access(args.anyk, os.X_OK):
        sys.exit(f"precision_bench: no anyk binary at {args.anyk} hint: build it (tools/build.sh) or pass --anyk")
    with tempfile.TemporaryDirectory(prefix="anyk-precision-") as tmp:
        data = args.data
        if not data:
            text = os.path.join(tmp, "text.txt")
            with open(text, "w") as f:
                for i in range(20000):
                    f.write(f"line {i}: experts learn a coarse-to-fine ranking of {i * 7919 % 1000}.\n")
            data = os.path.join(tmp, "data")
            subprocess.run([args.anyk, "prepare", "--input", text, "--out", data], check=True,
                           stdout=subprocess.DEVNULL)
        res = {"f32": [], "bf16": []}
        for r in range(args.rounds):
            for p in ("f32", "bf16"):
                res[p].append(run(args, args.anyk, data, tmp, p, r))
                print(f"round {r + 1}/{args.rounds} {p:4s}: {res[p][-1]['tok_per_s']:.0f} tok/s, "
                      f"arena {res[p][-1]['arena_mb']:.1f} MB, loss {res[p][-1]['loss']:.4f}", flush=True)
    out = {"device": args.device, "model": args.model, "steps": args.steps, "rounds": args.rounds}
    for p in res:
        out[p] = {"tok_per_s_median": statistics.median(x["tok_per_s"] for x in res[p]),
                  "arena_mb": max(x["arena_mb"] for x in res[p]), "loss": res[p][-1]["loss"]}
    out["bf16_over_f32"] = {"tok_per_s": out["bf16"]["tok_per_s_median"] / out["f32"]["tok_per_s_median"],
                            "arena": out["bf16"]["arena_mb"] / out["f32"]["arena_mb"]}
    for p in ("f32", "bf16"):
        print(f"{p:4s}: median {out[p]['tok_per_s_median']:.0f} tok/s, arena {out[p]['arena_mb']:.1f} MB, "
              f"final loss {out[p]['loss']:.4f}")
    print(f"bf16/f32: tokens/s x{out['bf16_over_f32']['tok_per_s']:.3f}, arena x{out['bf16_over_f32']['arena']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
