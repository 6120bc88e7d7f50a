#!/usr/bin/python3
"""Scaling study on the namespaced test cluster (tools/cluster.sh): anyk at 1, 2 and 4 hosts and
several link settings (tc tbf on every host's veth), with --profile, beside tools/cost_model.py's
prediction for the same settings.

Per link setting it shapes the links, measures them with an MPI ping-pong between two hosts
(tools/mpi_pingpong.c: per-message latency and bandwidth, independent of the study), then runs
`srun -N hosts anyk train --profile` per host count (weak scaling: the same batch per rank,
ep = gcd(ranks, E)). It writes

  OUT/cluster_scaling.md    measured step-time split | predicted split | predicted/measured
  OUT/cluster_scaling.csv   the same numbers
  OUT/cluster_scaling.png   measured and predicted split side by side per setting

Measured numbers come from metrics.jsonl (mean over the steps after the first 20%); predicted
numbers come from cost_model.step_cost() with the cluster preset: link bandwidth from the
nominal rate (x 1448/1514 TCP payload per Ethernet frame) or, unshaped, the ping-pong's
bandwidth; latency per message from the ping-pong; compute FLOP rate and optimizer bandwidth
from the 1-host unshaped run; the host waits of cost_model.with_host_wait() from the unshaped run
at the same host count. So this table is in-sample: a description, not a validation. --validate
(tools/scaling_validate.py) is the out-of-sample check: constants from calibration runs only,
predictions for other host counts, rates and model sizes, repeats, and MPI byte counts.

  /usr/bin/python3 tools/cluster_scaling.py --out runs/cluster_scaling          # up, run, down
  /usr/bin/python3 tools/cluster_scaling.py --out runs/cluster_scaling --collect-only
  /usr/bin/python3 tools/cluster_scaling.py --ntasks-per-node 2 --train-args "--a2a hier" --out runs/hier
  /usr/bin/python3 tools/cluster_scaling.py --validate --repeats 3 --steps 12 --out runs/validate
      # out of sample: calibrate on some runs, predict others (tools/scaling_validate.py)

Root only (it runs tools/cluster.sh). A cluster that is already up with enough hosts is used and
left up; otherwise one is brought up and torn down at the end.
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
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import cost_model  # noqa: E402
import scaling_validate  # noqa: E402

DEFAULT_MODEL = ("--layers 4 --dim 128 --heads 4 --experts 8 --expert-hidden 128 --seq-len 128 --batch 8 "
                 "--k-strategy layer --k-min 1 --k-max 4 --eval-windows 4 --seed 1")
CAVEAT = "one shared 2-core VM, hosts = network namespaces on veth links (tc tbf), not a real cluster"
KEYS = ("compute", "dispatch", "sync", "optim")
SHM_BW = 2e9  # bytes/s between two ranks of one host (shared memory; assumed, not measured)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,2,4")
    p.add_argument("--rates", default="none,1gbit,200mbit", help="tc rates per host link (none = unshaped)")
    p.add_argument("--ntasks-per-node", type=int, default=1)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--model-args", default=DEFAULT_MODEL, help="anyk train model and batch flags")
    p.add_argument("--train-args", default="", help="more anyk train flags (e.g. --a2a hier)")
    p.add_argument("--out", default="runs/cluster_scaling")
    p.add_argument("--anyk-bin", default=os.environ.get("ANYK_BIN", os.path.join(ROOT, "build", "anyk")))
    p.add_argument("--data", default="", help="prepared data (default: OUT/data, made from generated text)")
    p.add_argument("--pingpong-reps", type=int, default=30)
    p.add_argument("--collect-only", action="store_true", help="re-read OUT's runs; predict again; no runs")
    v = p.add_argument_group("out-of-sample validation (tools/scaling_validate.py; docs/scaling.md section 4)")
    v.add_argument("--validate", action="store_true",
                   help="calibrate on the cal cases, predict the pred cases; writes OUT/validation.md/.csv")
    v.add_argument("--cases", default=scaling_validate.DEFAULT_CASES, help="ROLE/RATE/HOSTS/MODEL,... (see above)")
    v.add_argument("--repeats", type=int, default=3, help="runs per case, interleaved in time")
    v.add_argument("--calibrate-from", default="", help="take the calibration from this JSON, not from OUT's cal runs")
    v.add_argument("--calibration-out", default="", help="write the calibration constants to this JSON")
    a = p.parse_args()
    if a.repeats < 1 or a.steps < 5:
        sys.exit(f"cluster_scaling: --repeats {a.repeats} / --steps {a.steps}: need at least 1 repeat and 5 steps")
    return a


def sh(cmd, timeout=600, env=None, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        sys.exit(f"cluster_scaling: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r


def rate_bps(rate):
    if rate == "none":
        return None
    m = re.fullmatch(r"([\d.]+)([kmg]?)bit", rate)
    if not m:
        sys.exit(f"cluster_scaling: link rate {rate!r} (--rates or --cases): use e.g. 200mbit, 1gbit or none")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


class Cluster:
    def __init__(self, need):
        self.dir = os.environ.setdefault("ANYK_CLUSTER_DIR", "/tmp/anyk-cluster")
        self.script = os.path.join(ROOT, "tools", "cluster.sh")
        nodes = os.path.join(self.dir, "nodes")
        have = len(open(nodes).read().split()) if os.path.exists(nodes) else 0
        self.owned = have == 0
        if have and have < need:
            sys.exit(f"cluster_scaling: the cluster in {self.dir} has {have} hosts, {need} needed (cluster.sh down)")
        if self.owned:
            sh(["bash", self.script, "up", str(need)], timeout=120)
        os.environ["SLURM_CONF"] = os.path.join(self.dir, "slurm.conf")

    def shape(self, rate):
        sh(["bash", self.script, "shape", "--rate", rate])

    def close(self):
        if self.owned:
            sh(["bash", self.script, "shape", "--rate", "none"], check=False)
            sh(["bash", self.script, "down"], check=False)


def env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def pingpong(a, rate):
    exe = os.path.join(a.out, "pingpong")
    if not os.path.exists(exe):
        sh(["mpicc", "-O2", "-o", exe, os.path.join(ROOT, "tools", "mpi_pingpong.c")])
    r = sh(["timeout", "300", "srun", "--mpi=pmix", "-N", "2", "-n", "2", "--ntasks-per-node=1", exe,
            str(a.pingpong_reps)], env=env())
    pp = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    json.dump(pp, open(os.path.join(a.out, f"pingpong_{rate}.json"), "w"))
    return pp


def run_one(a, rate, hosts):
    tpn = a.ntasks_per_node
    ranks = hosts * tpn
    E = int(cost_model_flag(a.model_args, "--experts", "8"))
    ep = math.gcd(ranks, E)
    run_dir = os.path.join(a.out, "runs", f"{rate}_h{hosts}")
    subprocess.run(["rm", "-rf", run_dir], check=True)
    cmd = ["timeout", "900", "srun", "--mpi=pmix", "-N", str(hosts), "-n", str(ranks), f"--ntasks-per-node={tpn}",
           "--kill-on-bad-exit=1", a.anyk_bin, "train", "--data", a.data, "--run-dir", run_dir, "--steps",
           str(a.steps), "--log-every", str(a.log_every), "--eval-every", "0", "--save-every", "0", "--threads", "1",
           "--profile", "--ep", str(ep)] + shlex.split(a.model_args) + shlex.split(a.train_args)
    t0 = time.time()
    r = sh(cmd, timeout=1000, env=env(), check=False)
    if r.returncode != 0:
        sys.exit(f"cluster_scaling: run {rate} {hosts} hosts failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    print(f"cluster_scaling: {rate:>8s} {hosts} host(s) x {tpn}: {time.time() - t0:.0f} s", flush=True)


def cost_model_flag(args, name, default):
    toks = shlex.split(args)
    return toks[toks.index(name) + 1] if name in toks else default


def measured(run_dir):
    run = cost_model.parse_run(run_dir)
    tr = run["train"]
    last = tr[-1]["step"]
    use = [j for j in tr if j["step"] > last // 5] or tr[-1:]
    prev = {id(j): (tr[i - 1]["step"] if i else 0) for i, j in enumerate(tr)}
    w = [j["step"] - prev[id(j)] for j in use]
    mean = lambda k: sum(j[k] * wi for j, wi in zip(use, w)) / sum(w)
    m = dict(compute=mean("t_compute"), dispatch=mean("t_dispatch"), sync=mean("t_sync"), optim=mean("t_optim"),
             mean_k=mean("mean_k"))
    m["step"] = sum(wi * run["tokens"] / j["tok_per_s"] for j, wi in zip(use, w)) / sum(w)
    return run, m


def link_constants(pp, rate):
    """Per-message latency (the 8-byte minimum: the link and stack, not the scheduler) and
    bandwidth from the ping-pong (one-way times by size)."""
    b, t = pp["bytes"], pp["one_way_s"]
    lat = pp.get("min_s", t)[0]
    big = max(range(len(b)), key=lambda i: b[i])
    bw_pp = (b[big] - b[0]) / max(t[big] - t[0], 1e-9)
    bps = rate_bps(rate)
    bw = bps / 8 * 1448 / 1514 if bps else bw_pp  # TCP payload per 1514-byte frame
    return lat, bw, bw_pp


def predict(a, runs):
    """runs: {(rate, hosts): (run, measured, pingpong)} -> {(rate, hosts): predicted split}."""
    base = runs.get(("none", 1)) or runs[min(runs)]
    r1, m1, _ = base
    mod1 = replace(r1["model"], k=m1["mean_k"])
    flops = r1["tokens"] / r1["P"] * mod1.flops_per_token() / m1["compute"]
    n_local = mod1.dense_params() + mod1.expert_params() / r1["ep"]
    mem_bw = 28.0 * n_local / m1["optim"]
    out = {}
    for (rate, hosts), (run, m, pp) in runs.items():
        lat, bw, _ = link_constants(pp, rate) if pp else (0.0, 1e12, 1e12)
        # A host's link is shared by its ranks; ranks on one host use shared memory (Open MPI's
        # vader), assumed at SHM_BW and 2 µs: not the link.
        hw = cost_model.Hardware(f"cluster {rate}", flops=flops, ranks_per_node=a.ntasks_per_node,
                                 bw_intra=SHM_BW, bw_inter=bw / a.ntasks_per_node, lat_intra=2e-6,
                                 lat_inter=lat, mem_bw=mem_bw)
        model = replace(run["model"], k=m["mean_k"])
        c = cost_model.step_cost(model, hw, run["P"], run["tokens"] / run["P"], ep=run["ep"])
        # A ring all-reduce over contiguous ranks sends one flow per host across the link: all of it.
        c["sync"] = cost_model.step_cost(model, replace(hw, bw_inter=bw), run["P"], run["tokens"] / run["P"],
                                         ep=run["ep"])["sync"]
        c["step"] = c["compute"] + c["dispatch"] + c["sync"] + c["optim"]
        # The host's own waits: the unshaped run at this host count (its link terms are small).
        _, mu, _ = runs.get(("none", hosts), (None, None, None))
        w = cost_model.with_host_wait(c, mu["dispatch"], mu["sync"]) if mu and rate != "none" else c
        out[(rate, hosts)] = dict(compute=c["compute"], dispatch=w["dispatch"], sync=w["sync"], optim=c["optim"],
                                  step=w["step"], lat=lat, bw=bw, link_dispatch=c["dispatch"], link_sync=c["sync"])
    return out, flops, mem_bw


def write(a, runs, pred, flops, mem_bw):
    rows = []
    for key in sorted(runs, key=lambda k: (a.rates.split(",").index(k[0]), k[1])):
        run, m, pp = runs[key]
        p = pred[key]
        row = dict(rate=key[0], hosts=key[1], ranks=run["P"], ep=run["ep"], edp=run["edp"],
                   lat_us=1e6 * p["lat"], bw_MBps=p["bw"] / 1e6, mean_k=m["mean_k"])
        for k in KEYS + ("step",):
            row[f"meas_{k}_ms"] = 1e3 * m[k]
            row[f"pred_{k}_ms"] = 1e3 * p[k]
        for k in ("dispatch", "sync"):
            row[f"link_{k}_ms"] = 1e3 * p[f"link_{k}"]
            row[f"link_{k}_ratio"] = p[f"link_{k}"] / m[k] if m[k] > 0 else float("nan")
            row[f"{k}_ratio"] = p[k] / m[k] if m[k] > 0 and key[0] != "none" and run["P"] > 1 else float("nan")
        rows.append(row)
    with open(os.path.join(a.out, "cluster_scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    f2 = lambda v: "—" if v != v else f"{v:.1f}"
    lines = [f"Model `{a.model_args}`{(' ' + a.train_args) if a.train_args else ''}, {a.ntasks_per_node} rank(s) per "
             f"host, {a.steps} steps (mean after the first 20%). Machine: {CAVEAT}.", "",
             "| link | hosts | ep x edp | link: latency µs, MB/s | **measured** compute / dispatch / sync / optim ms "
             "| **predicted**, link only: dispatch / sync ms (/ measured) "
             "| **predicted** with the host's waits: compute / dispatch / sync / optim ms "
             "| predicted / measured: dispatch, sync |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rate']} | {r['hosts']} | {r['ep']} x {r['edp']} | {r['lat_us']:.0f}, {r['bw_MBps']:.0f} | "
                     + " / ".join(f2(r[f"meas_{k}_ms"]) for k in KEYS) + " | "
                     + " / ".join(f"{f2(r[f'link_{k}_ms'])} ({r[f'link_{k}_ratio']:.2f})" for k in ("dispatch", "sync"))
                     + " | " + " / ".join(f2(r[f"pred_{k}_ms"]) for k in KEYS) + " | "
                     + ", ".join("—" if r[f"{k}_ratio"] != r[f"{k}_ratio"] else f"{r[f'{k}_ratio']:.2f}"
                                 for k in ("dispatch", "sync")) + " |")
    lines += ["", f"Calibration from the 1-host unshaped run: compute {flops / 1e9:.1f} GFLOP/s per rank, optimizer "
              f"{mem_bw / 1e9:.2f} GB/s. Link bandwidth: nominal rate x 1448/1514 (TCP payload per frame) when "
              "shaped, the ping-pong's 4 MiB bandwidth when not; latency: the ping-pong's fastest 8-byte one-way "
              "time. \"Link only\" is cost_model.step_cost(); \"with the host's waits\" adds "
              "cost_model.with_host_wait() with the waits measured in the unshaped run at the same host count "
              "(so the unshaped rows are calibration, not prediction: no ratio)."]
    md = "\n".join(lines) + "\n"
    open(os.path.join(a.out, "cluster_scaling.md"), "w").write(md)
    print(md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("cluster_scaling: no matplotlib (apt-get install python3-matplotlib): no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.8))
    colors = dict(compute="#4c72b0", dispatch="#dd8452", sync="#55a868", optim="#8172b3")
    for i, r in enumerate(rows):
        for off, kind, hatch in ((-0.2, "meas", ""), (0.2, "pred", "//")):
            bottom = 0.0
            for k in KEYS:
                v = r[f"{kind}_{k}_ms"]
                ax.bar(i + off, v, 0.38, bottom=bottom, color=colors[k], hatch=hatch, edgecolor="white",
                       label=f"{k} ({'measured' if kind == 'meas' else 'predicted'})" if i == 0 else None)
                bottom += v
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['rate']}\n{r['hosts']} host{'s' if r['hosts'] > 1 else ''}" for r in rows])
    ax.set_ylabel("ms per step (left bar measured, right bar predicted)")
    ax.set_title(f"anyk step-time split on the test cluster vs tools/cost_model.py\n({CAVEAT})", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "cluster_scaling.png"), dpi=110)


def prepare_data(a):
    if not a.data:
        a.data = os.path.join(a.out, "data")
        if not os.path.exists(os.path.join(a.data, "train.bin")):
            txt = os.path.join(a.out, "text.txt")
            with open(txt, "w") as f:
                for i in range(20000):
                    f.write(f"line {i}: experts learn a coarse-to-fine ranking of what to say next.\n")
            sh([a.anyk_bin, "prepare", "--input", txt, "--out", a.data, "--val-fraction", "0.05"])


def validate(a):
    cases = scaling_validate.parse_cases(a.cases)
    for c in cases:
        rate_bps(c[1])
        if c[2] < 1:
            sys.exit(f"cluster_scaling: --cases entry with {c[2]} hosts: use 1 or more")
    if not a.collect_only:
        prepare_data(a)
        cl = Cluster(max(c[2] for c in cases))
        try:
            scaling_validate.run_all(a, cl, sh, env(), pingpong)
        finally:
            cl.close()
    scaling_validate.report(a, measured, rate_bps, CAVEAT)


def main():
    a = parse_args()
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    if a.validate:
        return validate(a)
    hosts = sorted({int(h) for h in a.hosts.split(",")})
    rates = [r.strip() for r in a.rates.split(",")]
    for r in rates:
        rate_bps(r)
    if not a.collect_only:
        prepare_data(a)
        cl = Cluster(max(hosts))
        try:
            for rate in rates:
                cl.shape(rate)
                if max(hosts) >= 2:
                    pingpong(a, rate)
                for h in hosts:
                    run_one(a, rate, h)
        finally:
            cl.close()
    runs = {}
    for rate in rates:
        ppf = os.path.join(a.out, f"pingpong_{rate}.json")
        pp = json.load(open(ppf)) if os.path.exists(ppf) else None
        for h in hosts:
            d = os.path.join(a.out, "runs", f"{rate}_h{h}")
            if os.path.exists(os.path.join(d, "metrics.jsonl")):
                run, m = measured(d)
                runs[(rate, h)] = (run, m, pp)
    if not runs:
        sys.exit(f"cluster_scaling: no runs under {a.out}/runs")
    pred, flops, mem_bw = predict(a, runs)
    write(a, runs, pred, flops, mem_bw)


if __name__ == "__main__":
    main()
