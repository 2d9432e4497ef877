#!/usr/bin/env bash
# One command from a fresh clone to a running demo fleet:
#   builds, starts a controller with the embedded store in ./.demo, enrolls one
#   agent that manages the sandbox ./.demo/root (nothing outside it is touched),
#   applies examples/, and shows the node converged.
#
#   scripts/demo.sh          start (or restart) the demo; safe to run twice
#   scripts/demo.sh stop     stop the controller and the agent
#   scripts/demo.sh clean    stop and delete ./.demo
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
demo="$top/.demo"
port="${BALLAST_DEMO_PORT:-8440}"
bin="$top/target/release"

stop() {
    for name in agent controller; do
        pidfile="$demo/$name.pid"
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            if kill -0 "$pid" 2>/dev/null; then
                kill "$pid"
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            fi
            rm -f "$pidfile"
        fi
    done
}

case "${1:-start}" in
    stop) stop; echo "demo stopped"; exit 0 ;;
    clean) stop; rm -rf "$demo"; echo "demo stopped and $demo removed"; exit 0 ;;
    start) ;;
    *) echo "usage: $0 [start|stop|clean]" >&2; exit 2 ;;
esac

# The etcd client crate compiles etcd's protos with protoc at build time.
if ! command -v protoc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >/dev/null
        apt-get install -y -q protobuf-compiler >/dev/null
    else
        echo "error: protoc is needed to build; install it with: sudo apt-get install protobuf-compiler" >&2
        exit 1
    fi
fi

echo "== building (release)"
cargo build --release --locked -p ballast-controller -p ballast-agent

stop
mkdir -p "$demo/root"
export BALLAST_CONTROLLER="127.0.0.1:$port" BALLAST_DATA_DIR="$demo/controller"

dashboard_port=$((port + 1))
echo "== starting the controller on 127.0.0.1:$port, its dashboard on 127.0.0.1:$dashboard_port (data in $demo/controller)"
"$bin/ballast" serve --listen "127.0.0.1:$port" --dashboard-listen "127.0.0.1:$dashboard_port" \
    >"$demo/controller.log" 2>&1 &
echo $! >"$demo/controller.pid"
for _ in $(seq 100); do
    "$bin/ballast" history >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$demo/controller.pid")" 2>/dev/null; then
        echo "error: the controller exited; see $demo/controller.log:" >&2; tail -5 "$demo/controller.log" >&2; exit 1
    fi
    sleep 0.1
done

if [ ! -f "$demo/agent/node.pem" ]; then
    echo "== enrolling agent demo-web-1 with a one-time token"
    token=$("$bin/ballast" token create --labels role=web --ttl 10m)
    # The token travels in the environment, never on a command line.
    BALLAST_TOKEN=$token "$bin/ballast-agent" enroll --controller "127.0.0.1:$port" \
        --ca-fingerprint "$("$bin/ballast" ca fingerprint)" --name demo-web-1 --state-dir "$demo/agent"
fi

echo "== starting the agent (managing the sandbox $demo/root)"
"$bin/ballast-agent" run --state-dir "$demo/agent" --root "$demo/root" --interval 1m \
    --facts-dir "$demo/facts.d" >"$demo/agent.log" 2>&1 &
echo $! >"$demo/agent.pid"

echo "== applying examples/"
"$bin/ballast" apply -f examples/ --wait --timeout 60s

# On a second run nothing changed, so apply --wait returns at once: wait for
# the restarted agent to report in before showing the fleet.
for _ in $(seq 100); do
    "$bin/ballast" nodes --where name=demo-web-1 -o json | grep -q '"status": "converged"' && break
    sleep 0.2
done

echo "== ballast nodes"
"$bin/ballast" nodes
echo "== the dashboard (a one-time login link; open it in a browser within two minutes)"
"$bin/ballast" dashboard url
cat <<TXT

The demo runs. Try:
  export BALLAST_CONTROLLER=127.0.0.1:$port BALLAST_DATA_DIR=$demo/controller
  $bin/ballast node show demo-web-1       # facts, last run, timeline
  cat $demo/root/etc/ballast-demo/motd    # what the agent wrote
  echo drift > $demo/root/srv/www/index.html   # repaired within a minute
  $bin/ballast history ; $bin/ballast health
  $bin/ballast dashboard url              # another login link to the dashboard
  curl -s --cacert $demo/controller/pki/ca.pem --cert $demo/controller/pki/admin.pem \\
       --key $demo/controller/pki/admin.key https://127.0.0.1:$port/metrics | head
Stop with: scripts/demo.sh stop     Remove everything: scripts/demo.sh clean
Logs: $demo/controller.log $demo/agent.log
TXT
