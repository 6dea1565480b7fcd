# Snapdesk entry points. Each target creates .venv on first use and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test bench bench-gpu install clean

# The screenshot corpus (tests, benchmarks) is drawn with Debian's Noto CJK and DejaVu fonts.
FONTS := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

$(STAMP): pyproject.toml
	for font in $(FONTS); do test -f $$font || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk fonts-dejavu >/dev/null || \
	  echo "install the fonts-noto-cjk and fonts-dejavu packages (as root) for the screenshot corpus"; break; }; done
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/snapdesk serve

# The whole flow without a GPU or a download: a tiny random-weight model (every answer is handed over).
demo: $(STAMP)
	test -f models/tiny/config.json || $(BIN)/snapdesk tiny-model models/tiny
	$(BIN)/snapdesk kb import prompts/knowledge
	$(BIN)/snapdesk serve --model models/tiny

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# Qwen3-VL with the 8B shapes and random bf16 weights on a CUDA GPU (no download); without one,
# a small configuration that only proves the script works.
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu

clean:
	rm -rf $(VENV) build *.egg-info
