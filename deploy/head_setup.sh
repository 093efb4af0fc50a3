#!/usr/bin/env bash
# Monitoring on the head node: Debian's Prometheus with deploy/prometheus.yml, and Grafana
# (from Grafana's own APT repository: it is in neither Debian's nor Ubuntu's) provisioned
# from deploy/grafana/ with the generated MaskLAM dashboard. Run by `ray up` on the head.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

sudo -E apt-get install -y -qq prometheus wget gpg
sudo cp "$ROOT/deploy/prometheus.yml" /etc/prometheus/prometheus.yml
sudo systemctl restart prometheus

sudo mkdir -p /etc/apt/keyrings
wget -qO- https://apt.grafana.com/gpg.key | gpg --dearmor | sudo tee /etc/apt/keyrings/grafana.gpg > /dev/null
echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" |
  sudo tee /etc/apt/sources.list.d/grafana.list > /dev/null
sudo apt-get update -qq && sudo -E apt-get install -y -qq grafana
sudo cp "$ROOT"/deploy/grafana/provisioning/datasources/*.yaml /etc/grafana/provisioning/datasources/
sudo cp "$ROOT"/deploy/grafana/provisioning/dashboards/*.yaml /etc/grafana/provisioning/dashboards/
printf 'MASKLAM_DASHBOARDS=%s\nMASKLAM_PROMETHEUS_PORT=9090\n' "$ROOT/deploy/grafana/dashboards" |
  sudo tee -a /etc/default/grafana-server > /dev/null
sudo systemctl enable grafana-server
sudo systemctl restart grafana-server
