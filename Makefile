.PHONY: setup test test-slow lint
setup:
	scripts/setup.sh
lint:
	.venv/bin/ruff check .
test: lint
	.venv/bin/pytest -q -m "not slow"
# Long-document tests: minutes each on a 2-core CPU, kept out of CI's 30-minute budget.
test-slow:
	.venv/bin/pytest -q -m slow
