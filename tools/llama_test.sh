#!/usr/bin/env bash
# The real-engine test of `anyk convert --to gguf` (docs/elsewhere.md): llama.cpp itself loads an
# anyk model and must compute what anyk computes.
#
#   bash tools/llama_test.sh          (after the build; BUILD_DIR=build-x to use another build)
#
# 1. Installs llama.cpp as the npm package node-llama-cpp@3.21.1 (prebuilt libllama and CPU ggml
#    backends for linux-x64, and llama.cpp's source as a git bundle) into a cache outside the
#    repository, $ANYK_LLAMA_CACHE (default ~/.cache/anyk-llama), unless it is there already;
#    compiles tools/llama_check.cpp against that llama.h and links it to that libllama.
# 2. Trains a tiny elastic model (E = 8, K in [1,4]) on the fortunes corpus and exports it as f32
#    GGUF with --k 2, and once more without --k (the trained K, 4).
# 3. Next-token logits at every position of 3 fixed prompts equal anyk's (`anyk generate
#    --logits-out`) at K = 1, 2, 4 and 8, max |diff| <= 1e-3 and the same argmax everywhere: K = 2
#    and 4 as exported, K = 1, 4 and 8 through llama.cpp's metadata override
#    (llama.expert_used_count); the K = 2 file against anyk's K = 1 logits must fail (K matters).
#    llama.cpp's tokenizer must give anyk's byte ids for every prompt, and for 20 varied lines
#    (spaces, punctuation, digits, non-ASCII) ids that its detokenizer turns back into the line.
# 4. Greedy generation of 64 tokens after 2 prompts is identical to `anyk generate --temperature 0`,
#    K set by the export (2 and 4) and by the override (1 and 4).
# 5. Reports, without a bound, llama.cpp's defaults (f16 KV cache, flash attention auto) and an
#    f16 GGUF against anyk.
# 6. A SentencePiece model (prepare --tokenizer sp --vocab-size 1000, 60 steps): llama.cpp's tokens
#    of the 20 varied lines and the 3 prompts equal anyk's (`anyk tokenize`) and detokenize back;
#    next-token logits at K = 2 equal anyk's (<= 1e-3, same argmax).
# Any failure, the install's included, ends the test with "llama_test: FAIL: reason" and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
BUILD=${BUILD_DIR:-build}
ANYK=$PWD/$BUILD/anyk
CACHE=${ANYK_LLAMA_CACHE:-$HOME/.cache/anyk-llama}
VERSION=3.21.1
TOL=1e-3
fail() {
  echo "llama_test: FAIL: $*" >&2
  exit 1
}
step() { echo "llama_test: [$((SECONDS - t0)) s] $*"; }

[ -x "$ANYK" ] || fail "$ANYK is not built (cmake --build $BUILD --target anyk)"
[ "$(uname -sm)" = "Linux x86_64" ] || fail "node-llama-cpp's prebuilt llama.cpp used here is for linux-x64, not $(uname -sm)"
for tool in npm git g++; do
  command -v $tool >/dev/null || fail "$tool not found (needed to install and build against llama.cpp)"
done

# --- 1. llama.cpp from npm, into the cache --------------------------------------------------------
PKG=$CACHE/node_modules/node-llama-cpp
if ! grep -q "\"version\": \"$VERSION\"" "$PKG/package.json" 2>/dev/null; then
  step "installing node-llama-cpp@$VERSION into $CACHE (about 35 s, 730 MB)"
  mkdir -p "$CACHE" || fail "cannot create the cache directory $CACHE"
  [ -f "$CACHE/package.json" ] || echo '{"private": true}' >"$CACHE/package.json"
  # --ignore-scripts: the prebuilt binaries come as an optional dependency; its postinstall would
  # only look for them (or try to build llama.cpp from source).
  if ! (cd "$CACHE" && npm i -E --ignore-scripts --no-audit --no-fund "node-llama-cpp@$VERSION" >install.log 2>&1); then
    fail "npm i -E node-llama-cpp@$VERSION in $CACHE failed: $(grep -m 2 'npm error' "$CACHE/install.log" | tr '\n' ' ')(all: $CACHE/install.log)"
  fi
fi
BINS=$CACHE/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
LIBLLAMA=$(ls "$BINS"/libllama.*so 2>/dev/null | head -n 1 || true)
LIBGGML=$(ls "$BINS"/libggml.*so 2>/dev/null | head -n 1 || true)
[ -n "$LIBLLAMA" ] && [ -n "$LIBGGML" ] && [ -f "$BINS/libggml-base.so" ] ||
  fail "no libllama/libggml under $BINS (node-llama-cpp@$VERSION's @node-llama-cpp/linux-x64 is missing; see $CACHE/install.log)"
# llama.h and the ggml headers from the source bundle (the headers of the binaries' build).
SRC=$CACHE/llama.cpp-headers
if [ ! -f "$SRC/include/llama.h" ] || [ ! -f "$SRC/ggml/include/ggml-backend.h" ]; then
  rm -rf "$SRC" "$CACHE/llama.cpp.git"
  mkdir -p "$SRC"
  { git clone -q --bare "$PKG/llama/gitRelease.bundle" "$CACHE/llama.cpp.git" 2>/dev/null &&
    git --git-dir="$CACHE/llama.cpp.git" archive HEAD include ggml/include | tar -x -C "$SRC"; } ||
    fail "cannot unpack llama.h from llama.cpp's source bundle $PKG/llama/gitRelease.bundle"
fi
WORK=$(mktemp -d /tmp/anyk-llama-test.XXXXXX)
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "llama_test: keeping $WORK"; fi
g++ -std=c++17 -O1 -o "$WORK/llama_check" tools/llama_check.cpp -I"$SRC/include" -I"$SRC/ggml/include" \
  "$LIBLLAMA" "$LIBGGML" "$BINS/libggml-base.so" -Wl,-rpath,"$BINS" ||
  fail "tools/llama_check.cpp does not compile against $SRC/include/llama.h"
export LLAMA_BACKEND_DIR=$BINS  # the CPU backends (libggml-cpu-*.so) are loaded from here
CHECK=$WORK/llama_check
step "llama.cpp ready: $(basename "$LIBLLAMA") from node-llama-cpp@$VERSION (llama.cpp $(git --git-dir="$CACHE/llama.cpp.git" log -1 --format=%h))"

# --- 2. a tiny model and its exports --------------------------------------------------------------
cd "$WORK"
"$ANYK" prepare --input /usr/share/games/fortunes --out data >prepare.log 2>&1 || fail "anyk prepare: $(tail -n 1 prepare.log)"
"$ANYK" train --data data --run-dir run --steps 400 --layers 2 --dim 64 --heads 4 --experts 8 --expert-hidden 64 \
  --seq-len 128 --batch 8 --lr 0.01 --k-strategy layer --k-min 1 --k-max 4 --eval-every 0 --eval-windows 8 \
  --log-every 100 --threads 2 >train.log 2>&1 || fail "anyk train: $(tail -n 2 train.log)"
step "trained: $(grep -E '^step +400' train.log | cut -d'|' -f1-2)"
"$ANYK" convert --checkpoint run --to gguf --k 2 --out k2.gguf >/dev/null 2>&1 || fail "anyk convert --to gguf --k 2 failed"
"$ANYK" convert --checkpoint run --to gguf --out default.gguf >/dev/null 2>&1 || fail "anyk convert --to gguf failed"
"$ANYK" convert --checkpoint run --to gguf --k 2 --dtype f16 --out f16.gguf >/dev/null 2>&1 ||
  fail "anyk convert --to gguf --dtype f16 failed"

# --- 3. logits ------------------------------------------------------------------------------------
printf '%b\n' 'The quick brown fox jumps over the lazy dog, 1234567890 times.' \
  'Q: What did the "fortune" say?  A: {nothing}; [try again] <later> ~ 50% off!' \
  'Caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9: UTF-8 bytes, tab\there, and a backslash \\ end.' >logit_prompts.txt
for k in 1 2 4 8; do
  "$ANYK" generate --run-dir run --prompts logit_prompts.txt --k $k --logits-out ref$k.f64 --threads 2 2>/dev/null ||
    fail "anyk generate --logits-out at K = $k failed"
done
logits() {  # label, then llama_check arguments after the mode
  local label=$1 out
  shift
  out=$("$CHECK" "$1" logits logit_prompts.txt "${@:2}" 2>&1) || fail "$label: $(echo "$out" | tail -n 1)"
  echo "llama_test: $label: $(echo "$out" | grep max_abs_diff)"
}
logits "K=1 (override)" k2.gguf ref1.f64 --k 1 --tol $TOL
logits "K=2 (export)  " k2.gguf ref2.f64 --tol $TOL
logits "K=4 (override)" k2.gguf ref4.f64 --k 4 --tol $TOL
logits "K=4 (export, the trained K)" default.gguf ref4.f64 --tol $TOL
logits "K=8 (override)" k2.gguf ref8.f64 --k 8 --tol $TOL
if "$CHECK" k2.gguf logits logit_prompts.txt ref1.f64 --tol $TOL >wrong.log 2>&1; then
  fail "the K=2 export matches anyk's K=1 logits: the check cannot tell K apart"
fi
echo "llama_test: K=2 export against anyk's K=1 (must differ): $(grep max_abs_diff wrong.log)"

# llama.cpp's tokenizer on 20 varied lines (valid UTF-8: spaces, tabs, punctuation, digits,
# contractions, accents, other scripts, emoji, a carriage return): ids = bytes, and back.
printf '%b\n' 'plain ascii' '  two leading spaces' 'trailing spaces   ' 'tabs\there\t\tand there' \
  "don't, it's, we'll, I'd, you're" '3.14159 + 2,718 = 1e10; 1,000,000 (100%)' '!@#$%^&*()_+-=[]{}|;:,.<>?/~`' \
  '"quoted" and \x27single\x27 and `back`' 'caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e, na\xc3\xafve' \
  '\xc3\x9cbergr\xc3\xb6\xc3\x9fe Stra\xc3\x9fe' '\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80' \
  '\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xe4\xb8\xad\xe6\x96\x87' '\xce\xb1\xce\xb2\xce\xb3 \xe2\x88\x91 \xe2\x88\x9e \xe2\x89\xa0' \
  'emoji \xf0\x9f\x98\x80\xf0\x9f\x8e\x89 end' 'e\xcc\x81 combining accent' 'carriage\rreturn' \
  'https://example.com/a?b=c&d=e#f' 'if (x < 10) { y = x * 2; }  // code' '		-- Mark Twain' \
  'UPPER lower MiXeD 123abc abc123' >tok_lines.txt
out=$("$CHECK" k2.gguf tokenize tok_lines.txt - 2>&1) || fail "llama.cpp tokenizer: $(echo "$out" | tail -n 1)"
echo "llama_test: $(echo "$out" | grep '^tokenize')"

# --- 4. greedy generation -------------------------------------------------------------------------
printf '%b\n' 'Bad luck' '\t\t-- Mark Tw' >gen_prompts.txt  # the tiny model's texts differ by K after these
gen() {  # K, gguf, label, llama_check options
  local k=$1 file=$2 label=$3
  shift 3
  "$ANYK" generate --run-dir run --prompts gen_prompts.txt --k $k --temperature 0 --max-new 64 --threads 2 \
    >anyk_$k.txt 2>/dev/null || fail "anyk generate --k $k failed"
  "$CHECK" $file generate gen_prompts.txt 64 "$@" >llama_${k}_$label.txt 2>llama_gen.err ||
    fail "llama.cpp generation ($label K=$k): $(tail -n 1 llama_gen.err)"
  if ! cmp -s anyk_$k.txt llama_${k}_$label.txt; then
    diff anyk_$k.txt llama_${k}_$label.txt >&2 || true
    fail "greedy text at K=$k ($label) differs between anyk (<) and llama.cpp (>)"
  fi
  echo "llama_test: generation K=$k ($label): identical, $(($(wc -c <anyk_$k.txt))) bytes"
}
gen 2 k2.gguf export
gen 4 default.gguf export
gen 1 k2.gguf override --k 1
gen 4 k2.gguf override --k 4
cmp -s anyk_1.txt anyk_4.txt && echo "llama_test: note: the texts at K=1 and K=4 are the same" ||
  echo "llama_test: the texts at K=1 and K=4 differ (K changes the generation)"
sed 's/^/    /' anyk_4.txt

# --- 5. reported, not bounded ---------------------------------------------------------------------
for v in "f16 KV cache, flash attention auto (llama.cpp's defaults):--kv f16 --fa auto" \
  "f16 KV cache, flash attention off:--kv f16" "f32 KV cache, flash attention auto:--fa auto"; do
  echo "llama_test: K=2 with ${v%%:*}: $("$CHECK" k2.gguf logits logit_prompts.txt ref2.f64 ${v#*:} --tol -1 2>/dev/null | grep max_abs_diff)"
done
echo "llama_test: K=2 f16 GGUF (f32 KV cache): $("$CHECK" f16.gguf logits logit_prompts.txt ref2.f64 --tol -1 2>/dev/null | grep max_abs_diff)"

# --- 6. a SentencePiece model ---------------------------------------------------------------------
# prepare --tokenizer sp (a 1000-piece BPE model of the training split), a few steps of a small
# model (the point is the tokenizer), an f32 export carrying the pieces and scores: llama.cpp's
# tokens of the 20 varied lines and of the 3 logit prompts are anyk's (`anyk tokenize`), its
# detokenizer gives each line back, and the logits at K = 2 are anyk's (<= 1e-3, same argmax).
"$ANYK" prepare --input /usr/share/games/fortunes --out data_sp --tokenizer sp --vocab-size 1000 >prepare_sp.log 2>&1 ||
  fail "anyk prepare --tokenizer sp: $(tail -n 1 prepare_sp.log)"
step "prepared: $(grep 'tokenizer:' prepare_sp.log | sed 's/^prepare: //')"
"$ANYK" train --data data_sp --run-dir run_sp --steps 60 --layers 2 --dim 64 --heads 4 --experts 4 --expert-hidden 64 \
  --seq-len 64 --batch 8 --lr 0.01 --k-strategy layer --k-min 1 --k-max 4 --eval-every 0 --eval-windows 4 \
  --log-every 60 --threads 2 >train_sp.log 2>&1 || fail "anyk train --data data_sp: $(tail -n 2 train_sp.log)"
"$ANYK" convert --checkpoint run_sp --to gguf --k 2 --out sp.gguf >convert_sp.log 2>&1 ||
  fail "anyk convert --to gguf (SentencePiece): $(tail -n 1 convert_sp.log)"
"$ANYK" tokenize --tokenizer run_sp/tokenizer.model --input tok_lines.txt >tok_ids.txt || fail "anyk tokenize failed"
out=$("$CHECK" sp.gguf tokenize tok_lines.txt tok_ids.txt 2>&1) || fail "llama.cpp SentencePiece tokenizer: $(echo "$out" | tail -n 1)"
echo "llama_test: SentencePiece $(echo "$out" | grep '^tokenize') ($(awk '{n += NF} END {print n}' tok_ids.txt) ids)"
"$ANYK" tokenize --tokenizer run_sp/tokenizer.model --input logit_prompts.txt >logit_ids.txt || fail "anyk tokenize failed"
"$ANYK" generate --run-dir run_sp --prompts logit_prompts.txt --k 2 --logits-out sp_ref2.f64 --threads 2 2>/dev/null ||
  fail "anyk generate --logits-out (SentencePiece) failed"
logits "SentencePiece K=2 (export)" sp.gguf sp_ref2.f64 --ids logit_ids.txt --tol $TOL
echo "llama_test: PASS in $((SECONDS - t0)) s"
