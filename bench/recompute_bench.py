#!/usr/bin/python3
"""--recompute none against --recompute layer, side by side, at several depths.

For each --layers value, trains the same model (same seed, data windows and K draws) with and
without activation recompute, alternating the two for --rounds rounds so that both see the same
machine load. Prints, per depth and mode: the median tokens/s (each round's figure is the median
of its logged steps after the first; the figure shown is the median over rounds), the CPU seconds
per step (the process's user + system time of a --steps run minus that of a 1-step run, divided
by --steps - 1: start-up and the final sweep cancel, and unlike tokens/s it barely moves with
the load of a shared machine), the step arena's high-water mark (arena_mb of metrics.jsonl:
step arena plus per-op scratch) and the final loss, which must be the same bits in both modes.
Then the layer/none ratios. --json FILE writes the figures. Example (CPU, the default model at L = 2, 4, 8):

    /usr/bin/python3 bench/recompute_bench.py --rounds 3 --steps 6 --layers 2,4,8
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "--dim 128 --heads 4 --experts 8 --expert-hidden 128 --seq-len 128 --batch 16 --k-strategy layer"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(args, data, tmp, layers, mode, rnd, steps=None):
    steps = steps or args.steps
    run_dir = os.path.join(tmp, f"L{layers}_{mode}_{rnd}_{steps}")
    c0 = cpu_seconds()
    cmd = [args.anyk, "train", "--data", data, "--run-dir", run_dir, "--steps", str(steps),
           "--log-every", "1", "--eval-every", "0", "--eval-windows", "1", "--threads", str(args.threads),
           "--seed", "3", "--layers", str(layers), "--recompute", mode] + args.model.split()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"recompute_bench: {' '.join(cmd)} failed (rc {p.returncode}):\n{p.stderr.strip()}")
    cpu = cpu_seconds() - c0
    if steps == 1:
        return {"cpu_s": cpu}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if r.get("type") == "train"]
    if len(steps) < 3:
        sys.exit(f"recompute_bench: {run_dir}: {len(steps)} step records; raise --steps")
    return {"tok_per_s": statistics.median(r["tok_per_s"] for r in steps[1:]), "cpu_s": cpu,
            "arena_mb": max(r["arena_mb"] for r in steps), "loss": steps[-1]["loss"]}


def prepare(args, tmp):
    text = os.path.join(tmp, "corpus.txt")
    with open(text, "w") as f:
        for i in range(20000):
            f.write(f"sample {i}: a router sends token {i * 7919 % 997} to expert {i % 8}.\n")
    data = os.path.join(tmp, "data")
    subprocess.run([args.anyk, "prepare", "--input", text, "--out", data], check=True, stdout=subprocess.DEVNULL)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anyk", default=os.path.join(ROOT, "build", "anyk"))
    ap.add_argument("--data", help="a prepared data dir (default: a synthetic corpus prepared in a temp dir)")
    ap.add_argument("--model", default=MODEL, help="model and batch options (without --layers)")
    ap.add_argument("--layers", default="2,4,8", help="comma-separated depths")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.steps < 3 or args.rounds < 1:
        sys.exit("recompute_bench: --steps must be >= 3 and --rounds >= 1")
    if not os.access(args.anyk, os.X_OK):
        sys.exit(f"recompute_bench: no anyk binary at {args.anyk} hint: build it or pass --anyk")
    depths = [int(x) for x in args.layers.split(",")]
    out = {"model": args.model, "steps": args.steps, "rounds": args.rounds, "load": os.getloadavg()[0], "depths": {}}
    with tempfile.TemporaryDirectory(prefix="anyk-recompute-") as tmp:
        data = args.data or prepare(args, tmp)
        for L in depths:
            res = {"none": [], "layer": []}
            for r in range(args.rounds):
                for mode in ("none", "layer"):
                    x = train(args, data, tmp, L, mode, r)
                    x["cpu_per_step"] = (x["cpu_s"] - train(args, data, tmp, L, mode, r, 1)["cpu_s"]) / (args.steps - 1)
                    res[mode].append(x)
                    print(f"L={L} round {r + 1}/{args.rounds} {mode:5s}: {x['tok_per_s']:.0f} tok/s, "
                          f"{x['cpu_per_step']:.3f} CPU s/step, arena {x['arena_mb']:.1f} MB, loss {x['loss']:.6f}",
                          flush=True)
            d = {m: {"tok_per_s_median": statistics.median(x["tok_per_s"] for x in res[m]),
                     "cpu_per_step_median": statistics.median(x["cpu_per_step"] for x in res[m]),
                     "arena_mb": max(x["arena_mb"] for x in res[m]), "loss": res[m][-1]["loss"]} for m in res}
            d["layer_over_none"] = {"tok_per_s": d["layer"]["tok_per_s_median"] / d["none"]["tok_per_s_median"],
                                    "cpu_per_step": d["layer"]["cpu_per_step_median"] / d["none"]["cpu_per_step_median"],
                                    "arena": d["layer"]["arena_mb"] / d["none"]["arena_mb"]}
            d["same_loss"] = d["layer"]["loss"] == d["none"]["loss"]
            out["depths"][str(L)] = d
    out["load_end"] = os.getloadavg()[0]
    print(f"load average (1 min) at start {out['load']:.2f}, at end {out['load_end']:.2f}")
    for L, d in out["depths"].items():
        n, y, q = d["none"], d["layer"], d["layer_over_none"]
        print(f"L={L}: none {n['tok_per_s_median']:.0f} tok/s, {n['cpu_per_step_median']:.3f} CPU s/step, arena "
              f"{n['arena_mb']:.1f} MB | layer {y['tok_per_s_median']:.0f} tok/s, {y['cpu_per_step_median']:.3f} CPU "
              f"s/step, arena {y['arena_mb']:.1f} MB | arena /{1 / q['arena']:.2f}, CPU time per step "
              f"x{q['cpu_per_step']:.3f}, wall step time x{1 / q['tok_per_s']:.3f}, same final loss: {d['same_loss']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
