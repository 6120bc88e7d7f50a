#!/usr/bin/python3
"""Plot the cost/quality frontier written by `anyk eval --frontier --json F`.

    /usr/bin/python3 tools/plot_frontier.py --out frontier.png runs/a/frontier.json
    /usr/bin/python3 tools/plot_frontier.py --out f.png --label "M-MoE" a.json --label "fixed K=2" b.json
    /usr/bin/python3 tools/plot_frontier.py --out f.png --label "M-MoE" a.json \
        --label "fixed K=1" --trained-k 1 k1.json --label "fixed K=4" --trained-k 4 k4.json

Input: {"frontier": [{"name", "kind" ("K" or "budget"), "k", "bits_per_byte", "flops_per_token",
"decode_tokens_per_s", ...}, ...]}. Left panel: validation bits per byte against FLOPs per token;
right panel: against measured decode tokens/s. Uniform-K points are joined by a line (the
frontier of one set of weights); greedy budget schedules are squares. Several files (e.g. an
elastic model and fixed-K models) share the axes, one colour each. `--trained-k K` before a file
marks it as a model trained at a fixed K: its point at that K is a large star (the point such a
model is built to serve) and its other K points are a thin dashed line. Needs python3-matplotlib.
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


def place_labels(ax, labels, fontsize=7):
    """Annotates each (x, y, text, (dx, dy)) of labels at its preferred offset (points) when that
    box is free, else at the nearest free offset above or below it (with a thin leader line), so
    that labels of close points (K=6, K=7, K=8 at similar speeds) never print over each other.
    Call after the axes' limits and the figure's layout are final."""
    fig = ax.get_figure()
    px = fig.dpi / 72.0  # pixels per point
    placed = []

    def box(x, y, text, dx, dy):
        X, Y = ax.transData.transform((x, y))
        w, h = 0.62 * fontsize * len(text) * px, 1.25 * fontsize * px
        return (X + dx * px, Y + dy * px, X + dx * px + w, Y + dy * px + h)

    def free(b):
        return all(b[2] <= o[0] or b[0] >= o[2] or b[3] <= o[1] or b[1] >= o[3] for o in placed)

    for x, y, text, (dx, dy) in labels:
        step = 1.3 * fontsize
        tries = [dy] + [dy + sign * i * step for i in range(1, 12) for sign in (1, -1)]
        best = next((t for t in tries if free(box(x, y, text, dx, t))), dy)
        placed.append(box(x, y, text, dx, best))
        arrow = dict(arrowstyle="-", linewidth=0.4, color="0.5") if abs(best - dy) > step / 2 else None
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, best), fontsize=fontsize,
                    arrowprops=arrow)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--title", default="Cost/quality frontier: one set of weights served at any K")
    ap.add_argument("items", nargs="+", help="frontier files, optionally preceded by --label NAME")
    args, _ = ap.parse_known_args()
    series, label, trained_k, toks, i = [], None, None, sys.argv[1:], 0
    while i < len(toks):
        t = toks[i]
        if t in ("--out", "--title"):
            i += 2
            continue
        if t == "--label":
            label = toks[i + 1]
            i += 2
            continue
        if t == "--trained-k":
            trained_k = int(toks[i + 1])
            i += 2
            continue
        series.append((label or t, load(t), trained_k))
        label, trained_k = None, None
        i += 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), dpi=100)
    ann = {0: [], 1: []}  # per panel: (x, y, text, offset), placed once the layout is final
    for panel, ax, key, xlabel, scale in (
            (0, axes[0], "flops_per_token", "MFLOP per token (2 x active params)", 1e-6),
            (1, axes[1], "decode_tokens_per_s", "measured decode tokens/s (1 sequence)", 1.0)):
        for name, pts, trained_k in series:
            uni = sorted((p for p in pts if p.get("kind") == "K"), key=lambda p: p["k"][0])
            bud = [p for p in pts if p.get("kind") == "budget"]
            style = dict(marker="o", label=name)
            if trained_k is not None:
                style = dict(marker=".", linestyle="--", linewidth=0.8, alpha=0.7,
                             label=f"{name} (star: its own K={trained_k}; dashed: other K)")
            line, = ax.plot([p[key] * scale for p in uni], [p["bits_per_byte"] for p in uni], **style)
            if trained_k is not None:
                own = [p for p in uni if p["k"][0] == trained_k]
                if not own:
                    sys.exit(f"plot_frontier: error: {name} has no point at its --trained-k {trained_k}")
                ax.scatter([own[0][key] * scale], [own[0]["bits_per_byte"]], marker="*", s=160, zorder=3,
                           color=line.get_color(), edgecolors="black", linewidths=0.5)
            for p in uni:
                if trained_k is not None and p["k"][0] != trained_k:
                    continue  # only the elastic series' K labels, to keep the overlay readable
                ann[panel].append((p[key] * scale, p["bits_per_byte"], f"K={p['k'][0]}", (4, 4)))
            if bud:
                ax.scatter([p[key] * scale for p in bud], [p["bits_per_byte"] for p in bud], marker="s",
                           color=line.get_color(), label=f"{name}: greedy budget schedules")
                for p in bud:
                    ann[panel].append((p[key] * scale, p["bits_per_byte"], ",".join(str(k) for k in p["k"]),
                                          (4, -10)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation bits per byte")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    rows = (len(handles) + 2) // 3
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(args.title)
    fig.tight_layout(rect=(0, 0.045 * rows, 1, 1))
    for panel, ax in enumerate(axes):
        place_labels(ax, ann[panel])
    fig.savefig(args.out)
    print(f"plot_frontier: wrote {args.out}")


if __name__ == "__main__":
    main()
