#!/usr/bin/env bash
# Starts the monitoring stack in the background (`make monitor`): Prometheus with
# deploy/prometheus.yml (it scrapes the learner on 127.0.0.1:9100 and Ray's nodes through
# Ray's service-discovery file), data in runs/prometheus; and Grafana, where it is
# installed, provisioned from deploy/grafana/ (data source + the MaskLAM dashboard).
# `scripts/monitor.sh stop` (`make monitor-stop`) stops what it started.
#
# Both listen on 127.0.0.1 unless MONITOR_ADDRESS says otherwise; on a cluster, forward
# the ports from the head (`ray attach deploy/cluster.yaml -p 3000 -p 9090`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN_DIR=runs/monitor
ADDRESS=${MONITOR_ADDRESS:-127.0.0.1}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
GRAFANA_PORT=${GRAFANA_PORT:-3000}
mkdir -p "$RUN_DIR"

running() {  # running NAME: true if NAME's pid file names a live process
  [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null
}

listening() {  # listening PORT: true if something accepts connections there
  (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null
}

wait_listening() {  # wait_listening NAME PORT: up to 10 s, else show NAME's log and fail
  for _ in $(seq 50); do listening "$2" && return 0; sleep 0.2; done
  echo "monitor: $1 did not start; the end of $RUN_DIR/$1.log:" >&2
  tail -n 5 "$RUN_DIR/$1.log" >&2
  return 1
}

stop() {
  for name in grafana prometheus; do
    if running "$name"; then
      kill "$(cat "$RUN_DIR/$name.pid")" && echo "monitor: stopped $name (pid $(cat "$RUN_DIR/$name.pid"))"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

start_prometheus() {
  if running prometheus; then
    echo "monitor: Prometheus already running (pid $(cat "$RUN_DIR/prometheus.pid"))"
  elif listening "$PROMETHEUS_PORT"; then  # e.g. the cluster head's system service
    echo "monitor: port $PROMETHEUS_PORT is taken, presumably by a Prometheus not started here: using it"
  elif ! command -v prometheus >/dev/null; then
    echo "monitor: Prometheus is not installed (scripts/setup.sh installs Debian's 'prometheus' package)" >&2
    return 1
  else
    prometheus --config.file=deploy/prometheus.yml --storage.tsdb.path=runs/prometheus \
      --web.listen-address="$ADDRESS:$PROMETHEUS_PORT" >"$RUN_DIR/prometheus.log" 2>&1 &
    echo $! >"$RUN_DIR/prometheus.pid"
    wait_listening prometheus "$PROMETHEUS_PORT"
    echo "monitor: started Prometheus (pid $(cat "$RUN_DIR/prometheus.pid"), log $RUN_DIR/prometheus.log)"
  fi
  echo "monitor: Prometheus  http://$ADDRESS:$PROMETHEUS_PORT  (targets: /targets)"
}

start_grafana() {
  local server
  server=$(command -v grafana-server || command -v grafana || true)
  if [ -z "$server" ]; then
    echo "monitor: Grafana is not installed: no dashboard server started. Plot the dashboard's panels" \
         "from Prometheus instead: .venv/bin/python scripts/dashboard_png.py --out docs/dashboard.png"
    return 0
  fi
  if running grafana; then
    echo "monitor: Grafana already running (pid $(cat "$RUN_DIR/grafana.pid"))"
  else
    local args=()
    [ "$(basename "$server")" = grafana ] && args=(server)
    MASKLAM_PROMETHEUS_PORT=$PROMETHEUS_PORT MASKLAM_DASHBOARDS="$ROOT/deploy/grafana/dashboards" \
    GF_PATHS_PROVISIONING="$ROOT/deploy/grafana/provisioning" GF_PATHS_DATA="$ROOT/runs/grafana" \
    GF_PATHS_LOGS="$ROOT/runs/grafana/log" GF_SERVER_HTTP_ADDR="$ADDRESS" GF_SERVER_HTTP_PORT="$GRAFANA_PORT" \
    GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH="$ROOT/deploy/grafana/dashboards/masklam.json" \
      "$server" "${args[@]}" --homepath="${GRAFANA_HOME:-/usr/share/grafana}" >"$RUN_DIR/grafana.log" 2>&1 &
    echo $! >"$RUN_DIR/grafana.pid"
    wait_listening grafana "$GRAFANA_PORT"
    echo "monitor: started Grafana (pid $(cat "$RUN_DIR/grafana.pid"), log $RUN_DIR/grafana.log)"
  fi
  echo "monitor: Grafana     http://$ADDRESS:$GRAFANA_PORT/d/masklam  (first login admin/admin)"
}

case "${1:-start}" in
  start) start_prometheus; start_grafana ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
