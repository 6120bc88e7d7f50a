#!/usr/bin/env python3
"""The `hf` step of tools/gpu_check.sh: does transformers run anyk's Mixtral export as anyk does?

Trains a tiny model with the anyk binary ($ANYK_BIN, else anyk on PATH) on a generated corpus,
exports it with `anyk convert --to hf`, loads the directory with transformers'
MixtralForCausalLM on the CPU (float32, eager attention) with num_experts_per_tok = K, and
compares its logits at every position of 3 prompts with `anyk generate --logits-out` at K = 1
and 2: max |difference| <= 1e-4. Exit 0 pass, 1 fail, 3 when torch or transformers is not
installed (gpu_check.sh records that as "skip").
"""
import array
import os
import subprocess
import sys
import tempfile

try:
    import torch
    from transformers import MixtralForCausalLM
except ImportError as e:
    print(f"hf_check: skip: transformers not installed ({e})")
    sys.exit(3)

ANYK = os.environ.get("ANYK_BIN", "anyk")
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Q: What is 2 + 2?  A: 4!", "Mixtral, anyk & bytes"]


def run(*args):
    r = subprocess.run([ANYK, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"hf_check: anyk {' '.join(args[:1])} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def main():
    with tempfile.TemporaryDirectory() as d:
        corpus = os.path.join(d, "corpus.txt")
        with open(corpus, "w") as f:
            for i in range(4000):
                f.write(f"Line {i}: the {['cat', 'dog', 'fox'][i % 3]} sat on mat {i * 7 % 13}.\n")
        run("prepare", "--input", corpus, "--out", f"{d}/data")
        run("train", "--data", f"{d}/data", "--run-dir", f"{d}/run", "--steps", "30", "--layers", "2", "--dim", "64",
            "--heads", "4", "--experts", "4", "--expert-hidden", "64", "--seq-len", "64", "--batch", "4",
            "--k-strategy", "layer", "--k-min", "1", "--k-max", "2", "--eval-every", "0", "--eval-windows", "2",
            "--device", "cpu")
        run("convert", "--checkpoint", f"{d}/run", "--to", "hf", "--out", f"{d}/hf")
        with open(f"{d}/prompts.txt", "w") as f:
            f.write("\n".join(PROMPTS) + "\n")
        worst = 0.0
        for k in (1, 2):
            run("generate", "--run-dir", f"{d}/run", "--prompts", f"{d}/prompts.txt", "--k", str(k),
                "--logits-out", f"{d}/ref{k}.f64")
            ref = array.array("d")
            with open(f"{d}/ref{k}.f64", "rb") as f:
                ref.frombytes(f.read())
            model = MixtralForCausalLM.from_pretrained(f"{d}/hf", torch_dtype=torch.float32, num_experts_per_tok=k,
                                                       attn_implementation="eager").eval()
            row, diff = 0, 0.0
            with torch.no_grad():
                for p in PROMPTS:
                    ids = torch.tensor([list(p.encode())])
                    logits = model(ids).logits[0].double()
                    n, V = logits.shape
                    want = torch.tensor(ref[row * V:(row + n) * V], dtype=torch.float64).view(n, V)
                    diff = max(diff, (logits - want).abs().max().item())
                    row += n
            print(f"hf_check: K={k} transformers vs anyk: max_abs_diff {diff:.3e} over {row} positions")
            worst = max(worst, diff)
        if worst > 1e-4:
            sys.exit(f"hf_check: FAIL: transformers' logits differ from anyk's by {worst:.3e} (> 1e-4)")
        print("hf_check: pass")


if __name__ == "__main__":
    main()
