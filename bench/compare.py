#!/usr/bin/python3
"""anyk vs a PyTorch peer: the same training run (same shapes, same K draws, same windows, same init,
same thread count) in `anyk train` and in bench/torch_peer.py, one after the other; prints the median
tokens/s of each over the steps after a warm-up, the ratio anyk/peer, and anyk's MFU as it reports
it (against the single-core SGEMM rate it measures, times the thread count).

    /usr/bin/python3 bench/compare.py                      # quickstart model, 2 threads, 30 steps
    /usr/bin/python3 bench/compare.py --threads 1 --steps 50 --anyk build/anyk --data DIR

Defaults are the quickstart model: L=4 C=128 NH=4 E=8 H=128 T=128 B=16, `layer` strategy K in [1,4].
Without --data it runs `anyk prepare --input /usr/share/games/fortunes` into a temporary directory.

The peer needs Debian's python3-torch (run with /usr/bin/python3). Debian's torch calls whatever
libblas.so.3 the alternatives system selects; with only libblas3 installed that is the netlib
reference BLAS, several times slower than OpenBLAS, which would make the comparison meaningless.
The script detects that: it uses an OpenBLAS found in the standard Debian directories (or
--peer-blas-dir) via LD_LIBRARY_PATH, and otherwise warns loudly (fix: apt-get install
libopenblas0-openmp; the pthreads build oversubscribes torch's OpenMP threads).
OPENBLAS_CORETYPE is removed from the peer's environment (unless --keep-openblas-coretype), so that
OpenBLAS uses the kernels for this CPU (a forced Haswell core halves OpenBLAS's SGEMM rate on an
AVX-512 machine). anyk's default build targets x86-64-v3 (AVX2), which measured no slower than its
-march=native build on the project's AVX-512 VM (docs/design.md, "Portable builds").

Timings are only meaningful on an otherwise idle machine: the script prints the load average and
warns; --rounds R alternates the two R times to even out load that comes and goes.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_PY = os.environ.get("ANYK_BENCH_PYTHON", "/usr/bin/python3")  # the interpreter with torch
OPENBLAS_DIRS = ["/usr/lib/x86_64-linux-gnu/openblas-pthread", "/usr/lib/x86_64-linux-gnu/openblas-openmp",
                 "/usr/lib/aarch64-linux-gnu/openblas-pthread", "/usr/lib/aarch64-linux-gnu/openblas-openmp"]

BLAS_PROBE = r"""
import torch
a = torch.randn(64, 64); (a @ a).sum()
libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if ('blas' in l or 'mkl' in l) and '/' in l})
print('BLAS ' + ';'.join(libs))
try:
    import ctypes
    for l in libs:
        if 'openblas' in l:
            f = ctypes.CDLL(l).openblas_get_corename
            f.restype = ctypes.c_char_p
            print('CORE ' + f().decode())
            g = ctypes.CDLL(l).openblas_get_parallel
            print('PAR ' + str(g()))
            break
except Exception:
    pass
"""


def die(msg):
    print(f"compare: error: {msg}", file=sys.stderr)
    sys.exit(2)


def probe_blas(env):
    r = subprocess.run([TORCH_PY, "-c", BLAS_PROBE], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1:] or ["?"]
    line = [l for l in r.stdout.splitlines() if l.startswith("BLAS ")]
    libs = line[0][5:].split(";") if line and line[0][5:] else []
    core = [l[5:] for l in r.stdout.splitlines() if l.startswith("CORE ")]
    par = [l[4:] for l in r.stdout.splitlines() if l.startswith("PAR ")]
    if core:
        libs = libs + ["OpenBLAS core " + core[0] + " " + {"0": "sequential", "1": "pthreads", "2": "OpenMP"}.get(
            par[0] if par else "", "?")]
    return libs, None


def openblas_pthreads(libs):
    return any(l.startswith("OpenBLAS core") and l.endswith("pthreads") for l in libs)


def is_fast_blas(libs):
    return any("openblas" in l.lower() or "mkl" in l.lower() or "blis" in l.lower() for l in libs)


def median_after(xs, skip):
    post = xs[skip:] if len(xs) > skip else xs
    return statistics.median(post), len(post)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anyk", default=os.path.join(ROOT, "build", "anyk"), help="anyk binary (default build/anyk)")
    ap.add_argument("--data", help="directory with train.bin/val.bin (default: prepare fortunes into a temp dir)")
    ap.add_argument("--input", default="/usr/share/games/fortunes", help="corpus for `anyk prepare` without --data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the medians")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-hidden", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k-strategy", default="layer")
    ap.add_argument("--k-min", type=int, default=1)
    ap.add_argument("--k-max", type=int, default=4)
    ap.add_argument("--k", type=int, default=2, help="K of the fixed strategy")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--peer-blas-dir", help="directory holding an optimised libblas.so.3 for the peer "
                    "(default: the system's if it is optimised, else a Debian OpenBLAS directory if present)")
    ap.add_argument("--keep-openblas-coretype", action="store_true",
                    help="pass OPENBLAS_CORETYPE from the environment to the peer (default: unset it, so OpenBLAS "
                    "picks its kernels for this CPU)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate anyk and peer runs this many times and pool their post-warm-up steps "
                    "(evens out load from other processes)")
    ap.add_argument("--peer-first", action="store_true", help="run the peer before anyk")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs (and prepared data) in DIR")
    ap.add_argument("--json", help="write the summary as JSON to this file")
    a = ap.parse_args()
    if a.rounds < 1:
        die(f"--rounds {a.rounds} must be >= 1")
    if a.steps <= a.warmup_steps:
        die(f"--steps {a.steps} must exceed --warmup-steps {a.warmup_steps}")

    # ---- preflight: anyk binary with a train command, torch under /usr/bin/python3 ----
    anyk = os.path.abspath(a.anyk)
    if not (os.path.isfile(anyk) and os.access(anyk, os.X_OK)):
        die(f"{anyk} not found; build it first: cmake -S . -B build && make -C build -j2 anyk")
    h = subprocess.run([anyk, "train", "--help"], capture_output=True, text=True)
    if "--run-dir" not in h.stdout + h.stderr:
        die(f"{anyk} has no `train` command (`{anyk} train --help` does not list --run-dir); rebuild it")
    if not os.path.exists(TORCH_PY):
        die(f"{TORCH_PY} not found; the peer needs Debian's python3 with python3-torch")
    r = subprocess.run([TORCH_PY, "-c", "import torch, numpy"], capture_output=True, text=True)
    if r.returncode != 0:
        die(f"{TORCH_PY} cannot import torch/numpy ({(r.stderr.strip().splitlines() or ['?'])[-1]}); "
            "install them: apt-get install python3-torch python3-numpy")

    T = a.threads
    peer_env = dict(os.environ, OMP_NUM_THREADS=str(T), OPENBLAS_NUM_THREADS=str(T), MKL_NUM_THREADS=str(T))
    if not a.keep_openblas_coretype:
        peer_env.pop("OPENBLAS_CORETYPE", None)
    # Which BLAS the peer's torch gets. Preference: --peer-blas-dir, the system's if it is OpenBLAS built
    # with OpenMP (or MKL), a Debian openblas-openmp directory, the system's OpenBLAS (pthreads), a Debian
    # openblas-pthread directory. OpenBLAS's pthreads build keeps its own spinning thread pool beside
    # torch's OpenMP pool: with both at T threads on T cores it oversubscribes and runs ~2x slower, so
    # with that build the peer's BLAS calls are given one thread (torch's own ops keep T).
    blas_note = ""
    libs, err = probe_blas(peer_env)
    if libs is None:
        die(f"torch BLAS probe failed: {err}")

    def with_dir(d):
        env2 = dict(peer_env, LD_LIBRARY_PATH=d + (":" + peer_env["LD_LIBRARY_PATH"]
                                                  if peer_env.get("LD_LIBRARY_PATH") else ""))
        libs2, _ = probe_blas(env2) if os.path.exists(os.path.join(d, "libblas.so.3")) else (None, None)
        return env2, libs2

    chosen = None
    if a.peer_blas_dir:
        env2, libs2 = with_dir(a.peer_blas_dir)
        if not libs2:
            die(f"--peer-blas-dir {a.peer_blas_dir}: no usable libblas.so.3 there")
        chosen = (env2, libs2, f" (via LD_LIBRARY_PATH={a.peer_blas_dir})")
    if chosen is None and is_fast_blas(libs) and not openblas_pthreads(libs):
        chosen = (peer_env, libs, "")
    if chosen is None:
        for d in [x for x in OPENBLAS_DIRS if "openmp" in x]:
            env2, libs2 = with_dir(d)
            if libs2 and is_fast_blas(libs2):
                chosen = (env2, libs2, f" (via LD_LIBRARY_PATH={d})")
                break
    if chosen is None and is_fast_blas(libs):
        chosen = (peer_env, libs, "")
    if chosen is None:
        for d in [x for x in OPENBLAS_DIRS if "pthread" in x]:
            env2, libs2 = with_dir(d)
            if libs2 and is_fast_blas(libs2):
                chosen = (env2, libs2, f" (via LD_LIBRARY_PATH={d})")
                break
    if chosen is not None:
        peer_env, libs, blas_note = chosen
    if openblas_pthreads(libs):
        peer_env["OPENBLAS_NUM_THREADS"] = "1"
        blas_note += ("; OPENBLAS_NUM_THREADS=1 to avoid oversubscribing torch's OpenMP threads "
                      "(install libopenblas0-openmp for multithreaded BLAS in the peer)")
    peer_blas = ";".join(libs) or "none found"
    slow_blas = not is_fast_blas(libs)

    work = os.path.abspath(a.keep) if a.keep else tempfile.mkdtemp(prefix="anyk-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        data = a.data
        if not data:
            data = os.path.join(work, "data")
            if not os.path.exists(os.path.join(data, "train.bin")):
                print(f"compare: anyk prepare --input {a.input} --out {data}", flush=True)
                r = subprocess.run([anyk, "prepare", "--input", a.input, "--out", data], capture_output=True, text=True)
                if r.returncode != 0:
                    die(f"anyk prepare failed:\n{r.stdout}{r.stderr}")
        if not os.path.exists(os.path.join(data, "train.bin")):
            die(f"{data}/train.bin not found; pass --data DIR made by `anyk prepare`")

        shape = ["--seed", str(a.seed), "--layers", str(a.layers), "--dim", str(a.dim), "--heads", str(a.heads),
                 "--experts", str(a.experts), "--expert-hidden", str(a.expert_hidden), "--seq-len", str(a.seq_len),
                 "--batch", str(a.batch), "--k-strategy", a.k_strategy, "--k-min", str(a.k_min),
                 "--k-max", str(a.k_max), "--k", str(a.k), "--lr", str(a.lr), "--threads", str(T),
                 "--steps", str(a.steps), "--warmup", str(min(50, a.steps))]
        load0 = os.getloadavg()[0]

        def run_anyk(i):
            run_dir = os.path.join(work, f"anyk-run{i}")
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [anyk, "train", "--data", data, "--run-dir", run_dir, *shape, "--log-every", "1",
                   "--eval-every", "0", "--eval-windows", "4"]
            print("compare: " + " ".join(cmd), flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            with open(os.path.join(work, f"anyk{i}.out"), "w") as f:
                f.write(r.stdout + r.stderr)
            if r.returncode != 0:
                die(f"anyk train failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
            rows = []
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        j = json.loads(line)
                        if j.get("type", "train") == "train" and "tok_per_s" in j:
                            rows.append(j)
            rows.sort(key=lambda j: j["step"])
            if len(rows) != a.steps:
                print(f"compare: warning: anyk logged {len(rows)} train steps, expected {a.steps}", flush=True)
            return r.stdout, rows

        def run_peer(i):
            peer_json = os.path.join(work, f"peer{i}.json")
            cmd = [TORCH_PY, os.path.join(HERE, "torch_peer.py"), "--data", data, *shape,
                   "--warmup-steps", str(a.warmup_steps), "--json", peer_json, "--quiet"]
            print("compare: " + " ".join(cmd) + blas_note, flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True, env=peer_env)
            with open(os.path.join(work, f"peer{i}.out"), "w") as f:
                f.write(r.stdout + r.stderr)
            if r.returncode != 0:
                die(f"torch peer failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
            with open(peer_json) as f:
                return json.load(f)["steps"]

        anyk_rows, peer_rows, anyk_out = [], [], ""
        for i in range(a.rounds):
            if a.peer_first:
                peer_rows.append(run_peer(i))
            anyk_out, rows = run_anyk(i)
            anyk_rows.append(rows)
            if not a.peer_first:
                peer_rows.append(run_peer(i))
        load1 = os.getloadavg()[0]

        def pooled(runs, key):
            xs = []
            for rows in runs:
                xs += [j[key] for j in rows[a.warmup_steps:]]
            return xs

        a_tps, p_tps = pooled(anyk_rows, "tok_per_s"), pooled(peer_rows, "tok_per_s")
        anyk_tps, peer_tps = statistics.median(a_tps), statistics.median(p_tps)
        anyk_mfu = statistics.median(pooled(anyk_rows, "mfu"))
        # Tokens over summed step time (a mean), and the per-step ratio paired by step (same K draws).
        anyk_mean = len(a_tps) / sum(1.0 / x for x in a_tps)
        peer_mean = len(p_tps) / sum(1.0 / x for x in p_tps)
        paired = statistics.median([x / y for x, y in zip(a_tps, p_tps)])
        peak = [l for l in anyk_out.splitlines() if l.startswith("peak:")]

        # Same K draws and the same first-step loss (same init and windows) as a sanity check.
        pk = {s["step"]: s["k_per_layer"] for s in peer_rows[0]}
        k_bad = [j["step"] for j in anyk_rows[0]
                 if "k_per_layer" in j and [int(x) for x in j["k_per_layer"]] != pk.get(j["step"])]
        loss_a, loss_p = anyk_rows[0][0]["loss"], peer_rows[0][0]["loss"]
        last_a, last_p = anyk_rows[0][-1]["loss"], peer_rows[0][-1]["loss"]

        ratio = anyk_tps / peer_tps
        n = len(a_tps)
        print()
        print(f"config: L={a.layers} C={a.dim} NH={a.heads} E={a.experts} H={a.expert_hidden} T={a.seq_len} "
              f"B={a.batch} K {a.k_strategy} [{a.k_min},{a.k_max}], {T} threads, {a.steps} steps x {a.rounds} "
              f"round(s); statistics over {n} post-warm-up steps each")
        print(f"peer BLAS: {peer_blas}{blas_note}")
        if peak:
            print("anyk " + peak[0])
        print(f"K draws identical: {'yes' if not k_bad else 'NO, steps ' + str(k_bad[:10])}; loss at step 1 "
              f"anyk {loss_a:.4f} / peer {loss_p:.4f}, at step {a.steps} anyk {last_a:.4f} / peer {last_p:.4f}")
        print(f"load average before/after: {load0:.2f} / {load1:.2f}"
              + ("  (WARNING: other work on the machine; timings are noisy)" if max(load0, load1) > 0.5 else ""))
        print(f"{'':6s}{'median tok/s':>14s}{'mean tok/s':>12s}{'best tok/s':>12s}")
        print(f"{'anyk':6s}{anyk_tps:14.1f}{anyk_mean:12.1f}{max(a_tps):12.1f}   MFU {100 * anyk_mfu:.1f}% (median, as anyk reports it)")
        print(f"{'peer':6s}{peer_tps:14.1f}{peer_mean:12.1f}{max(p_tps):12.1f}   MFU ~{100 * anyk_mfu * peer_tps / anyk_tps:.1f}% (same FLOPs and peak)")
        print(f"ratio anyk/peer: {ratio:.2f} (medians); {anyk_mean / peer_mean:.2f} (means); "
              f"{paired:.2f} (median of per-step ratios, same K)")
        if slow_blas:
            print("WARNING: the peer's torch uses the reference (netlib) BLAS, not OpenBLAS; the ratio flatters anyk. "
                  "Fix: apt-get install libopenblas0-openmp (or pass --peer-blas-dir).")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"anyk_tok_per_s": anyk_tps, "peer_tok_per_s": peer_tps, "ratio": ratio,
                           "anyk_mean_tok_per_s": anyk_mean, "peer_mean_tok_per_s": peer_mean,
                           "paired_ratio": paired, "anyk_mfu": anyk_mfu, "threads": T, "steps": a.steps,
                           "rounds": a.rounds, "warmup_steps": a.warmup_steps, "peer_blas": peer_blas,
                           "k_draws_identical": not k_bad, "step1_loss": {"anyk": loss_a, "peer": loss_p},
                           "loadavg": [load0, load1]}, f, indent=1)
        if a.keep:
            print(f"runs kept in {work} (anyk<i>.out, peer<i>.out, anyk-run<i>/metrics.jsonl, peer<i>.json)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
