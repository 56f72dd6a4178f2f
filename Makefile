# The two commands of the README.
.PHONY: run test setup lint

run: setup
	.venv/bin/cti serve --lab --demo

test:
	bash scripts/test.sh

setup:
	bash scripts/setup.sh

lint:
	.venv/bin/ruff check cti pbx ivr sms_gateway tests bench
	.venv/bin/mypy
