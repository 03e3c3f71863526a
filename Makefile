# The two commands of the README: `make up` runs the exchange, `make test` tests it.
# Both create the virtualenv and install the locked dependencies first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: up test bench lock clean

$(INSTALLED): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

up: $(INSTALLED)
	$(VENV)/bin/exchange up $(if $(REDIS_URL),--redis-url $(REDIS_URL))

test: $(INSTALLED)
	$(VENV)/bin/ruff check services tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(PY) bench/e2e_latency.py

# Re-pin every package after changing pyproject.toml's dependencies.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(VENV)-lock/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .exchange .pytest_cache
