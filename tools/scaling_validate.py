"""Out-of-sample check of tools/cost_model.py on the namespaced test cluster (issue 27, item 2);
the `--validate` mode of tools/cluster_scaling.py, which owns the cluster, the data and the runs.

Cases are ROLE/RATE/HOSTS/MODEL (one rank per host). Calibration cases (cal) fix every constant
of the prediction; prediction cases (pred) are then predicted from those constants and their link
setting alone (nominal rate), never from their own measurements. Each case runs --repeats times,
the cases of one repeat rotated and interleaved in time, so that the machine's load drift hits
calibration and prediction alike; runs already finished under OUT are kept (an interrupted study
resumes). Every run also counts the bytes anyk hands to MPI
(tools/mpi_bytes.c, LD_PRELOAD) to check the model's byte counts exactly.

Calibration (medians over the repeats of each cal case):
  cal/none/1/qs      compute FLOP rate per rank, optimizer bandwidth, mean K
  cal/none/2/qs      time-sharing: the compute slowdown s2 of 2 hosts on the shared cores, and the
                     waits for the slowest peer (dispatch and sync beyond the link's time), as
                     fractions of the compute time
  cal/200mbit/2/qs   a shaped link's overhead per exchange (the dispatch beyond bytes / rate and the
                     ping-pong's latency), also charged per ring step of the all-reduce
Prediction rules for H hosts (stated before the prediction runs; see docs/scaling.md section 4):
  compute = FLOPs / rate x s2^log2(H); waits = fraction x compute x 2(H-1)/H;
  link time = bytes / (nominal rate x 1448/1514) + latency x messages (+ overhead x exchanges, shaped);
  dispatch = max(wait, link time); sync = wait + ring time; optim = 28 B/param / bandwidth.
"""
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import cost_model

DEFAULT_CASES = ("cal/none/1/qs,cal/none/2/qs,cal/200mbit/2/qs,pred/200mbit/4/qs,pred/100mbit/2/qs,"
                 "pred/200mbit/2/d192,pred/500mbit/4/qs,pred/none/4/qs,pred/none/2/d192")
# Model variants: flags replaced in --model-args.
VARIANTS = {"qs": {}, "d192": {"--dim": "192", "--expert-hidden": "192"}, "e16": {"--experts": "16"}}
KEYS = ("compute", "dispatch", "sync", "optim", "step")


def parse_cases(text):
    cases = []
    for item in text.split(","):
        parts = item.strip().split("/")
        if len(parts) != 4 or parts[0] not in ("cal", "pred") or parts[3] not in VARIANTS or not parts[2].isdigit():
            sys.exit(f"cluster_scaling: --cases entry {item!r}: use ROLE/RATE/HOSTS/MODEL, ROLE cal or pred, "
                     f"MODEL one of {', '.join(VARIANTS)} (e.g. pred/100mbit/2/qs)")
        cases.append((parts[0], parts[1], int(parts[2]), parts[3]))
    need = {("cal", "none", 1, "qs"), ("cal", "none", 2, "qs")}
    if not need <= set(cases) or not any(c[0] == "cal" and c[1] != "none" and c[2] == 2 and c[3] == "qs"
                                         for c in cases):
        sys.exit("cluster_scaling: --cases needs cal/none/1/qs, cal/none/2/qs and one shaped cal/RATE/2/qs")
    return cases


def model_args(base, variant):
    toks = shlex.split(base)
    for flag, val in VARIANTS[variant].items():
        if flag in toks:
            toks[toks.index(flag) + 1] = val
        else:
            toks += [flag, val]
    return toks


def flag(toks, name, default):
    return toks[toks.index(name) + 1] if name in toks else default


def case_name(case):
    return f"{case[1]}_h{case[2]}_{case[3]}"


def load1():
    return float(open("/proc/loadavg").read().split()[0])


def run_case(a, lib, case, rep, sh, env):
    """One training run of a case; returns its run directory."""
    _, rate, hosts, variant = case
    toks = model_args(a.model_args, variant)
    ep = math.gcd(hosts, int(flag(toks, "--experts", "8")))
    run_dir = os.path.join(a.out, "runs", f"{case_name(case)}_r{rep}")
    subprocess.run(["rm", "-rf", run_dir], check=True)
    os.makedirs(run_dir + ".bytes", exist_ok=True)
    cmd = ["timeout", "900", "srun", "--mpi=pmix", "-N", str(hosts), "-n", str(hosts), "--ntasks-per-node=1",
           "--kill-on-bad-exit=1", "env", f"LD_PRELOAD={lib}", f"MPI_BYTES_OUT={run_dir}.bytes/b",
           a.anyk_bin, "train", "--data", a.data, "--run-dir", run_dir, "--steps", str(a.steps), "--log-every", "1",
           "--eval-every", "0", "--save-every", "0", "--threads", "1", "--profile", "--ep", str(ep)] + toks
    before, t0 = load1(), time.time()
    r = sh(cmd, timeout=1000, env=env, check=False)
    if r.returncode != 0:
        sys.exit(f"cluster_scaling: run {case_name(case)} #{rep} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    json.dump(dict(load_before=before, load_after=load1(), wall_s=time.time() - t0, start=t0),
              open(os.path.join(run_dir, "load.json"), "w"))
    print(f"cluster_scaling: {case[0]:>4s} {case_name(case):>18s} #{rep}: {time.time() - t0:.0f} s, "
          f"load {before:.1f}", flush=True)
    return run_dir


def run_all(a, cluster, sh, env, pingpong):
    lib = os.path.join(a.out, "libmpibytes.so")
    sh(["mpicc", "-shared", "-fPIC", "-O2", "-o", lib, os.path.join(cost_model.ROOT, "tools", "mpi_bytes.c")])
    cases = parse_cases(a.cases)
    cluster.shape("none")
    pingpong(a, "none")
    for rep in range(a.repeats):
        k = rep % len(cases)  # rotate, so no case always runs first or last in a round
        for case in cases[k:] + cases[:k]:
            if os.path.exists(os.path.join(a.out, "runs", f"{case_name(case)}_r{rep}", "load.json")):
                continue  # finished in an earlier invocation with this OUT: kept, not run again
            cluster.shape(case[1])
            run_case(a, lib, case, rep, sh, env)


# ---------------------------------------------------------------------------------------------
# Reading the runs back.

def measure_run(run_dir, measured):
    run, m = measured(run_dir)
    m.update(json.load(open(os.path.join(run_dir, "load.json"))))
    tr, mod = run["train"], run["model"]
    counts = [json.load(open(os.path.join(run_dir + ".bytes", f"b.{i}.json"))) for i in range(run["P"])]
    steps = len(tr)
    m["a2a_total"] = sum(c["a2av_bytes"] for c in counts)
    m["a2a_formula"] = sum(4 * mod.L * j["mean_k"] * run["tokens"] * mod.C * 4 for j in tr) if run["ep"] > 1 else 0
    m["a2a_off_rank_step"] = sum(c["a2av_off_rank_bytes"] for c in counts) / run["P"] / steps
    m["ar_rank_step"] = counts[0]["allreduce_bytes"] / steps
    dense = mod.dense_params() * 4 if run["P"] > 1 else 0
    m["ar_formula"] = dense + (mod.expert_params() / run["ep"] * 4 if run["edp"] > 1 else 0)
    return run, m


def collect(a, measured):
    """{case: [(run, measured), ...]} for every case with finished runs."""
    out = {}
    for case in parse_cases(a.cases):
        reps = []
        for rep in range(a.repeats):
            d = os.path.join(a.out, "runs", f"{case_name(case)}_r{rep}")
            if os.path.exists(os.path.join(d, "load.json")):
                reps.append(measure_run(d, measured))
        if reps:
            out[case] = reps
    return out


def med(reps, key):
    return statistics.median(m[key] for _, m in reps)


# ---------------------------------------------------------------------------------------------
# Calibration and prediction.

def link_hw(cal, rate, rate_bps):
    bps = rate_bps(rate)
    bw = bps / 8 * 1448 / 1514 if bps else cal["bw_none"]
    return cost_model.Hardware(f"cluster {rate}", flops=cal["flops"], ranks_per_node=1, bw_intra=2e9, bw_inter=bw,
                               lat_intra=2e-6, lat_inter=cal["lat_none"], mem_bw=cal["mem_bw"])


def exchanges(m):
    """All-to-alls per step: per layer and micro-batch 4 row exchanges and 1 count exchange."""
    return m.L * m.micro * 5


def model_of(cal, a, variant, hosts):
    toks = model_args(a.model_args, variant)
    g = lambda name, d: int(flag(toks, name, d))
    B, T = g("--batch", "8"), g("--seq-len", "128")
    m = cost_model.Model(variant, L=g("--layers", "4"), C=g("--dim", "128"), H=g("--expert-hidden", "128"),
                         E=g("--experts", "8"), V=cal["V"], T=T, k=cal["mean_k"], seqs_per_rank=B)
    return m, B * T, math.gcd(hosts, m.E)


def calibrate(a, runs, pp_none, rate_bps):
    c1, c2 = runs.get(("cal", "none", 1, "qs")), runs.get(("cal", "none", 2, "qs"))
    shaped = [c for c in runs if c[0] == "cal" and c[1] != "none" and c[2] == 2]
    if not c1 or not c2 or not shaped:
        sys.exit("cluster_scaling: the calibration runs are missing (cal/none/1, cal/none/2, cal/RATE/2)")
    run1 = c1[0][0]
    cal = dict(V=run1["model"].V, mean_k=statistics.median(m["mean_k"] for c in runs if c[0] == "cal"
                                                            for _, m in runs[c]))
    mk = replace(run1["model"], k=med(c1, "mean_k"))
    cal["flops"] = run1["tokens"] * mk.flops_per_token() / med(c1, "compute")
    cal["mem_bw"] = 28.0 * (mk.dense_params() + mk.expert_params()) / med(c1, "optim")
    b, t = pp_none["bytes"], pp_none["one_way_s"]
    cal["lat_none"] = pp_none.get("min_s", t)[0]
    cal["bw_none"] = (b[-1] - b[0]) / max(t[-1] - t[0], 1e-9)
    # Time-sharing at 2 hosts: compute slowdown and the waits beyond the unshaped link's time.
    m2, tr2, ep2 = model_of(cal, a, "qs", 2)
    link2 = cost_model.step_cost(m2, link_hw(cal, "none", rate_bps), 2, tr2, ep=ep2)
    cal["s2"] = med(c2, "compute") / med(c1, "compute")
    cal["wait_dispatch_frac"] = max(0.0, med(c2, "dispatch") - link2["dispatch"]) / med(c2, "compute")
    cal["wait_sync_frac"] = max(0.0, med(c2, "sync") - link2["sync"]) / med(c2, "compute")
    # Shaped link at 2 hosts: the dispatch beyond bytes / rate and the ping-pong's per-message
    # latency, per exchange (an exchange's messages to its peers are in flight together).
    case = shaped[0]
    c0 = cost_model.step_cost(m2, link_hw(cal, case[1], rate_bps), 2, tr2, ep=ep2)
    cal["x_shaped"] = max(0.0, (med(runs[case], "dispatch") - c0["dispatch"]) / exchanges(m2))
    cal["x_shaped_from"] = case_name(case)
    return cal


def predict_case(cal, a, case, rate_bps):
    _, rate, hosts, variant = case
    m, tr, ep = model_of(cal, a, variant, hosts)
    c = cost_model.step_cost(m, link_hw(cal, rate, rate_bps), hosts, tr, ep=ep)
    if rate_bps(rate) and hosts > 1:  # a shaped link's overhead per exchange and per ring step
        c["dispatch"] += cal["x_shaped"] * exchanges(m) if ep > 1 else 0.0
        c["sync"] += cal["x_shaped"] * 2 * (hosts - 1)
    share = cal["s2"] ** math.log2(hosts)
    compute = c["compute"] * share
    grow = 2 * (hosts - 1) / hosts  # 1 at 2 hosts (the calibration), 1.5 at 4
    wd, ws = (cal[f"wait_{k}_frac"] * compute * grow for k in ("dispatch", "sync"))
    p = dict(compute=compute, dispatch=max(wd, c["dispatch"]), sync=ws + c["sync"], optim=c["optim"],
             link_dispatch=c["dispatch"], link_sync=c["sync"], a2a_off_rank_step=c["a2a_bytes"],
             ar_rank_step=c["allreduce_bytes"] * hosts / (2 * (hosts - 1)) if hosts > 1 else 0.0)
    p["step"] = p["compute"] + p["dispatch"] + p["sync"] + p["optim"]
    return p


# ---------------------------------------------------------------------------------------------
# Output.

def spread(reps, key, scale=1e3):
    v = sorted(m[key] * scale for _, m in reps)
    return f"{statistics.median(v):.0f} ({v[0]:.0f}..{v[-1]:.0f})"


def ratio(p, reps, key):
    """predicted / measured: at the median, and the range over the repeats."""
    v = [m[key] for _, m in reps]
    if p[key] <= 0 or min(v) <= 0:
        return "—", float("nan")
    r = p[key] / statistics.median(v)
    return f"**{r:.2f}** ({p[key] / max(v):.2f}..{p[key] / min(v):.2f})", r


def write_csv(a, runs):
    rows = []
    for case, reps in runs.items():
        for i, (run, m) in enumerate(reps):
            row = dict(role=case[0], rate=case[1], hosts=case[2], model=case[3], repeat=i, ranks=run["P"],
                       ep=run["ep"], load_before=m["load_before"], load_after=m["load_after"], mean_k=m["mean_k"])
            row.update({f"meas_{k}_ms": 1e3 * m[k] for k in KEYS})
            row.update(a2a_counted=m["a2a_total"], a2a_formula=m["a2a_formula"],
                       a2a_off_rank_step=m["a2a_off_rank_step"], ar_rank_step=m["ar_rank_step"],
                       ar_formula=m["ar_formula"])
            rows.append(row)
    with open(os.path.join(a.out, "validation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def table_lines(cal, a, runs, rate_bps):
    head = ("| role | link | hosts | model | n | load | **measured** step ms, median (min..max) | dispatch ms | sync ms "
            "| compute ms | **predicted** compute / dispatch / sync / optim = step ms | predicted / measured: step "
            "| dispatch | sync |")
    lines = [head, "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = {"cal": {}, "pred": {}}
    for case, reps in runs.items():
        p = predict_case(cal, a, case, rate_bps)
        loads = [m["load_before"] for _, m in reps]
        cells = [case[0], case[1], str(case[2]), case[3], str(len(reps)), f"{min(loads):.1f}-{max(loads):.1f}",
                 spread(reps, "step"), spread(reps, "dispatch"), spread(reps, "sync"), spread(reps, "compute"),
                 " / ".join(f"{1e3 * p[k]:.0f}" for k in ("compute", "dispatch", "sync", "optim")) + f" = {1e3 * p['step']:.0f}"]
        for k in ("step", "dispatch", "sync"):
            text, r = ratio(p, reps, k)
            cells.append(text)
            ratios[case[0]].setdefault(k, []).append((r, case))
        lines.append("| " + " | ".join(cells) + " |")
    return lines, ratios


def bytes_lines(cal, a, runs, rate_bps):
    lines = ["| link | hosts | model | all-to-all rows counted / formula at the run's logged K | off-rank MB per rank "
             "and step: counted, predicted (calibration K, uniform routing) | gradient all-reduce payload per rank "
             "and step: counted / formula |", "|---|---:|---|---:|---:|---:|"]
    seen = set()
    for case, reps in runs.items():
        if case[2] < 2 or (case[2], case[3]) in seen:
            continue
        seen.add((case[2], case[3]))
        p = predict_case(cal, a, case, rate_bps)
        a2a = [m["a2a_total"] / m["a2a_formula"] for _, m in reps]
        ar = [m["ar_rank_step"] / m["ar_formula"] for _, m in reps]
        off = [m["a2a_off_rank_step"] / 1e6 for _, m in reps]
        lines.append(f"| {case[1]} | {case[2]} | {case[3]} | {min(a2a):.6f}..{max(a2a):.6f} | "
                     f"{statistics.median(off):.3f} ({min(off):.3f}..{max(off):.3f}), {p['a2a_off_rank_step'] / 1e6:.3f} | "
                     f"{min(ar):.6f}..{max(ar):.6f} ({reps[0][1]['ar_formula'] / 1e6:.3f} MB) |")
    return lines


def report(a, measured, rate_bps, caveat):
    runs = collect(a, measured)
    if not runs:
        sys.exit(f"cluster_scaling: no validation runs under {a.out}/runs")
    write_csv(a, runs)
    if a.calibrate_from:
        cal = json.load(open(a.calibrate_from))
    else:
        cal = calibrate(a, runs, json.load(open(os.path.join(a.out, "pingpong_none.json"))), rate_bps)
    if a.calibration_out:
        tmp = a.calibration_out + ".tmp"
        json.dump(cal, open(tmp, "w"), indent=1)
        os.replace(tmp, a.calibration_out)
    lines, ratios = table_lines(cal, a, runs, rate_bps)
    summary = []
    for label, shaped in (("link-bound (shaped)", True), ("unshaped (CPU-bound)", False)):
        for k in ("step", "dispatch", "sync"):
            v = [r for r, c in ratios["pred"].get(k, []) if r == r and (c[1] != "none") == shaped]
            if v:
                summary.append(f"{label} {k} {min(v):.2f}-{max(v):.2f}")
    head = [f"Model `{a.model_args}` (qs; d192 = `--dim 192 --expert-hidden 192`), one rank per host, {a.steps} "
            f"steps per run (mean after the first 20%), {a.repeats} repeats per case, interleaved. "
            f"Machine: {caveat}. Load = 1-minute load average before each run.", "",
            f"Calibration{' (from ' + a.calibrate_from + ')' if a.calibrate_from else ''}: compute {cal['flops'] / 1e9:.2f} GFLOP/s per rank, optimizer {cal['mem_bw'] / 1e9:.2f} GB/s, "
            f"mean K {cal['mean_k']:.3f}; unshaped link {cal['lat_none'] * 1e6:.0f} µs, {cal['bw_none'] / 1e6:.0f} MB/s "
            f"(ping-pong); shaped link: {cal['x_shaped'] * 1e3:.1f} ms per exchange beyond bytes / rate ({cal['x_shaped_from']}); "
            f"time-sharing: compute x{cal['s2']:.2f} at 2 hosts, waits {cal['wait_dispatch_frac']:.3f} (dispatch) and "
            f"{cal['wait_sync_frac']:.3f} (sync) of the compute time.", ""]
    tail = ["", "Prediction rows, predicted / measured at the medians: " + "; ".join(summary) + ".", "", "Byte counts (tools/mpi_bytes.c, every rank, every "
            "step):", ""] + bytes_lines(cal, a, runs, rate_bps)
    md = "\n".join(head + lines + tail) + "\n"
    open(os.path.join(a.out, "validation.md"), "w").write(md)
    print(md)
