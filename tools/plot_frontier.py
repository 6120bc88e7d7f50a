#!/usr/bin/python3
"""Plot the cost/quality frontier written by `anyk eval --frontier --json F`.

    /usr/bin/python3 tools/plot_frontier.py --out frontier.png runs/a/frontier.json
    /usr/bin/python3 tools/plot_frontier.py --out f.png --label "M-MoE" a.json --label "fixed K=2" b.json

Input: {"frontier": [{"name", "kind" ("K" or "budget"), "k", "bits_per_byte", "flops_per_token",
"decode_tokens_per_s", ...}, ...]}. Left panel: validation bits per byte against FLOPs per token;
right panel: against measured decode tokens/s. Uniform-K points are joined by a line (the
frontier of one set of weights); greedy budget schedules are squares. Several files (e.g. an
elastic model and fixed-K models) share the axes, one colour each. Needs python3-matplotlib.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        pts = json.load(f).get("frontier", [])
    if not pts:
        sys.exit(f"plot_frontier: error: {path} holds no frontier points")
    return pts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--title", default="Cost/quality frontier: one set of weights served at any K")
    ap.add_argument("items", nargs="+", help="frontier files, optionally preceded by --label NAME")
    args, _ = ap.parse_known_args()
    series, label, toks, i = [], None, sys.argv[1:], 0
    while i < len(toks):
        t = toks[i]
        if t in ("--out", "--title"):
            i += 2
            continue
        if t == "--label":
            label = toks[i + 1]
            i += 2
            continue
        series.append((label or t, load(t)))
        label = None
        i += 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, key, xlabel, scale in ((axes[0], "flops_per_token", "MFLOP per token (2 x active params)", 1e-6),
                                   (axes[1], "decode_tokens_per_s", "measured decode tokens/s (1 sequence)", 1.0)):
        for name, pts in series:
            uni = sorted((p for p in pts if p.get("kind") == "K"), key=lambda p: p["k"][0])
            bud = [p for p in pts if p.get("kind") == "budget"]
            line, = ax.plot([p[key] * scale for p in uni], [p["bits_per_byte"] for p in uni], marker="o", label=name)
            for p in uni:
                ax.annotate(f"K={p['k'][0]}", (p[key] * scale, p["bits_per_byte"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
            if bud:
                ax.scatter([p[key] * scale for p in bud], [p["bits_per_byte"] for p in bud], marker="s",
                           color=line.get_color(), label=f"{name}: greedy budget schedules")
                for p in bud:
                    ax.annotate(",".join(str(k) for k in p["k"]), (p[key] * scale, p["bits_per_byte"]),
                                textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation bits per byte")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"plot_frontier: wrote {args.out}")


if __name__ == "__main__":
    main()
