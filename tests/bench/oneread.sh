#!/usr/bin/env bash
# One read per dataset: the first `index` of a new file (its SAE trained first, the residuals the
# training read kept and encoded) against `index` of the same file with that SAE already trained.
# Prints both wall times, their ratio, the load average, and the SAE's timing from its quality.json.
#
#   bash tests/bench/oneread.sh DATA.jsonl [OUT_DIR [INDEX_OPTIONS...]]   (from the repository root)
#
# INDEX_OPTIONS go to both runs (e.g. --skip-invalid for a file with invalid records).
# OUT_DIR (default: a temporary folder) gets a fresh SAE store (its models/ links to the real one,
# so no second float copy of the model) and the two workspaces.
set -euo pipefail
data=$(realpath "$1")
out=${2:-$(mktemp -d)}
shift $(( $# < 2 ? $# : 2 ))
root=$(pwd)
DD="$root/.venv/bin/datadebug"
mkdir -p "$out"; cd "$out"
rm -rf cache ws1 ws2; mkdir -p cache
ln -s "$(PYTHONPATH=$root "$root/.venv/bin/python" -c 'from core import locations; print(locations.models_dir())')" cache/models
export DATADEBUG_CACHE_DIR="$out/cache" DATADEBUG_PROGRESS=lines
key="smollm2-135m-l15-topk@$(sha256sum "$data" | cut -c1-8)"
echo "commit $(git -C "$root" rev-parse --short HEAD), $(basename "$data"), start $(date -u +%FT%TZ)"
s=$(date +%s); "$DD" index "$data" -w ws1 "$@" 2> first.err | tail -1; a=$(( $(date +%s) - s ))
echo "first index, SAE trained first: $a s (load $(cut -d' ' -f1-3 /proc/loadavg))"
s=$(date +%s); "$DD" index "$data" -w ws2 --sae "$key" "$@" 2> second.err | tail -1; b=$(( $(date +%s) - s ))
echo "index with the SAE trained: $b s (load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$a" "$b" "cache/saes/$key/quality.json" <<'PY'
import json, sys
a, b, q = int(sys.argv[1]), int(sys.argv[2]), json.load(open(sys.argv[3]))
t = q["timing"]
print(f"ratio {a / b:.2f}; the SAE: read {t['activation_tokens']:,} tokens in {t['collect_seconds']:.0f} s, "
      f"trained in {q['train_seconds']:.0f} s; FVU {q['fvu']:.3f}, L0 {q['l0']:.0f}, dead {q['dead_fraction']:.1%}")
PY
