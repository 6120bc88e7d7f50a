#!/usr/bin/python3
"""Scaling study on Slurm: the same anyk model at several rank counts, strong and weak scaling.

Submits slurm/train.sbatch once per (mode, ranks), waits for the jobs, reads each run's
metrics.jsonl (tokens/s, MFU, and the step-time split of --profile: compute, dispatch, gradient
sync, optimizer) and writes

  OUT/scaling.csv   one row per run
  OUT/scaling.md    the same as a markdown table
  OUT/scaling.png   scaling efficiency against ranks (and the step-time split per run)

Strong scaling keeps the global batch fixed (--global-batch sequences split over the ranks);
weak scaling keeps the per-rank batch fixed (--batch sequences per rank). Efficiency is
(tokens/s per rank) / (tokens/s per rank at the smallest rank count) in both modes.

  /usr/bin/python3 tools/scaling_study.py --ranks 1,2,4,8,16 --ntasks-per-node 4 --out runs/scaling
  /usr/bin/python3 tools/scaling_study.py --out runs/scaling --collect-only   # re-read finished runs

Needs sbatch/squeue/scontrol on PATH, and matplotlib (Debian: python3-matplotlib) for the plot.
"""
import argparse
import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_MODEL = ("--k-strategy layer --experts 8 --k-min 1 --k-max 4 --layers 4 --dim 128 --heads 4 "
                 "--expert-hidden 128 --seq-len 128")

FIELDS = ["mode", "ranks", "nodes", "ep", "edp", "batch_per_rank", "tokens_per_step", "state", "steps_measured",
          "tok_per_s", "tok_per_s_per_rank", "step_ms", "compute_ms", "dispatch_ms", "sync_ms", "optim_ms",
          "other_ms", "mfu", "mean_k", "efficiency", "run_dir"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4,8", help="comma-separated rank counts (default 1,2,4,8)")
    p.add_argument("--modes", default="strong,weak", help="strong, weak or both (default strong,weak)")
    p.add_argument("--out", default="runs/scaling", help="output directory (run dirs, table, plot)")
    p.add_argument("--steps", type=int, default=200, help="training steps per run")
    p.add_argument("--skip", type=int, default=-1,
                   help="ignore logged intervals ending at or before this step (default: the first 20%%)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=8, help="weak scaling: sequences per rank")
    p.add_argument("--global-batch", type=int, default=0,
                   help="strong scaling: sequences per step over all ranks (default batch x max ranks)")
    p.add_argument("--experts", type=int, default=0, help="E, to pick ep (default: read --experts from --model-args)")
    p.add_argument("--model-args", default=DEFAULT_MODEL, help="anyk train model flags (no --batch)")
    p.add_argument("--train-args", default="", help="more anyk train flags")
    p.add_argument("--ntasks-per-node", type=int, default=4)
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--time", default="00:30:00", help="time limit per job")
    p.add_argument("--sbatch-args", default="", help="more sbatch flags (partition, account, gpus ...)")
    p.add_argument("--serial", action="store_true",
                   help="run the jobs one at a time (--dependency=singleton), for small or shared machines")
    p.add_argument("--wait-timeout", type=float, default=3600, help="seconds to wait for all jobs")
    p.add_argument("--collect-only", action="store_true", help="do not submit; read OUT/runs.json")
    p.add_argument("--sbatch-script", default=os.path.join(ROOT, "slurm", "train.sbatch"))
    p.add_argument("--anyk-bin", default=os.environ.get("ANYK_BIN", os.path.join(ROOT, "build", "anyk")))
    p.add_argument("--data", default=os.environ.get("DATA_DIR", os.path.join(ROOT, "data_cache", "fortunes")))
    return p.parse_args()


def flag_value(args, name, default):
    toks = shlex.split(args)
    for i, t in enumerate(toks):
        if t == name and i + 1 < len(toks):
            return toks[i + 1]
        if t.startswith(name + "="):
            return t.split("=", 1)[1]
    return default


def plan(a):
    ranks = sorted({int(r) for r in a.ranks.split(",") if r.strip()})
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("strong", "weak"):
            sys.exit(f"scaling_study: unknown mode {m!r} (strong, weak)")
    E = a.experts or int(flag_value(a.model_args, "--experts", "8"))
    G = a.global_batch or a.batch * max(ranks)
    runs = []
    for m in modes:
        for r in ranks:
            if m == "strong":
                if G % r:
                    sys.exit(f"scaling_study: --global-batch {G} is not divisible by {r} ranks")
                b = G // r
            else:
                b = a.batch
            ep = math.gcd(r, E)  # experts split over ep ranks (E % ep == 0), replicated over r / ep
            tpn = min(r, a.ntasks_per_node)
            runs.append(dict(mode=m, ranks=r, nodes=-(-r // tpn), tpn=tpn, ep=ep, edp=r // ep, batch_per_rank=b,
                             run_dir=os.path.join(os.path.abspath(a.out), f"{m}_r{r}")))
    return runs


def submit(a, run):
    env = dict(os.environ)
    env.update(ANYK_BIN=os.path.abspath(a.anyk_bin), DATA_DIR=os.path.abspath(a.data), RUN_DIR=run["run_dir"],
               STEPS=str(a.steps), EP=str(run["ep"]), THREADS=str(a.cpus_per_task),
               MODEL_ARGS=f"{a.model_args} --batch {run['batch_per_rank']}", LOG_EVERY=str(a.log_every),
               EVAL_EVERY="0", SAVE_EVERY="0", KEEP="1", REQUEUE="0", TRAIN_ARGS=f"--profile {a.train_args}".strip())
    cmd = ["sbatch", "--parsable", "--job-name=anyk-scaling", f"--nodes={run['nodes']}", f"--ntasks={run['ranks']}",
           f"--ntasks-per-node={run['tpn']}", f"--cpus-per-task={a.cpus_per_task}", f"--time={a.time}",
           f"--output={run['run_dir']}.out", f"--chdir={ROOT}"]
    if a.serial:
        cmd.append("--dependency=singleton")
    cmd += shlex.split(a.sbatch_args) + [a.sbatch_script]
    if os.path.exists(run["run_dir"]):
        subprocess.run(["rm", "-rf", run["run_dir"]], check=True)
    if os.path.exists(run["run_dir"] + ".out"):
        os.remove(run["run_dir"] + ".out")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"scaling_study: sbatch failed ({' '.join(cmd)}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def job_state(job):
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    m = re.search(r"JobState=(\S+)", out.stdout)
    if m:
        return m.group(1)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True)
    return out.stdout.strip().split("\n")[0].split()[0] if out.returncode == 0 and out.stdout.strip() else "UNKNOWN"


def wait_all(jobs, timeout):
    deadline = time.time() + timeout
    pending = set(jobs)
    while pending:
        for j in list(pending):
            if job_state(j) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                pending.discard(j)
        if not pending:
            break
        if time.time() > deadline:
            sys.exit(f"scaling_study: jobs {sorted(pending)} still not finished after {timeout:.0f} s "
                     "(raise --wait-timeout; they keep running)")
        time.sleep(2)


def collect(a, run):
    row = {k: "" for k in FIELDS}
    for k in ("mode", "ranks", "nodes", "ep", "edp", "batch_per_rank", "run_dir"):
        row[k] = run[k]
    row["state"] = run.get("state", "")
    train = []
    path = os.path.join(run["run_dir"], "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("type") == "train":
                    train.append(j)
    tokens = None
    log = os.path.join(run["run_dir"], "train.log")
    if os.path.exists(log):
        m = re.search(r"\((\d+) tokens/step\)", open(log).read())
        if m:
            tokens = int(m.group(1))
    row["tokens_per_step"] = tokens or ""
    if not train:
        return row
    last = train[-1]["step"]
    skip = a.skip if a.skip >= 0 else max(1, last // 5)
    use = [j for j in train if j["step"] > skip] or train[-1:]
    # Each entry averages the steps since the previous entry: weight by those steps.
    prev = {id(j): (train[i - 1]["step"] if i else 0) for i, j in enumerate(train)}
    w = [j["step"] - prev[id(j)] for j in use]
    W = float(sum(w))

    def mean(key):
        vals = [(j.get(key), wi) for j, wi in zip(use, w) if isinstance(j.get(key), (int, float))]
        return sum(v * wi for v, wi in vals) / sum(wi for _, wi in vals) if vals else float("nan")

    # tokens/s over the interval = tokens / time: average the step times, not the rates.
    step_s = sum(wi * (tokens / j["tok_per_s"]) for j, wi in zip(use, w)) / W if tokens else float("nan")
    tps = tokens / step_s if tokens else mean("tok_per_s")
    row.update(steps_measured=int(W), tok_per_s=tps, tok_per_s_per_rank=tps / run["ranks"], step_ms=1e3 * step_s,
               compute_ms=1e3 * mean("t_compute"), dispatch_ms=1e3 * mean("t_dispatch"), sync_ms=1e3 * mean("t_sync"),
               optim_ms=1e3 * mean("t_optim"), mfu=mean("mfu"), mean_k=mean("mean_k"))
    row["other_ms"] = row["step_ms"] - row["compute_ms"] - row["dispatch_ms"] - row["sync_ms"] - row["optim_ms"]
    return row


def efficiency(rows):
    for mode in {r["mode"] for r in rows}:
        rs = sorted((r for r in rows if r["mode"] == mode and r["tok_per_s"] != ""), key=lambda r: r["ranks"])
        if not rs:
            continue
        base = rs[0]["tok_per_s_per_rank"]
        for r in rs:
            r["efficiency"] = r["tok_per_s_per_rank"] / base if base else float("nan")


def fmt(v, nd=1):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def write_outputs(a, rows):
    os.makedirs(a.out, exist_ok=True)
    csv_path, md_path, png_path = (os.path.join(a.out, n) for n in ("scaling.csv", "scaling.md", "scaling.png"))
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    cols = [("mode", "mode", 0), ("ranks", "ranks", 0), ("nodes", "nodes", 0), ("ep", "ep x edp", 0),
            ("batch_per_rank", "B/rank", 0), ("tokens_per_step", "tokens/step", 0), ("tok_per_s", "tok/s", 0),
            ("step_ms", "step ms", 1), ("compute_ms", "compute", 1), ("dispatch_ms", "dispatch", 1),
            ("sync_ms", "grad sync", 1), ("optim_ms", "optim", 1), ("mfu", "MFU %", 1), ("efficiency", "efficiency", 2),
            ("state", "job", 0)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for key, _, nd in cols:
            v = r[key]
            if key == "ep":
                v = f"{r['ep']} x {r['edp']}"
            elif key == "mfu" and isinstance(v, float):
                v = 100 * v
            cells.append(fmt(v, nd))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Step-time split in ms per step (from --profile): compute = forward + backward without the "
            "dispatcher's exchanges; dispatch = the all-to-all count and row exchanges (including waiting "
            "for peers); grad sync = the gradient all-reduces; optim = norm, clipping and AdamW. Efficiency = "
            "tokens/s per rank relative to the smallest rank count of the same mode (1.0 = perfect).")
    with open(md_path, "w") as f:
        f.write("# anyk scaling study\n\n" + "\n".join(lines) + "\n\n" + note + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scaling_study: matplotlib not found (apt-get install python3-matplotlib): no plot", file=sys.stderr)
        return csv_path, md_path, None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, marker in (("strong", "o"), ("weak", "s")):
        rs = sorted((r for r in rows if r["mode"] == mode and r["efficiency"] != ""), key=lambda r: r["ranks"])
        if rs:
            ax1.plot([r["ranks"] for r in rs], [r["efficiency"] for r in rs], marker=marker, label=f"{mode} scaling")
    allr = sorted({r["ranks"] for r in rows})
    ax1.axhline(1.0, color="gray", ls="--", lw=1, label="ideal")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(allr)
    ax1.set_xticklabels([str(r) for r in allr])
    ax1.set_xlabel("MPI ranks")
    ax1.set_ylabel("efficiency (tok/s per rank, relative)")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title("scaling efficiency")
    ok = [r for r in rows if r["tok_per_s"] != ""]
    labels = [f"{r['mode'][0]}{r['ranks']}" for r in ok]
    bottom = [0.0] * len(ok)
    for key, name in (("compute_ms", "compute"), ("dispatch_ms", "dispatch"), ("sync_ms", "grad sync"),
                      ("optim_ms", "optimizer"), ("other_ms", "other")):
        vals = [max(0.0, r[key]) if isinstance(r[key], float) and not math.isnan(r[key]) else 0.0 for r in ok]
        ax2.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("ms per step")
    ax2.set_xlabel("run (s = strong, w = weak; ranks)")
    ax2.set_title("step-time split")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return csv_path, md_path, png_path


def main():
    a = parse_args()
    os.makedirs(a.out, exist_ok=True)
    state_file = os.path.join(a.out, "runs.json")
    if a.collect_only:
        if not os.path.exists(state_file):
            sys.exit(f"scaling_study: {state_file} not found (run without --collect-only first)")
        runs = json.load(open(state_file))
        for r in runs:
            if r.get("job"):
                r["state"] = job_state(r["job"])
    else:
        if not os.access(a.anyk_bin, os.X_OK):
            sys.exit(f"scaling_study: {a.anyk_bin} is not executable (build first or pass --anyk-bin)")
        if not os.path.exists(os.path.join(a.data, "train.bin")):
            sys.exit(f"scaling_study: {a.data}/train.bin not found (anyk prepare, or pass --data)")
        runs = plan(a)
        for r in runs:
            r["job"] = submit(a, r)
            print(f"scaling_study: submitted {r['mode']:6s} ranks={r['ranks']:<4d} nodes={r['nodes']} "
                  f"ep={r['ep']} B/rank={r['batch_per_rank']}: job {r['job']}", flush=True)
        json.dump(runs, open(state_file, "w"), indent=1)
        wait_all([r["job"] for r in runs], a.wait_timeout)
        for r in runs:
            r["state"] = job_state(r["job"])
        json.dump(runs, open(state_file, "w"), indent=1)
    rows = [collect(a, r) for r in runs]
    efficiency(rows)
    csv_path, md_path, png_path = write_outputs(a, rows)
    print(open(md_path).read())
    print(f"scaling_study: wrote {csv_path}, {md_path}" + (f", {png_path}" if png_path else ""))
    bad = [r for r in rows if r["state"] not in ("COMPLETED", "") or r["tok_per_s"] == ""]
    if bad:
        for r in bad:
            print(f"scaling_study: run {r['mode']} ranks={r['ranks']} did not complete (job state {r['state']}, "
                  f"see {r['run_dir']}.out)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
