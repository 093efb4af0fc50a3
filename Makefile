# Shortcuts; each target runs a script or module that also works on its own.
PYTHON ?= .venv/bin/python

.PHONY: monitor monitor-stop dashboard dashboard-png

# Prometheus (deploy/prometheus.yml, data in runs/prometheus) and Grafana where installed.
monitor:
	@scripts/monitor.sh start

monitor-stop:
	@scripts/monitor.sh stop

# Regenerate deploy/grafana/dashboards/masklam.json from deploy/grafana/dashboard.py.
dashboard:
	@$(PYTHON) deploy/grafana/dashboard.py

# The dashboard's panels plotted from a running Prometheus (where Grafana cannot run).
dashboard-png:
	@$(PYTHON) scripts/dashboard_png.py --out docs/dashboard.png
