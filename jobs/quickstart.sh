#!/usr/bin/env bash
# Quick start on a fresh machine: set-up (if needed), build, tokenize the default corpus into
# token shards, train the model of inputs/runs/quickstart.ini on the CPU (~12 minutes on two
# cores), scoring at every evaluation 300 multiple-choice examples made from the held-out text
# (a sentence's first half: which of four endings is its own; jobs/prepare_choices.py --cloze),
# plot its curves to PNG and print a generated sample.
#
#   jobs/quickstart.sh [--section.key value ...]   (extra options go to triad-train)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

jobs/setup.sh
jobs/build.sh

shards=data/shards/default
if ! ls "$shards"/default_train_*.bin >/dev/null 2>&1; then
  echo "== tokenizing the default corpus into $shards"
  build/triad-tokenize shards --vocab data/vocab/gpt2.tiktoken --out "$shards" \
    --prefix default data/corpus/*.txt
fi

choices=data/choices/default_cloze.bin
if [[ ! -f $choices ]]; then
  echo "== multiple-choice examples from the held-out text: $choices"
  .venv/bin/python jobs/prepare_choices.py "$shards"/default_val_000000.bin "$choices" --cloze 300
fi

echo "== training (inputs/runs/quickstart.ini)"
build/triad-train --config inputs/runs/quickstart.ini --eval.choices "$choices" "$@"

run=runs/quickstart
echo "== plotting"
.venv/bin/python -m analysis.plot_curves "$run" --out "$run/curves.png"

echo "== a sample from the trained model"
build/triad-generate --run "$run" --vocab data/vocab/gpt2.tiktoken --prompt "And the LORD said" \
  --length 80 --temperature 0.8 --top-k 40 --seed 1
