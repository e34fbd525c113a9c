#!/usr/bin/env bash
# The README's demo: a live bot on the file backend is killed with SIGKILL in the
# middle of its run, restarted, and what it restores is checked, not assumed.
#
#   bash scripts/demo.sh            state under ./dump/demo (wiped first, kept after)
#
# PERSISTKIT_DEMO_DIR picks another folder; PERSISTKIT_DEMO_PYTHON an existing
# interpreter with persistkit installed (then no venv is created).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PERSISTKIT_DEMO_PYTHON:-}"
if [ -z "$python" ]; then
  echo "== creating the virtualenv (.venv)"
  bash scripts/venv.sh
  python=.venv/bin/python
fi
data="${PERSISTKIT_DEMO_DIR:-./dump/demo}"
rm -rf "$data"
mkdir -p "$data"
log="$data/bot-run-1.log"

echo "== 1. the bot trades in ticks; each tick is one atomic commit (state in $data)"
"$python" examples/live_bot.py --base-dir "$data" --interval 0.05 > "$log" 2>&1 &
bot=$!
# Let it run, then kill it with SIGKILL at some moment inside its loop.
for _ in $(seq 1 100); do
  [ "$(grep -c '^tick' "$log" || true)" -ge 20 ] && break
  sleep 0.1
done
sleep "0.0$((RANDOM % 5))"
kill -9 "$bot"
wait "$bot" 2>/dev/null || true
tail -n 5 "$log"
last_ack="$(grep '^tick' "$log" | tail -n 1 | awk '{print $2}')"
echo "== 2. killed with SIGKILL (kill -9) right after tick ${last_ack:-0} was acknowledged"

echo "== 3. restart: recover, restore, check against what tick ${last_ack:-0} committed"
"$python" examples/live_bot.py --base-dir "$data" --verify "${last_ack:-0}"

echo "== 4. the bot resumes where it stopped and stops cleanly after 5 more ticks"
"$python" examples/live_bot.py --base-dir "$data" --interval 0.05 --ticks 5
