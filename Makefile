# The two commands of the quickstart: `make serve` and `make test`. Each sets itself up.
# `make serve` installs the runtime only (no system package, no dev extra); `make test`, `venv` and `bench` also
# install what the tests need, from the dev extras to the system's PostgreSQL, Redis, promtool and valgrind
# (scripts/bootstrap.sh says which, step by step).
.PHONY: serve test venv bench lint typecheck clean

venv:
	@scripts/bootstrap.sh dev

serve:
	@scripts/bootstrap.sh runtime
	@scripts/serve.sh

# The compiled extensions are required (tests/conftest.py); SLUICE_REQUIRE_COMPILED=0 make test runs the twins alone.
test: venv
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench:
	@scripts/bootstrap.sh dev,bench
	.venv/bin/python bench/run.py

lint: venv
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

typecheck: venv
	.venv/bin/mypy

clean:
	rm -rf build .venv src/sluice/_native/*.so ext/*.c
