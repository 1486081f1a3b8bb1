#!/usr/bin/env bash
# Scores of the enrol -> verify -> revoke -> verify workflow on the sample photos (docs/method.md "Known limits"):
# same key, old key after revocation, new key, and another person under the stolen new key.
#   bash lab/probes/workflow_scores.sh [STEPS [--set KEY=VALUE ...]]   (default 15, as tests/test_workflow_cli.py;
#   needs `make install`), e.g. `bash lab/probes/workflow_scores.sh 50 --set protect.loss.w_anchor=10000`
set -euo pipefail
STEPS=${1:-15}
shift $(( $# > 0 ? 1 : 0 ))
F=${FACEANONYMIXER:-.venv/bin/faceanonymixer}
S=$(${PYTHON:-.venv/bin/python} -c "from faceanonymixer.registry import data_dir; print(data_dir() / 'samples')")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT      # keys and the gallery are throw-away
set -- --set protect.optim.steps="$STEPS" "$@"
$F keygen --out "$W/k1.key" >/dev/null
$F keygen --out "$W/k2.key" >/dev/null
$F enrol obama "$S/obama.jpg" "$S/obama2.jpg" --key "$W/k1.key" --gallery "$W/g.db" "$@" >/dev/null
echo "same key:";  $F verify obama "$S/obama3.jpg" --key "$W/k1.key" --gallery "$W/g.db" "$@" || true
$F revoke obama "$S/obama.jpg" "$S/obama2.jpg" --gallery "$W/g.db" --new-key "$W/k2.key" "$@" >/dev/null
echo "old key after revocation:"; $F verify obama "$S/obama3.jpg" --key "$W/k1.key" --gallery "$W/g.db" "$@" || true
echo "new key:"; $F verify obama "$S/obama3.jpg" --key "$W/k2.key" --gallery "$W/g.db" "$@" || true
echo "another person (biden) under the stolen new key:"
$F verify obama "$S/biden.jpg" --key "$W/k2.key" --gallery "$W/g.db" "$@" || true
