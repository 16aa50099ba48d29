# Two commands matter on a fresh machine: `make demo` and `make test`.
# Everything else here is what they are built from.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
MODELS_DIR ?= build/models
# TFRS needs Keras 2; this must be set before TensorFlow is first imported.
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

PROTO_SRC := protos/movie_retrieval/v1/retrieval_service.proto
PROTO_OUT := movie_retrieval/v1/retrieval_service_pb2.py

.PHONY: help install protos demo test test-slow bench-quality bench-variants bench-serving clean \
	stack lint-proto breaking-proto compose-config

help:
	@echo "make demo           train on MovieLens 100K, serve, print a user's top 10"
	@echo "make test           run the test suite"
	@echo "make test-slow      run the slow soak and load tests too"
	@echo "make bench-quality  retrieval quality against baselines (bench/results/quality.json)"
	@echo "make bench-variants model variants tried and dropped (bench/results/variants.json)"
	@echo "make bench-serving  serving latency and index benchmarks (bench/results/serving.json)"
	@echo "MOVIELENS_DATA_DIR=/path/to/ml-100k uses a local copy instead of downloading."

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed $(PROTO_OUT)

# The Python stubs are generated, never committed or edited.
$(PROTO_OUT): $(PROTO_SRC) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTO_SRC)

protos: $(PROTO_OUT)

demo: install
	MODELS_DIR=$(MODELS_DIR) PY=$(PY) bash scripts/demo.sh

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf build movie_retrieval .pytest_cache

bench-quality: install
	$(PY) -m bench.quality --out bench/results/quality.json

bench-variants: install
	$(PY) -m bench.variants --out bench/results/variants.json

bench-serving: install
	$(PY) -m bench.serving --out bench/results/serving.json

# --- The serving stack and the API contract -------------------------------
# buf comes from npm, pinned, into build/tools (fetched once).
BUF_VERSION := 1.75.0
BUF := build/tools/node_modules/.bin/buf
BUF_STAMP := build/tools/.buf-$(BUF_VERSION)
# `buf breaking` compares the .proto with this tag; see breaking-proto.
API_TAG ?= api/v1.0.0

# The compose topology as local processes on loopback; Ctrl-C stops it.
stack: install
	MODELS_DIR=$(MODELS_DIR) PY=$(PY) bash scripts/stack.sh

$(BUF_STAMP):
	@command -v npm >/dev/null \
		|| { echo "installing buf needs npm" >&2; exit 1; }
	mkdir -p build/tools
	timeout 300 npm install --prefix build/tools --no-audit --no-fund \
		--fetch-retries=1 --fetch-timeout=30000 \
		@bufbuild/buf@$(BUF_VERSION) \
		|| { echo "could not install buf $(BUF_VERSION) from npm" >&2; exit 1; }
	test "$$($(BUF) --version)" = "$(BUF_VERSION)"
	touch $@

lint-proto: $(BUF_STAMP)
	$(BUF) lint

# Compatibility with the last published API. Skipped, saying so, until the
# tag exists (it is created when v1 is published; a shallow clone needs
# `git fetch --tags`).
breaking-proto: $(BUF_STAMP)
	@if git rev-parse -q --verify "refs/tags/$(API_TAG)" >/dev/null; then \
		echo "buf breaking against $(API_TAG)"; \
		$(BUF) breaking --against ".git#tag=$(API_TAG)"; \
	else \
		echo "buf breaking skipped: no git tag $(API_TAG) in this clone"; \
	fi

compose-config:
	docker-compose --profile loadtest config -q
