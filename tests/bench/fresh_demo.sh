#!/bin/bash
# Fresh clone + clean HOME: the README's first command (setup + demo), timed, with the load average.
# Usage: bash tests/bench/fresh_demo.sh (clones /work/main into /work/fresh; edit the paths for your box).
set -u
rm -rf /work/fresh /tmp/freshhome; mkdir -p /work/fresh /tmp/freshhome
git clone -q /work/main /work/fresh/datadebug
ln -sfn /work/shared /work/fresh/shared
cd /work/fresh/datadebug
export HOME=/tmp/freshhome XDG_CACHE_HOME= XDG_CONFIG_HOME=
unset DATADEBUG_CACHE_DIR DATADEBUG_CONFIG_DIR PYTHONPATH
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
s=$(date +%s); bash .ci/setup > /work/runs/fresh.setup.log 2>&1; echo "setup rc $? in $(( $(date +%s) - s )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
s=$(date +%s); .venv/bin/datadebug demo --no-tui > /work/runs/fresh.demo.out 2> /work/runs/fresh.demo.err; rc=$?
echo "demo rc $rc in $(( $(date +%s) - s )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -c "training" /work/runs/fresh.demo.err; head -5 /work/runs/fresh.demo.out
