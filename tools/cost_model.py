#!/usr/bin/python3
"""A cost model of one anyk training step: compute FLOPs, MoE all-to-all bytes, all-reduce bytes,
and from them a PREDICTED step time and scaling efficiency from 1 to 1024 ranks (GPUs).

Per rank and step (N = tokens per micro-batch on this rank, A micro-batches, b bytes per element):
  compute FLOPs  = A*N * (6 * active_params(K) + 12 * L * T * C)         (anyk's MFU numerator)
  all-to-all     = per MoE layer and micro-batch 4 exchanges (forward: permute + unpermute;
                   backward: the same two with counts swapped), each sending N*K rows of C values;
                   the fraction (ep-1)/ep of them leaves the rank (uniform routing) -> per layer
                   4 * N*K*C*b * (ep-1)/ep bytes out, plus one count exchange (E ints) per layer
  all-reduce     = dense gradients D*4 bytes over all P ranks, ring: 2(P-1)/P * D*4 bytes per rank;
                   expert gradients (E/ep experts, 3HC each, per layer) over the edp = P/ep replicas
  optimizer      = AdamW streams ~28 bytes per local parameter (p, g, m, v read; p, m, v written)
anyk does not overlap communication with compute, so the predicted step time is the sum.
  --a2a hier: the Tutel-style two-phase all-to-all (exchange_time(); docs/scaling.md section 5);
  with_host_wait(): the waits of an oversubscribed host, for the namespaced test cluster
  (tools/cluster_scaling.py; docs/scaling.md section 4).

  /usr/bin/python3 tools/cost_model.py                       # both stated models on the H100 preset
  /usr/bin/python3 tools/cost_model.py --model quickstart --hw h100-ib --markdown
  /usr/bin/python3 tools/cost_model.py --validate            # measure on this machine (mpirun, 2 ranks)
  /usr/bin/python3 tools/cost_model.py --a2a compare --model moe-10b --markdown   # flat vs hier, 8..1024 GPUs

Everything printed by the scaling tables is a prediction from the stated constants; --validate
checks the FLOP and byte COUNTS against what anyk logs and what MPI is handed (a PMPI counter,
tools/mpi_bytes.c), and reports this machine's measured rates.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Model:
    name: str
    L: int  # layers
    C: int  # model dim
    H: int  # expert hidden
    E: int  # experts
    V: int  # vocab
    T: int  # sequence length
    k: float  # mean active experts per token (layer strategy in [1,4]: 2.5)
    seqs_per_rank: int  # B * A sequences per rank and step (weak scaling)
    micro: int = 1  # A: micro-batches per step (exchanges happen per micro-batch)

    # anyk's formulas (model/config.cpp): norms are in num_params, not in active_params.
    def dense_params(self):
        return self.V * self.C + self.C + self.L * (2 * self.C + 4 * self.C * self.C + self.E * self.C)

    def expert_params(self):  # all experts, all layers
        return self.L * self.E * 3 * self.H * self.C

    def active_params(self, k=None):
        k = self.k if k is None else k
        C = self.C
        return self.V * C + self.L * (4 * C * C + self.E * C + k * 3 * self.H * C)

    def flops_per_token(self, k=None):
        return 6.0 * self.active_params(k) + 12.0 * self.L * self.T * self.C


@dataclass
class Hardware:
    name: str
    flops: float  # achieved FLOP/s per rank in forward + backward (not peak)
    ranks_per_node: int
    bw_intra: float  # bytes/s per rank, inside a node (all-to-all and ring)
    bw_inter: float  # bytes/s per rank across nodes (its share of the NICs)
    lat_intra: float  # seconds per message
    lat_inter: float
    mem_bw: float  # bytes/s per rank for the optimizer's streaming
    bytes_per_elem: int = 4  # anyk exchanges fp32 activations and reduces fp32 gradients
    note: str = ""


MODELS = {
    # tools/quickstart.sh: layer-wise M-MoE, E = 8, K in [1,4] (mean 2.5), B = 8 x T = 128 per rank.
    "quickstart": Model("quickstart (L4 C128 E8 H128, 1.9M params)", L=4, C=128, H=128, E=8, V=256, T=128, k=2.5,
                        seqs_per_rank=8),
    # A larger elastic MoE: 24 layers, C = 2048, 64 fine-grained experts (H = 1024), K in [1,8]
    # (mean 4.5), 32k vocab, T = 2048, 8 sequences (16k tokens) per GPU: ~10.1B total, ~1.2B active.
    "moe-10b": Model("moe-10b (L24 C2048 E64 H1024, 10.1B total / 1.2B active)", L=24, C=2048, H=1024, E=64,
                     V=32768, T=2048, k=4.5, seqs_per_rank=8),
}

HARDWARE = {
    # A hypothetical anyk GPU backend on an H100 cluster (anyk's CUDA kernels do not exist yet):
    # 40% of the 989 TFLOP/s bf16 dense peak achieved; NVLink ~200 GB/s effective per GPU for
    # all-to-all; one 400 Gb/s NIC per GPU (~40 GB/s effective); HBM3 ~3 TB/s; 8 GPUs per node.
    "h100-ib": Hardware("H100 SXM, 8/node, NVLink + 400G IB per GPU (assumed)", flops=0.4 * 989e12, ranks_per_node=8,
                        bw_intra=200e9, bw_inter=40e9, lat_intra=3e-6, lat_inter=8e-6, mem_bw=3.0e12,
                        note="assumed constants, not measured"),
    # A CPU cluster like the machine anyk runs on today: one rank per 32-core socket at 70% of a
    # fp32 AVX-512 peak of ~3 TFLOP/s, 2 sockets per node, 100 Gb/s network.
    "cpu-ib": Hardware("2-socket CPU nodes, 100G network (assumed)", flops=2.0e12, ranks_per_node=2, bw_intra=20e9,
                       bw_inter=10e9, lat_intra=1e-6, lat_inter=3e-6, mem_bw=100e9, note="assumed constants"),
}


def layout(P, E):
    ep = math.gcd(P, E)  # anyk: E % ep == 0; P = ep * edp
    return ep, P // ep


def exchange_time(rows_bytes, ep, hw: Hardware, a2a="flat"):
    """Seconds for one all-to-all of rows_bytes per rank (to itself included) over an ep group of
    contiguous ranks, ranks_per_node = G per node, and the messages one rank sends.
      flat: ep-1 messages; (G-1)/ep of the rows stay on the node, (ep-G)/ep cross the network.
      hier (Tutel-style 2D, when the group spans n = ep/G > 1 nodes): phase 1, an all-to-all
        inside the node that gathers at local rank l every row the node sends to local rank l of
        any node: G-1 messages, (G-1)/G of the rows; phase 2, an all-to-all among the ranks of
        equal local index: n-1 messages, (n-1)/n of the rows (= (ep-G)/ep, the same bytes cross
        the network). Intra-node bytes grow from (G-1)/ep to (G-1)/G of the rows (x n; double at
        2 nodes); messages per rank drop from ep-1 to (G-1)+(n-1)."""
    if ep <= 1:
        return 0.0, 0
    G = min(hw.ranks_per_node, ep)
    off_node = rows_bytes * max(0, ep - G) / ep
    if a2a == "hier" and ep > G:
        n = ep // G
        return ((G - 1) * hw.lat_intra + rows_bytes * (G - 1) / G / hw.bw_intra
                + (n - 1) * hw.lat_inter + off_node / hw.bw_inter), (G - 1) + (n - 1)
    on_node = rows_bytes * (G - 1) / ep
    lat = hw.lat_inter if ep > G else hw.lat_intra
    return (ep - 1) * lat + on_node / hw.bw_intra + off_node / hw.bw_inter, ep - 1


def with_host_wait(c, wait_dispatch, wait_sync):
    """The step of an oversubscribed host (more busy processes than cores, as on the namespaced
    test cluster): ranks reach each exchange at different times, and a rank's exchange time holds
    waiting for the slowest peer. The waits are measured where the link is not the limit (the
    unshaped run at the same host count). The all-reduce follows the step-end wait, so they add;
    the all-to-all's time is whichever is larger, the peers' lag or the link transfer (a slow
    link paces the ranks in step, as measured: docs/scaling.md section 4)."""
    out = dict(c)
    out["dispatch"] = max(wait_dispatch, c["dispatch"])
    out["sync"] = wait_sync + c["sync"]
    out["step"] = out["compute"] + out["dispatch"] + out["sync"] + out["optim"]
    return out


def step_cost(m: Model, hw: Hardware, P: int, tokens_rank: float, ep=None, a2a="flat"):
    """Predicted seconds per step on each rank, split like anyk's --profile, plus byte counts."""
    ep, edp = layout(P, m.E) if ep is None else (ep, P // ep)
    b = hw.bytes_per_elem
    A = m.micro
    N = tokens_rank / A  # tokens per micro-batch
    out = {"P": P, "ep": ep, "edp": edp, "tokens_rank": tokens_rank}
    out["flops_rank"] = tokens_rank * m.flops_per_token()
    out["compute"] = out["flops_rank"] / hw.flops
    # All-to-all: ep ranks are contiguous, so an ep group spans ceil(ep / ranks_per_node) nodes.
    rows_bytes = N * m.k * m.C * b  # one exchange's payload on this rank (to itself included)
    off = rows_bytes * (ep - 1) / ep
    per_exchange, out["a2a_msgs"] = exchange_time(rows_bytes, ep, hw, a2a)
    count_exchange, _ = exchange_time(0.0, ep, hw, a2a)
    out["a2a_bytes"] = 4 * m.L * A * off  # bytes leaving this rank per step
    out["dispatch"] = m.L * A * (4 * per_exchange + count_exchange)

    def ring(nbytes, n, inter):
        if n <= 1:
            return 0.0, 0.0
        bw, la = (hw.bw_inter, hw.lat_inter) if inter else (hw.bw_intra, hw.lat_intra)
        moved = 2 * (n - 1) / n * nbytes
        return moved, moved / bw + 2 * (n - 1) * la

    dense_b = m.dense_params() * 4  # gradients are fp32 in anyk
    expert_local = m.expert_params() / ep
    moved_d, t_d = ring(dense_b, P, P > hw.ranks_per_node)
    moved_e, t_e = ring(expert_local * 4, edp, P > hw.ranks_per_node)
    out["allreduce_bytes"] = moved_d + moved_e
    out["sync"] = t_d + t_e
    out["optim"] = 28.0 * (m.dense_params() + expert_local) / hw.mem_bw
    out["state_gb"] = 16.0 * (m.dense_params() + expert_local) / 1e9  # fp32 p, g, m, v; no activations
    out["step"] = out["compute"] + out["dispatch"] + out["sync"] + out["optim"]
    out["tok_per_s"] = P * tokens_rank / out["step"]
    out["mfu_of_achieved"] = out["compute"] / out["step"]
    return out


def scaling_table(m, hw, ranks, mode, strong_base=64, a2a="flat"):
    """weak: seqs_per_rank per rank at every P. strong: the global batch of the weak run at
    strong_base ranks, split over P ranks (P up to one sequence per rank)."""
    rows = []
    tokens_rank_weak = m.seqs_per_rank * m.T
    G = tokens_rank_weak * strong_base
    if mode == "strong":
        ranks = [P for P in ranks if G / P >= m.T]
    base = None
    for P in ranks:
        tr = tokens_rank_weak if mode == "weak" else G / P
        c = step_cost(m, hw, P, tr, a2a=a2a)
        if base is None:
            base = c["tok_per_s"] / P
        c["efficiency"] = (c["tok_per_s"] / P) / base
        rows.append(c)
    return rows


def a2a_table(m, hw, markdown, max_ranks=1024, strong_base=64):
    """Flat against hierarchical all-to-all, P = 8 .. max_ranks, weak and strong scaling."""
    head = ["GPUs", "ep x edp", "nodes/ep group", "tok/rank", "msgs flat", "msgs hier", "all-to-all flat ms",
            "all-to-all hier ms", "hier/flat", "step flat ms", "step hier ms"]
    lines = []
    for mode in ("weak", "strong"):
        title = f"{mode} scaling, {m.name}, on {hw.name}: flat vs hierarchical all-to-all, PREDICTED"
        lines += ([f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)] if markdown
                  else [title, "  ".join(f"{h:>9s}" for h in head)])
        P = hw.ranks_per_node
        while P <= max_ranks:
            tr = m.seqs_per_rank * m.T if mode == "weak" else m.seqs_per_rank * m.T * strong_base / P
            if tr >= m.T:
                f, h = step_cost(m, hw, P, tr), step_cost(m, hw, P, tr, a2a="hier")
                cells = [f"{P}", f"{f['ep']} x {f['edp']}", f"{max(1, f['ep'] // hw.ranks_per_node)}", f"{tr:.0f}",
                         f"{f['a2a_msgs']}", f"{h['a2a_msgs']}", f"{1e3 * f['dispatch']:.2f}",
                         f"{1e3 * h['dispatch']:.2f}", f"{h['dispatch'] / f['dispatch']:.2f}" if f["dispatch"] else "-",
                         f"{1e3 * f['step']:.1f}", f"{1e3 * h['step']:.1f}"]
                lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{x:>9s}" for x in cells))
            P *= 2
        lines.append("")
    print("\n".join(lines))


def print_table(m, hw, rows, mode, markdown):
    head = ["GPUs", "ep x edp", "tok/rank", "step ms", "compute", "all-to-all", "all-reduce", "optim",
            "a2a MB/rank", "state GB", "tok/s", "eff."]
    lines = []
    extra = (f"{m.seqs_per_rank} x {m.T} tokens per rank" if mode == "weak" else
             f"global batch {m.seqs_per_rank * 64} x {m.T} tokens split over the ranks")
    title = f"{mode} scaling ({extra}), {m.name}, on {hw.name}: PREDICTED"
    if markdown:
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    else:
        lines += [title, "  ".join(f"{h:>11s}" for h in head)]
    for c in rows:
        cells = [f"{c['P']}", f"{c['ep']} x {c['edp']}", f"{c['tokens_rank']:.0f}", f"{1e3 * c['step']:.2f}",
                 f"{1e3 * c['compute']:.2f}", f"{1e3 * c['dispatch']:.2f}", f"{1e3 * c['sync']:.2f}",
                 f"{1e3 * c['optim']:.2f}", f"{c['a2a_bytes'] / 1e6:.1f}", f"{c['state_gb']:.2f}", f"{c['tok_per_s']:.3g}",
                 f"{c['efficiency']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{x:>11s}" for x in cells))
    print("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Validation against anyk on this machine.

def parse_run(run_dir):
    log = open(os.path.join(run_dir, "train.log")).read()
    g = lambda pat: re.search(pat, log)
    s = g(r"L=(\d+) C=(\d+) NH=(\d+) E=(\d+) H=(\d+) T=(\d+) V=(\d+)")
    d = g(r"B=(\d+) T=(\d+) A=(\d+) x (\d+) ranks \((\d+) tokens/step\)")
    lay = g(r"(\d+) ranks = ep (\d+) x edp (\d+), (\d+) experts per rank, (\d+) threads per rank")
    pk = g(r"x ([\d.]+) GFLOP/s \(single-core 512\^3 SGEMM\) = ([\d.]+) GFLOP/s")
    L, C, NH, E, H, T, V = map(int, s.groups())
    B, _, A, P, tokens = map(int, d.groups())
    m = Model("measured", L=L, C=C, H=H, E=E, V=V, T=T, k=0, seqs_per_rank=B * A, micro=A)
    train = [j for j in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if j["type"] == "train"]
    return dict(model=m, P=P, ep=int(lay.group(2)), edp=int(lay.group(3)), threads=int(lay.group(5)),
                tokens=tokens, core_flops=float(pk.group(1)) * 1e9, peak=float(pk.group(2)) * 1e9, train=train)


def run_anyk(np_, ep, run_dir, data, libbytes, bytes_prefix, steps, extra):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               MPI_BYTES_OUT=bytes_prefix)
    cmd = ["mpirun", "-np", str(np_), "--oversubscribe", "--bind-to", "none", "-x", f"LD_PRELOAD={libbytes}",
           "-x", "MPI_BYTES_OUT", os.path.join(ROOT, "build", "anyk") if not os.environ.get("ANYK_BIN")
           else os.environ["ANYK_BIN"], "train", "--data", data, "--run-dir", run_dir, "--ep", str(ep),
           "--steps", str(steps), "--log-every", "1", "--eval-every", "0", "--eval-windows", "2", "--profile",
           "--threads", "1", "--save-every", "0"] + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"cost_model: anyk run failed:\n{r.stderr[-2000:]}")
    counts = [json.load(open(f"{bytes_prefix}.{i}.json")) for i in range(np_)]
    return parse_run(run_dir), counts


def validate(a):
    tmp = tempfile.mkdtemp(prefix="anyk-costmodel.")
    lib = os.path.join(tmp, "libmpibytes.so")
    subprocess.run(["mpicc", "-shared", "-fPIC", "-O2", "-o", lib, os.path.join(ROOT, "tools", "mpi_bytes.c")],
                   check=True)
    data = a.data
    if not os.path.exists(os.path.join(data, "train.bin")):
        sys.exit(f"cost_model: {data}/train.bin not found (anyk prepare, or --data)")
    qs = ["--layers", "4", "--dim", "128", "--heads", "4", "--experts", "8", "--expert-hidden", "128",
          "--seq-len", "128", "--batch", "8", "--k-strategy", "layer", "--k-min", "1", "--k-max", "4"]
    steps = a.steps
    report = []
    say = lambda s="": (print(s), report.append(s))
    say(f"Validation on this machine ({os.cpu_count()} cores), quickstart model, {steps} steps per run, "
        "1 thread per rank, every step logged:")
    results = {}
    for name, np_, ep in (("1 rank", 1, 1), ("2 ranks ep=2", 2, 2), ("2 ranks ep=1 (edp=2)", 2, 1)):
        run, counts = run_anyk(np_, ep, os.path.join(tmp, f"r{np_}_{ep}"), data, lib, os.path.join(tmp, f"b{np_}_{ep}"),
                               steps, qs)
        results[name] = (run, counts)
        m, tr = run["model"], run["train"]
        assert [j["step"] for j in tr] == list(range(1, steps + 1)), "expected one metrics entry per step"
        say(f"\n{name}: P={run['P']} ep={run['ep']} edp={run['edp']}, {run['tokens']} tokens/step, "
            f"peak {run['peak'] / 1e9:.1f} GFLOP/s (anyk's SGEMM probe x cores)")
        # 1. FLOPs: the model's FLOPs/token at the logged mean K, times the logged tokens/s, over the
        #    logged peak, must reproduce the logged MFU.
        errs = [abs(j["tok_per_s"] * m.flops_per_token(j["mean_k"]) / run["peak"] / j["mfu"] - 1) for j in tr]
        mean_k = sum(j["mean_k"] for j in tr) / len(tr)
        say(f"  FLOPs: model {m.flops_per_token(mean_k) / 1e6:.3f} MFLOP/token at mean K {mean_k:.3f}; "
            f"tok/s x FLOPs/token / peak vs logged MFU: max relative difference {max(errs):.1e} "
            f"(the peak is logged to 0.1 GFLOP/s)")
        # 2. All-to-all bytes: 4 exchanges x L layers x (mean K x tokens) rows x C x 4 bytes per step.
        a2a_formula = sum(4 * m.L * j["mean_k"] * run["tokens"] * m.C * 4 for j in tr) if run["ep"] > 1 else 0
        a2a_counted = sum(c["a2av_bytes"] for c in counts)
        off_counted = sum(c["a2av_off_rank_bytes"] for c in counts)
        calls = sum(c["a2av_calls"] for c in counts)
        if run["ep"] > 1:
            say(f"  all-to-all: {calls} MPI_Alltoallv calls (= ranks x steps x L x 4 = "
                f"{run['P'] * steps * m.L * 4}); rows x C x 4 B summed over ranks: counted {a2a_counted} B, "
                f"formula from the logged mean K {a2a_formula:.0f} B (ratio {a2a_counted / a2a_formula:.6f})")
            frac = (run["ep"] - 1) / run["ep"]
            say(f"  off-rank share: counted {off_counted / a2a_counted:.4f}, uniform-routing formula (ep-1)/ep = "
                f"{frac:.4f} -> {off_counted / steps / run['P'] / 1e6:.2f} MB leave each rank per step "
                f"(formula {frac * a2a_formula / steps / run['P'] / 1e6:.2f} MB)")
        else:
            say(f"  all-to-all: {calls} MPI_Alltoallv calls (ep = 1: the local dispatcher, none expected)")
        # 3. All-reduce payload: dense grads over the world, expert grads over edp (skipped when 1).
        ar = counts[0]["allreduce_bytes"] / steps
        want = (m.dense_params() * 4 if run["P"] > 1 else 0) + (m.expert_params() / run["ep"] * 4 if run["edp"] > 1 else 0)
        say(f"  all-reduce payload per step and rank: counted {ar:.0f} B, formula {want:.0f} B "
            f"(dense {m.dense_params()} params{' + experts ' + str(m.expert_params() // run['ep']) if run['edp'] > 1 else ''}"
            f" x 4 B); ring traffic 2(P-1)/P x that is a model assumption")
        # 4. Measured time split (after the first 20% of steps).
        use = tr[steps // 5:]
        mean = lambda k: sum(j[k] for j in use) / len(use)
        flops_rank = run["tokens"] / run["P"] * m.flops_per_token(mean_k)
        say(f"  measured per step: compute {1e3 * mean('t_compute'):.2f} ms, dispatch {1e3 * mean('t_dispatch'):.2f} ms, "
            f"sync {1e3 * mean('t_sync'):.2f} ms, optim {1e3 * mean('t_optim'):.2f} ms; achieved compute rate "
            f"{flops_rank / mean('t_compute') / 1e9:.1f} GFLOP/s per rank = "
            f"{flops_rank / mean('t_compute') / run['core_flops']:.0%} of the SGEMM probe")
        if run["ep"] > 1 and mean("t_dispatch") > 0:
            say(f"  effective all-to-all bandwidth (bytes leaving a rank / dispatch time): "
                f"{off_counted / steps / run['P'] / mean('t_dispatch') / 1e9:.2f} GB/s per rank "
                "(shared memory, 2 oversubscribed-ish cores)")
    # 5. Predict the 2-rank ep=2 step time from the 1-rank run (compute rate, optimizer) and the
    #    bytes, with the all-to-all bandwidth left as the measured constant: a consistency check of
    #    the model's structure on this machine, not an independent measurement.
    r1, _ = results["1 rank"]
    r2, c2 = results["2 ranks ep=2"]
    u1, u2 = r1["train"][steps // 5:], r2["train"][steps // 5:]
    mk = lambda run, k: sum(j[k] for j in run["train"][steps // 5:]) / len(run["train"][steps // 5:])
    rate = r1["tokens"] * r1["model"].flops_per_token(mk(r1, "mean_k")) / mk(r1, "t_compute")
    m2 = replace(r2["model"], k=mk(r2, "mean_k"))
    pred_compute = r2["tokens"] / 2 * m2.flops_per_token() / rate
    say(f"\nPrediction check (2 ranks, ep=2, from the 1-rank run's compute rate {rate / 1e9:.1f} GFLOP/s): compute "
        f"{1e3 * pred_compute:.2f} ms predicted vs {1e3 * mk(r2, 't_compute'):.2f} ms measured "
        f"({mk(r2, 't_compute') / pred_compute - 1:+.0%}); on 2 cores the ranks also share caches and memory bandwidth.")
    if a.report:
        with open(a.report, "w") as f:
            f.write("\n".join(report) + "\n")
    print(f"\n(runs and byte counts in {tmp})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(MODELS) + ["all"], default="all")
    p.add_argument("--hw", choices=list(HARDWARE), default="h100-ib")
    p.add_argument("--mode", choices=["weak", "strong", "both"], default="both")
    p.add_argument("--max-ranks", type=int, default=1024)
    p.add_argument("--bytes-per-elem", type=int, default=0, help="2 for a bf16 exchange (anyk today: 4)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--a2a", choices=["flat", "hier", "compare"], default="flat",
                   help="all-to-all of the tables: flat, hierarchical (anyk --a2a hier), or a flat-vs-hier table")
    p.add_argument("--experts", type=int, default=0, help="override the model's E (ep = gcd(P, E))")
    p.add_argument("--seqs-per-rank", type=int, default=0, help="override the model's sequences per rank")
    p.add_argument("--validate", action="store_true", help="run anyk here and check the counts")
    p.add_argument("--steps", type=int, default=30, help="--validate: steps per run")
    p.add_argument("--data", default=os.path.join(ROOT, "data_cache", "fortunes"), help="--validate: prepared data")
    p.add_argument("--report", default="", help="--validate: also write the report to this file")
    a = p.parse_args()
    if a.validate:
        return validate(a)
    hw = HARDWARE[a.hw]
    if a.bytes_per_elem:
        hw = replace(hw, bytes_per_elem=a.bytes_per_elem)
    ranks = [2 ** i for i in range(int(math.log2(a.max_ranks)) + 1)]
    for name in (MODELS if a.model == "all" else [a.model]):
        m = MODELS[name]
        if a.experts or a.seqs_per_rank:
            m = replace(m, E=a.experts or m.E, seqs_per_rank=a.seqs_per_rank or m.seqs_per_rank,
                        name=f"{m.name}, E={a.experts or m.E}, {a.seqs_per_rank or m.seqs_per_rank} seqs/rank")
        if a.a2a == "compare":
            a2a_table(m, hw, a.markdown, a.max_ranks)
            continue
        print(f"{m.name}: dense {m.dense_params() / 1e6:.2f}M, experts {m.expert_params() / 1e6:.1f}M, active/token "
              f"{m.active_params() / 1e6:.2f}M at K={m.k}, {m.flops_per_token() / 1e9:.3f} GFLOP/token; "
              f"{m.seqs_per_rank} x {m.T} tokens per rank (weak), exchanges in {hw.bytes_per_elem}-byte elements\n")
        for mode in (["weak", "strong"] if a.mode == "both" else [a.mode]):
            print_table(m, hw, scaling_table(m, hw, ranks, mode, a2a=a.a2a), mode, a.markdown)


if __name__ == "__main__":
    main()
