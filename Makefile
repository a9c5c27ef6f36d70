.PHONY: setup test lint
setup:
	scripts/setup.sh
lint:
	.venv/bin/ruff check .
test: lint
	.venv/bin/pytest -q
