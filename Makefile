# Neruba: two commands on a fresh machine.
#   make run   - set up, migrate the embedded SQLite database, load demo data, start web + worker + beat
#   make test  - set up and run the test suite (SQLite; CI runs it again on PostgreSQL and Redis)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint format check clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The lock is the whole resolution (every transitive dependency pinned), so it is
	@# installed as listed: openmeter's metadata asks for cloudevents<2, which it never imports,
	@# while the CloudEvents tests need cloudevents 2.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: install
	@mkdir -p var
	NERUBA_ENV=development $(BIN)/python manage.py migrate --noinput
	NERUBA_ENV=development $(BIN)/python manage.py seed_demo
	NERUBA_ENV=development HOST=$(HOST) PORT=$(PORT) deploy/dev-run.sh

test: install
	NERUBA_ENV=test $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NERUBA_ENV=test $(BIN)/python manage.py makemigrations --check --dry-run

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var/celery var/celerybeat-schedule* .pytest_cache
