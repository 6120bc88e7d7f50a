#!/usr/bin/python3
"""Regenerate the measured figures of README.md from one command, and check the docs against them.

    /usr/bin/python3 tools/figures.py                 # sample + fingerprint + decode (the default parts)
    /usr/bin/python3 tools/figures.py sample          # only the named parts:
                                                      #   sample       the quickstart run (tools/quickstart.sh's
                                                      #                train command, 1200 steps, 2 ranks)
                                                      #   fingerprint  a 20-step run of the same model (seconds)
                                                      #   decode       build/decode_bench (timings)
                                                      #   compare      bench/compare.sh, 1 and 2 threads (timings;
                                                      #                installs python3-torch if missing; minutes)
    /usr/bin/python3 tools/figures.py --render        # only rewrite docs/figures.md and README's blocks
    /usr/bin/python3 tools/figures.py --check         # README's blocks == docs/figures.json (text; the ctest
                                                      # figures_docs); exit 1 naming each stale number
    /usr/bin/python3 tools/figures.py --check-fingerprint [--anyk build/anyk]
                                                      # rerun the 20-step fingerprint and compare its
                                                      # losses with docs/figures.json (the ctest figures_fingerprint)

Every part writes its own entry of docs/figures.json (the other entries are kept), then
docs/figures.md and the README blocks between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`
are rendered from that file. Each entry records the date, the commit (with "+dirty" when the work
tree had changes), and, beside every timing, the machine's load average (/proc/loadavg) before and
after and `nproc`. Losses and bits/byte are deterministic (same binary, same settings): the
fingerprint check fails when a code change moves them, until the figures are regenerated.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import time
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIG_JSON = os.path.join(ROOT, "docs", "figures.json")
FIG_MD = os.path.join(ROOT, "docs", "figures.md")
README = os.path.join(ROOT, "README.md")
FORTUNES = "/usr/share/games/fortunes"
WORK = os.path.join(ROOT, "runs", "figures")

# tools/quickstart.sh's model and run (keep in step with it).
QUICKSTART_MODEL = ["--k-strategy", "layer", "--experts", "8", "--k-min", "1", "--k-max", "4",
                    "--layers", "4", "--dim", "128", "--heads", "4", "--expert-hidden", "128",
                    "--seq-len", "128", "--batch", "8"]
QUICKSTART_RUN = ["--steps", "1200", "--log-every", "50", "--eval-every", "400", "--eval-windows", "64"]
FINGERPRINT_RUN = ["--steps", "20", "--log-every", "5", "--eval-every", "20", "--eval-windows", "8"]
RANKS = 2


def die(msg):
    print(f"figures: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine():
    return {"nproc": os.cpu_count(), "loadavg_1min": load()}


def commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp():
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit()}


def mpi_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def run(cmd, env=None):
    print("figures: " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or mpi_env(), cwd=ROOT)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        sys.stderr.write(out[-4000:])
        die(f"`{' '.join(cmd)}` exited with {p.returncode}")
    return out


def prepare(anyk, out_dir):
    """Prepares the fortunes corpus into out_dir (fresh) and returns anyk prepare's summary line."""
    if not os.path.isdir(FORTUNES):
        die(f"{FORTUNES} is missing (Debian package fortunes; tools/deps.sh installs it)")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    out = run([anyk, "prepare", "--input", FORTUNES, "--out", out_dir])
    return [l for l in out.splitlines() if l.startswith("prepare:")]


def train(anyk, mpiexec, data, run_dir, extra):
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    cmd = [mpiexec, "-np", str(RANKS), "--oversubscribe", "--bind-to", "none", anyk, "train", "--data", data,
           "--run-dir", run_dir, "--ep", str(RANKS)] + QUICKSTART_MODEL + extra
    return run(cmd)


STEP_RE = re.compile(r"^step +(\d+)/\d+ \| loss ([0-9.]+)")
EVAL_RE = re.compile(r"^eval +step (\d+) \| (.*)$")
SWEEP_RE = re.compile(r"^K=(\d+) \| +([0-9.]+) \| +([0-9.]+)$")


def deterministic(out):
    """The deterministic numbers of a train log: losses per logged step, eval lines, the K-sweep."""
    d = {"losses": {}, "evals": {}, "sweep": {}}
    for line in out.splitlines():
        line = line.rstrip()
        if m := STEP_RE.match(line):
            d["losses"][m.group(1)] = m.group(2)
        elif m := EVAL_RE.match(line):
            d["evals"][m.group(1)] = m.group(2)
        elif m := SWEEP_RE.match(line):
            d["sweep"]["K=" + m.group(1)] = {"nats": m.group(2), "bits_per_byte": m.group(3)}
    if not d["losses"] or not d["sweep"]:
        die("no step or K-sweep lines in the train output (has its format changed?)")
    return d


def sample_lines(prep, out):
    """The README's abridged quickstart output: header, steps 1 and 50, the step-800 eval, the last
    step, the save and the K-sweep table."""
    lines = [l.rstrip() for l in out.splitlines()]
    keep = [l for l in prep if re.match(r"^prepare: \d+ files", l)]
    steps = [l for l in lines if STEP_RE.match(l)]
    head = [l for l in lines if re.match(r"^(anyk train:|data:|layout:|K strategy)", l)]
    keep += head + steps[:2] + ["..."]
    keep += [l for l in lines if l.startswith("eval  step 800")] + ["..."]
    if steps:
        keep.append(re.sub(r"\| MFU .*?\| K ", "| ... | K ", steps[-1]))
    keep += [l for l in lines if l.startswith("saved ")]
    i = next((j for j, l in enumerate(lines) if l.startswith("K-sweep")), None)
    if i is not None:
        keep += lines[i:i + 3 + 8]
    # Shown with tools/quickstart.sh's paths (this script trains in runs/figures/).
    paths = [(os.path.join(WORK, "data"), "data_cache/fortunes"), (os.path.join(WORK, "quickstart"), "runs/quickstart")]
    for a, b in paths:
        keep = [l.replace(a, b) for l in keep]
    return keep


def part_sample(a, figs):
    data = os.path.join(WORK, "data")
    t0 = machine()
    prep = prepare(a.anyk, data)

    start = time.time()
    out = train(a.anyk, a.mpiexec, data, os.path.join(WORK, "quickstart"), QUICKSTART_RUN)
    wall = time.time() - start
    figs["sample"] = dict(stamp(), command="tools/quickstart.sh's train command (train " +
                          " ".join(QUICKSTART_MODEL + QUICKSTART_RUN) + f", {RANKS} ranks, --ep {RANKS})",
                          build=build_info(a.anyk), deterministic=deterministic(out), lines=sample_lines(prep, out),
                          train_seconds=round(wall, 1), machine_before=t0, machine_after=machine())


def part_fingerprint(a, figs):
    figs["fingerprint"] = dict(stamp(), command="train " + " ".join(QUICKSTART_MODEL + FINGERPRINT_RUN) +
                               f", {RANKS} ranks, --ep {RANKS}", build=build_info(a.anyk),
                               deterministic=fingerprint(a.anyk, a.mpiexec))


def build_info(anyk):
    """`anyk --version`'s compiler and ISA lines: the deterministic numbers hold for that build (another
    compiler or -march may contract or vectorise floating point differently)."""
    out = subprocess.run([anyk, "--version"], capture_output=True, text=True).stdout
    return "; ".join(l.split(None, 1)[1].split(" (checked")[0] for l in out.splitlines()
                     if l.startswith(("compiler:", "isa:")))


def fingerprint(anyk, mpiexec):
    data = os.path.join(WORK, "fp-data")
    prepare(anyk, data)
    return deterministic(train(anyk, mpiexec, data, os.path.join(WORK, "fingerprint"), FINGERPRINT_RUN))


def part_decode(a, figs):
    bench = os.path.join(os.path.dirname(a.anyk), "decode_bench")
    if not os.path.exists(bench):
        die(f"{bench} is missing: cmake --build build --target decode_bench")
    js = os.path.join(WORK, "decode.json")
    os.makedirs(WORK, exist_ok=True)
    t0 = machine()
    args = ["--threads", "1", "--rounds", "3", "--new", "64"]
    out = run([bench] + args + ["--json", js])
    with open(js) as f:
        res = json.load(f)
    figs["decode"] = dict(stamp(), command="build/decode_bench " + " ".join(args), result=res,
                          output=out.splitlines(), machine_before=t0, machine_after=machine())


def part_compare(a, figs):
    os.makedirs(WORK, exist_ok=True)
    res = []
    for threads in a.compare_threads:
        js = os.path.join(WORK, f"compare-{threads}.json")
        t0 = machine()
        args = ["--steps", "30", "--threads", str(threads), "--rounds", str(a.compare_rounds)]
        run(["sh", os.path.join(ROOT, "bench", "compare.sh")] + args + ["--anyk", a.anyk, "--json", js])
        with open(js) as f:
            r = json.load(f)
        res.append(dict(threads=threads, command="bench/compare.sh " + " ".join(args),
                        anyk_tok_per_s=r["anyk_tok_per_s"], peer_tok_per_s=r["peer_tok_per_s"], ratio=r["ratio"],
                        machine_before=t0, machine_after=machine()))
    figs["compare"] = dict(stamp(), runs=res)


# ---- rendering ---------------------------------------------------------------------------------

def load_txt(m):
    return f"load average {m['machine_before']['loadavg_1min']:.1f} before / {m['machine_after']['loadavg_1min']:.1f} " \
           f"after, nproc {m['machine_before']['nproc']}"


def render_blocks(figs):
    """README block name -> its text (between the markers), from docs/figures.json."""
    blocks = {}
    if s := figs.get("sample"):
        blocks["sample"] = "```\n" + "\n".join(s["lines"]) + "\n```"
    if d := figs.get("decode"):
        r = d["result"]
        rows = ["| K | decode tok/s | active params/token |", "|---|---|---|"]
        for e in r["single"]:
            rows.append(f"| {e['k']} | {e['decode_tps']:.1f} | {e['active_params'] / 1e6:.3g}M |")
        bat = "; ".join(f"K={b['k']}: {b['ratio']:.2f}× ({b['batched_tps']:.1f} vs {b['single_tps']:.1f} tok/s"
                        + (f"; bound {b['bound']:.2f}×, {100 * b['fraction']:.0f}% of it" if "fraction" in b else "")
                        + ")" for b in r["batched"])
        blocks["decode"] = "\n".join(rows) + (
            f"\n\n- K=1 decodes {r['k1_over_k4']:.2f}× as fast as K=4 on the same weights (goal ≥ 1.6×)."
            f"\n- Batched decode of 8 prompts against 8 single-prompt runs: {bat} (goal ≥ 80% of the bound)."
            f"\n- Measured {d['date']} at commit {d['commit']}, {load_txt(d)}"
            " ([docs/figures.md](docs/figures.md); `tools/figures.py decode` remeasures).")
    if c := figs.get("compare"):
        parts = [f"{r['anyk_tok_per_s'] / 1e3:.1f}k vs {r['peer_tok_per_s'] / 1e3:.1f}k tok/s at {r['threads']} "
                 f"thread{'s' if r['threads'] > 1 else ''} ({r['ratio']:.2f}×; {load_txt(r)})" for r in c["runs"]]
        blocks["compare"] = (f"On this project's {c['runs'][0]['machine_before']['nproc']}-core VM, for the "
                             f"quickstart model, anyk measured " + " and ".join(parts) +
                             f", {c['date']}, commit {c['commit']} (`tools/figures.py compare`).")
    return blocks


def render_md(figs):
    out = ["# Measured figures (generated)", "",
           "Written by `/usr/bin/python3 tools/figures.py` from `docs/figures.json`; do not edit by hand.",
           "Losses and bits/byte are deterministic for a given commit and settings; timings depend on the",
           "machine and its load, which is recorded beside each. `tools/figures.py --check` (ctest",
           "`figures_docs`) compares README.md's blocks with this file; `--check-fingerprint` (ctest",
           "`figures_fingerprint`) reruns the fingerprint and compares its losses.", ""]
    if s := figs.get("sample"):
        out += ["## Quickstart sample (`tools/figures.py sample`)", "",
                f"{s['date']}, commit {s['commit']}, build {s.get('build', '?')}: {s['command']}. Training took {s['train_seconds']} s, "
                f"{load_txt(s)}.", "", "| K | val loss (nats) | bits/byte |", "|---|---|---|"]
        out += [f"| {k} | {v['nats']} | {v['bits_per_byte']} |" for k, v in s["deterministic"]["sweep"].items()]
        out += ["", "Training loss at the logged steps: " +
                ", ".join(f"{k}: {v}" for k, v in s["deterministic"]["losses"].items()) + ".", ""]
    if f := figs.get("fingerprint"):
        out += ["## Fingerprint (`tools/figures.py fingerprint`)", "", f"{f['date']}, commit {f['commit']}, build {f.get('build', '?')}: "
                f"{f['command']}.", "", "Losses: " + ", ".join(f"step {k}: {v}" for k, v in
                                                               f["deterministic"]["losses"].items()) + ".",
                "K-sweep bits/byte: " + ", ".join(f"{k}: {v['bits_per_byte']}" for k, v in
                                                  f["deterministic"]["sweep"].items()) + ".", ""]
    if d := figs.get("decode"):
        out += ["## Decode (`tools/figures.py decode`)", "", f"{d['date']}, commit {d['commit']}, {load_txt(d)}.",
                "", "```"] + d["output"] + ["```", ""]
    if c := figs.get("compare"):
        out += ["## anyk vs the PyTorch peer (`tools/figures.py compare`)", "", f"{c['date']}, commit {c['commit']}.", "",
                "| threads | anyk tok/s | peer tok/s | ratio | load |", "|---|---|---|---|---|"]
        out += [f"| {r['threads']} | {r['anyk_tok_per_s']:.0f} | {r['peer_tok_per_s']:.0f} | {r['ratio']:.2f} | "
                f"{load_txt(r)} |" for r in c["runs"]]
        out.append("")
    out += ["## One-off measurements elsewhere in the docs", "",
            "These figures are not regenerated by this script. Each is a single measurement, quoted where it",
            "stands with its setting; the date and commit below are those of the commit that wrote it, and the",
            "last column names the command that remeasures it.", "",
            "| where | figures | measured (commit) | remeasure with |", "|---|---|---|---|"]
    out += [f"| {w} | {f} | {d} | {c} |" for w, f, d, c in ONE_OFF]
    out.append("")
    return "\n".join(out)


# (where, what, date and commit that wrote it, command): the docs' timings that are not this script's.
ONE_OFF = [
    ("README.md, main job", "5 min 25 s for tools/quickstart.sh", "2026-11-24 (1041972)", "`time bash tools/quickstart.sh`"),
    ("README.md, frontier table", "bits/byte and decode tok/s of four 1200-step models", "2026-11-28 (7ff30c3)",
     "the commands above the table"),
    ("README.md, generate sample", "the K=1 / K=4 sample text of the quickstart model", "2026-11-28 (d6849ef)",
     "`anyk generate` as quoted there"),
    ("README.md, benchmarks", "anyk vs PyTorch peer 18.1k/12.7k and 10.9k/9.3k tok/s", "2026-11-24 (b60d0d8)",
     "`tools/figures.py compare`"),
    ("README.md, SentencePiece", "val loss 3.46 nats/token, 6 s prepare", "2026-12-06 (7a79b17)", "the commands quoted there"),
    ("docs/design.md, portable builds", "tok/s and CPU s of native vs x86-64-v3", "2026-12-06 (aaa920f)",
     "the `anyk train` command quoted there"),
    ("docs/elsewhere.md", "llama.cpp / HF test durations", "2026-12-06 (40fdbaa, 7a79b17)", "`tools/llama_test.sh`"),
    ("docs/gpu.md", "bf16 vs f32 tok/s; GPU-pack test durations", "2026-11-28 (2410a9a); 2026-12-06 (283184e)",
     "`bench/precision_bench.py`; `tools/pack_test.sh`"),
    ("docs/hier-a2a.md", "exchange times (model)", "2026-11-28 (36eaf95)", "`mpirun -np 2 build/dispatch_bench`"),
    ("docs/sanitizers.md", "build and ctest times", "2026-11-28 (b23acd2, 960a930)", "`tools/sanitize.sh`"),
    ("docs/results.md, docs/results-quick.md", "all tables (generated, dated in their header)",
     "2026-11-25 (2ccf323, 189879a)", "`bench/reproduce.py [--quick]`"),
    ("docs/scaling.md", "cost-model validation, section 4 (calibration and prediction runs A and B)",
     "2026-12-07 (9ac71fe)", "`tools/cluster_scaling.py --validate`"),
    ("docs/fuzzing.md", "executions and exec/s per harness", "dated in its tables", "`tools/fuzz.sh long`"),
]

BLOCK_RE = r"(<!-- figures:{0} -->\n)(.*?)(\n<!-- /figures:{0} -->)"


def rewrite_readme(figs):
    with open(README) as f:
        text = f.read()
    for name, body in render_blocks(figs).items():
        text, n = re.subn(BLOCK_RE.format(name), lambda m: m.group(1) + body + m.group(3), text, flags=re.S)
        if n != 1:
            die(f"README.md has {n} `<!-- figures:{name} -->` blocks (expected 1)")
    write_atomic(README, text)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_figs():
    if not os.path.exists(FIG_JSON):
        return {}
    with open(FIG_JSON) as f:
        return json.load(f)


def numbers(text):
    return re.findall(r"\d+\.\d+|\d+", text)


def check(figs):
    """README's blocks against the file, naming each number that differs."""
    with open(README) as f:
        text = f.read()
    bad = 0
    for name, want in render_blocks(figs).items():
        m = re.search(BLOCK_RE.format(name), text, flags=re.S)
        if not m:
            print(f"figures: README.md has no `<!-- figures:{name} -->` block")
            bad += 1
            continue
        have = m.group(2)
        if have == want:
            continue
        bad += 1
        hl, wl = have.splitlines(), want.splitlines()
        for i in range(max(len(hl), len(wl))):
            h = hl[i] if i < len(hl) else "<missing>"
            w = wl[i] if i < len(wl) else "<missing>"
            if h != w:
                stale = [f"{x} (docs/figures.json: {y})" for x, y in zip(numbers(h), numbers(w)) if x != y]
                print(f"figures: README.md block `{name}` line {i + 1} is stale: "
                      + ("; ".join(stale) if stale else repr(h)) + f"\n    README:  {h}\n    figures: {w}")
        print(f"figures: run `/usr/bin/python3 tools/figures.py --render` to copy docs/figures.json into README.md")
    with open(FIG_MD) as f:
        if f.read() != render_md(figs):
            print("figures: docs/figures.md differs from docs/figures.json: run tools/figures.py --render")
            bad += 1
    return bad


def check_fingerprint(a, figs):
    want = figs.get("fingerprint", {}).get("deterministic")
    if not want:
        die("docs/figures.json has no fingerprint: run tools/figures.py fingerprint")
    if not os.path.isdir(FORTUNES):
        print(f"figures: {FORTUNES} is missing: fingerprint check skipped")
        return 77
    have = fingerprint(a.anyk, a.mpiexec)
    bad = 0
    for kind in ("losses", "sweep"):
        for key, w in want[kind].items():
            h = have[kind].get(key)
            if h != w:
                bad += 1
                print(f"figures: stale: fingerprint {kind} {key}: docs/figures.json has {w}, this build gives {h}")
    if bad:
        print("figures: a deterministic number moved; regenerate with `/usr/bin/python3 tools/figures.py` "
              "(sample, fingerprint and decode) and commit docs/figures.* and README.md")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help="sample, fingerprint, decode, compare (default: the first three)")
    ap.add_argument("--anyk", default=os.path.join(ROOT, "build", "anyk"))
    ap.add_argument("--mpiexec", default=os.environ.get("ANYK_MPIEXEC", "mpirun"))
    ap.add_argument("--compare-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--compare-rounds", type=int, default=3)
    ap.add_argument("--render", action="store_true", help="only rewrite docs/figures.md and README's blocks")
    ap.add_argument("--check", action="store_true", help="README's blocks against docs/figures.json")
    ap.add_argument("--check-fingerprint", action="store_true", help="rerun the fingerprint and compare")
    a = ap.parse_args()
    figs = read_figs()
    if a.check:
        sys.exit(1 if check(figs) else 0)
    if a.check_fingerprint:
        global WORK
        WORK = os.environ.get("ANYK_FIGURES_WORK", WORK)
        sys.exit(check_fingerprint(a, figs))
    parts = a.parts or ([] if a.render else ["sample", "fingerprint", "decode"])
    table = {"sample": part_sample, "fingerprint": part_fingerprint, "decode": part_decode, "compare": part_compare}
    for p in parts:
        if p not in table:
            die(f"unknown part {p!r} (sample, fingerprint, decode, compare)")
    if parts and not os.path.exists(a.anyk):
        die(f"{a.anyk} is missing: build it first (cmake --build build --target anyk decode_bench)")
    for p in parts:
        table[p](a, figs)
        write_atomic(FIG_JSON, json.dumps(figs, indent=1, ensure_ascii=False) + "\n")  # each part kept as it ends
    write_atomic(FIG_MD, render_md(figs))
    rewrite_readme(figs)
    print(f"figures: wrote {os.path.relpath(FIG_JSON, ROOT)}, {os.path.relpath(FIG_MD, ROOT)} and README.md's blocks")


if __name__ == "__main__":
    main()
