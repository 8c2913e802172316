#!/usr/bin/env bash
# Fresh clone + clean HOME: the README's first command (setup, then `demo --no-tui`), each timed with
# the load average, and whether the demo trained anything (it should not: the sample's SAE ships).
#
#   bash tests/bench/fresh_demo.sh [OUT_DIR]      (run from the repository root; ../shared beside it)
#
# OUT_DIR (default: a temporary folder) gets the clone (its ../shared linked to this checkout's), the
# clean HOME and the logs.
set -u
root=$(pwd)
out=${1:-$(mktemp -d)}
rm -rf "$out/fresh" "$out/home"; mkdir -p "$out/fresh" "$out/home"
git clone -q "$root" "$out/fresh/datadebug"
ln -sfn "$(realpath "$root/../shared")" "$out/fresh/shared"
cd "$out/fresh/datadebug"
export HOME="$out/home" XDG_CACHE_HOME= XDG_CONFIG_HOME=
unset DATADEBUG_CACHE_DIR DATADEBUG_CONFIG_DIR PYTHONPATH
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
s=$(date +%s); bash .ci/setup > "$out/setup.log" 2>&1; echo "setup rc $? in $(( $(date +%s) - s )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
s=$(date +%s); .venv/bin/datadebug demo --no-tui > "$out/demo.out" 2> "$out/demo.err"; rc=$?
echo "demo rc $rc in $(( $(date +%s) - s )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "progress lines about training: $(grep -c training "$out/demo.err")"; head -5 "$out/demo.out"
