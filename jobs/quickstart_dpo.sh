#!/usr/bin/env bash
# Preference tuning after the quick start (jobs/quickstart.sh): DPO teaching the quick-start model
# a preference of style. Each pair's prompt is the first half of a sentence of Jane Austen's, its
# own second half the chosen response and the second half of a King James Bible verse the
# rejected one (jobs/prepare_choices.py --cloze N --pairs --others TEXT). Training pairs come from
# five of the six novels and the first 90% of the Bible; the held-out pairs scored at every
# evaluation (eval.preferences) from Persuasion and the Bible's last 10%. The run starts from the
# quick start's final checkpoint, which is also DPO's reference; the plain validation loss and
# the quick start's multiple-choice examples are scored beside the pairs. Then the curves are
# plotted.
#
#   jobs/quickstart_dpo.sh [--section.key value ...]   (extra options go to triad-train)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

start=runs/quickstart/ckpt/step_00000300.h5
if [[ ! -f $start ]]; then
  echo "quickstart_dpo.sh: error: $start does not exist: run jobs/quickstart.sh first" >&2
  exit 1
fi
corpus=data/corpus
prefs=data/preferences
mkdir -p "$prefs"
if [[ ! -f $prefs/austen_over_kjv_val.h5 ]]; then
  cat "$corpus"/austen_{emma,mansfield_park,northanger_abbey,pride_and_prejudice,sense_and_sensibility}.txt \
    > "$prefs/austen_train.txt"
  cp "$corpus/austen_persuasion.txt" "$prefs/austen_val.txt"
  lines=$(wc -l < "$corpus/kjv.txt")
  head -n $((lines * 9 / 10)) "$corpus/kjv.txt" > "$prefs/kjv_train.txt"
  tail -n +$((lines * 9 / 10 + 1)) "$corpus/kjv.txt" > "$prefs/kjv_val.txt"
  for split in train val; do
    if [[ $split == train ]]; then count=4000 seed=2; else count=300 seed=1; fi
    echo "== $count preference pairs ($split): $prefs/austen_over_kjv_$split.h5"
    .venv/bin/python jobs/prepare_choices.py "$prefs/austen_$split.txt" \
      "$prefs/austen_over_kjv_$split.jsonl" --cloze "$count" --seed "$seed" --pairs \
      --others "$prefs/kjv_$split.txt"
    build/triad-tokenize preferences --vocab data/vocab/gpt2.tiktoken --max-tokens 129 \
      --out "$prefs/austen_over_kjv_$split.h5" "$prefs/austen_over_kjv_$split.jsonl"
  done
fi

echo "== DPO from $start"
build/triad-train --config inputs/runs/quickstart.ini --init-from "$start" --run.name quickstart-dpo \
  --data.train '' --data.preferences "$prefs/austen_over_kjv_train.h5" \
  --eval.preferences "$prefs/austen_over_kjv_val.h5" --eval.choices data/choices/default_cloze.bin \
  --train.steps 150 --train.lr 3e-5 --train.warmup_steps 10 --train.dpo_beta 0.1 \
  --eval.every 25 --checkpoint.every 50 --sample.length 0 "$@"

run=runs/quickstart-dpo
echo "== plotting"
.venv/bin/python -m analysis.plot_curves "$run" --out "$run/curves.png"
