#!/usr/bin/python3
"""Plot validation bits per byte against inference K from one or more anyk sweep files.

    /usr/bin/python3 tools/plot_sweep.py --out sweep.png runs/a/sweep.json runs/b/sweep.json
    /usr/bin/python3 tools/plot_sweep.py --out s.png --label "M-MoE" runs/a/sweep.json --label fixed runs/b/sweep.json

Inputs are the JSON written by `anyk train` (run_dir/sweep.json) or `anyk eval --sweep --json F`:
{"results": [{"name", "k": [per-layer K], "val_loss", "bits_per_byte", ...}, ...]}. Only uniform
K settings are plotted. Several files with the same label (e.g. seeds) are drawn as mean with a
min-max band. Needs Debian's python3-matplotlib.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    pts = {}
    for r in data.get("results", []):
        ks = r.get("k", [])
        if ks and all(k == ks[0] for k in ks) and r.get("bits_per_byte") is not None:
            pts[ks[0]] = float(r["bits_per_byte"])
    if not pts:
        sys.exit(f"plot_sweep: error: {path} holds no uniform-K results")
    return pts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--title", default="Validation bits per byte at each inference K")
    ap.add_argument("items", nargs="+", help="sweep files, optionally preceded by --label NAME")
    # Allow "--label NAME file..." groups inside the positional list.
    args, rest = ap.parse_known_args()
    series, label = {}, None
    tokens = sys.argv[1:]
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("--out", "--title"):
            i += 2
            continue
        if t == "--label":
            label = tokens[i + 1]
            i += 2
            continue
        series.setdefault(label or t, []).append(load(t))
        i += 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, runs in series.items():
        ks = sorted(set.intersection(*(set(r) for r in runs)))
        mean = [sum(r[k] for r in runs) / len(runs) for k in ks]
        line, = ax.plot(ks, mean, marker="o", label=f"{name} (n={len(runs)})" if len(runs) > 1 else name)
        if len(runs) > 1:
            ax.fill_between(ks, [min(r[k] for r in runs) for k in ks], [max(r[k] for r in runs) for k in ks],
                            color=line.get_color(), alpha=0.2)
    ax.set_xlabel("experts per token at inference, K")
    ax.set_ylabel("validation loss (bits per byte)")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"plot_sweep: wrote {args.out}")


if __name__ == "__main__":
    main()
