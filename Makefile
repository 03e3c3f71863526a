# The two commands of the README: `make up` runs the exchange, `make test` tests it.
# Both create the virtualenv and install the locked dependencies first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: up test bench lock clean chromium prometheus

$(INSTALLED): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# The trading page's browser modules, exactly as package-lock.json pins them.
NPM_STAMP := node_modules/.package-lock.json
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Debian's Chromium for the browser tests (never a downloaded build).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's Prometheus: `make up` runs it over the services, with the alert rules of
# observability/; its promtool checks and unit-tests those rules in `make test`.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		prometheus; systemctl disable --now prometheus 2>/dev/null || true; }

up: $(INSTALLED) $(NPM_STAMP) prometheus
	$(VENV)/bin/exchange up $(if $(REDIS_URL),--redis-url $(REDIS_URL))

test: $(INSTALLED) $(NPM_STAMP) chromium prometheus
	$(VENV)/bin/ruff check services tests bench observability
	$(PY) -m pytest $(PYTEST_ARGS)

# `make bench` runs every benchmark, `make bench BENCH=engine_book` one; each prints its
# figures and writes bench/results/<name>.json.
BENCHES := engine_book engine_redis e2e_latency wait_cost ws_fanout scaling rest_capacity plots
bench: $(INSTALLED)
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	for name in $(or $(BENCH),$(BENCHES)); do $(PY) bench/$$name.py || exit 1; done

# Re-pin every package after changing pyproject.toml's dependencies.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(VENV)-lock/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .exchange .pytest_cache node_modules test-artifacts
