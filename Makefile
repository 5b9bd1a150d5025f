# The two commands of the quickstart: `make serve` and `make test`. Each sets itself up.
.PHONY: serve test venv bench lint typecheck clean

venv:
	@scripts/bootstrap.sh dev

serve: venv
	@scripts/serve.sh

test: venv
	SLUICE_REQUIRE_COMPILED=$${CI:+1} .venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench:
	@scripts/bootstrap.sh dev,bench
	.venv/bin/python bench/run.py

lint: venv
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

clean:
	rm -rf build .venv src/sluice/_native/*.so ext/*.c
