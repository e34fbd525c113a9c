#!/usr/bin/env bash
# Orders across a crash: examples/intent_bot.py trades against examples/simulated_exchange.py
# (its own process and book, losing 30% of its replies) and is killed with SIGKILL until a
# restart finds orders in doubt; that run reconciles them with the exchange, trades on and
# stops cleanly, and every decision is then checked against the exchange's book.
#
#   bash scripts/intent_demo.sh     state under ./dump/intent-demo (wiped first, kept after)
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
data="${PERSISTKIT_DEMO_DIR:-./dump/intent-demo}"
rm -rf "$data"
mkdir -p "$data"

"$python" examples/simulated_exchange.py --book "$data/exchange.sqlite" --lose-replies 0.3 \
  > "$data/exchange.log" 2>&1 &
exchange=$!
trap 'kill "$exchange" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^listening' "$data/exchange.log" && break
  sleep 0.1
done
port="$(awk '/^listening/ {print $3}' "$data/exchange.log")"
bot=("$python" examples/intent_bot.py --base-dir "$data/bot" --exchange "127.0.0.1:$port"
     --interval 0.02)
echo "== the exchange listens on 127.0.0.1:$port and loses 30% of its replies (it applies the order first)"

# The first line of a run is its restart: wait for it (the bot is up and reconciled).
first_line() {
  for _ in $(seq 1 200); do
    [ -s "$1" ] && head -n 1 "$1" | grep -q '^restored' && break
    sleep 0.05
  done
  head -n 1 "$1"
}

for round in $(seq 1 40); do
  log="$data/run-$round.log"
  "${bot[@]}" > "$log" 2>&1 &
  pid=$!
  restart="$(first_line "$log")"
  echo "== run $round: $restart"
  if [ "$round" -gt 1 ] && ! grep -q ': 0 orders in doubt' <<< "$restart"; then
    sleep 0.2
    kill -TERM "$pid"  # a clean stop this time, after the tick in progress
    wait "$pid"
    tail -n +2 "$log" | tail -n 3
    break
  fi
  sleep "0.$((RANDOM % 3 + 1))"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  echo "   killed with SIGKILL after: $(grep '^tick' "$log" | tail -n 1 | cut -c1-110)"
done

echo "== every decision against the exchange's book"
"${bot[@]}" --check
