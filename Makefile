.PHONY: setup test test-slow test-faults lint results-index
setup:
	scripts/setup.sh
lint:
	.venv/bin/ruff check .
test: lint
	.venv/bin/pytest -q -m "not slow and not faults"
# Long-document tests: minutes each on a 2-core CPU, kept out of CI's 30-minute budget.
test-slow:
	.venv/bin/pytest -q -m slow
# Fault suite on the real stack (workers SIGKILLed, racing, Redis restarted, receiver down): minutes.
test-faults:
	.venv/bin/pytest -q -m faults
# bench/results/README.md from the result files; --archive first moves superseded runs to bench/results/archive/.
results-index:
	PYTHONPATH=. .venv/bin/python -m bench.index
