#!/usr/bin/env bash
# The exact commands that produced the shipped Shapes model (plugins/ldmkit_shapes/model), run on NVIDIA H200s
# from the repository root. Their logs ship beside the weights: autoencoder.log.csv (stage 1), ldm.log.csv
# (stage 2), ldm-finetune.log.csv (stage 3), ldm-finetune2.log.csv (stage 4).
# Stages 2 and 3 predate the current ldm.yaml (corner-cell layout tokens, batch 256): their --set lines restore
# the settings they ran with. Stage 4 trains with ldm.yaml's architecture, the shipped one.
set -euo pipefail

# 1. the KL-f4 autoencoder: 4000 steps of batch 128 (about 3 minutes)
ldmkit train examples/shapes/autoencoder.yaml --fresh --set dataset.preload=100000 --set num_workers=12

OLD_LAYOUT="--set pipeline.conditioner.params.parts.layout.params.coordinates=corner-cells"

# 2. the latent diffusion model: 2696 steps of batch 256 (about 6 minutes; the step count filled the time at hand)
ldmkit train examples/shapes/ldm.yaml --fresh --max-steps 2696 --set dataset.preload=200000 --set num_workers=12 \
  --set checkpoint_every=100000 --set batch_size=256 --set optimizer.lr=2.0e-4 --set ema.decay=0.999 \
  --set ema.start=500 $OLD_LAYOUT
python -c "import ldmkit, torch; ldmkit.Pipeline.load('runs/shapes-ldm/pipeline').save('runs/shapes-ldm-stage2', dtype=torch.float16)"

# 3. fine-tuning from stage 2 at batch 1024: 1549 steps (about 7 minutes), EMA 0.995, the stage-2 scale factor kept
ldmkit train examples/shapes/ldm.yaml --fresh --max-steps 1549 --set dataset.preload=300000 --set num_workers=14 \
  --set checkpoint_every=100000 --set log_every=50 $OLD_LAYOUT \
  --set init_from=runs/shapes-ldm-stage2 --set scale_by_std=false --set pipeline.scale_factor=0.227872 \
  --set batch_size=1024 --set optimizer.lr=3.0e-4 --set optimizer.warmup_steps=50 \
  --set ema.decay=0.995 --set ema.start=0
python -c "import ldmkit, torch; ldmkit.Pipeline.load('runs/shapes-ldm/pipeline').save('runs/shapes-ldm-stage3', dtype=torch.float16)"

# 4. the layout part redesigned (one token per box coordinate): fine-tuning from stage 3's fp16 weights with the
#    layout encoder started afresh, float32, batch 1024, 1900 steps (about 7.5 minutes at ~4,400 pictures/s).
#    The first command ended at step 1400 (a wall-clock limit stopped it after that checkpoint); the second
#    resumed it, with a smaller preloaded set, to 1900. Resuming is exact, so this is one run in two parts.
STAGE4="--set init_from=runs/shapes-ldm-stage3 --set init_skip=[conditioner.parts.layout.]
  --set first_stage_weights=runs/shapes-ldm-stage3/first_stage.safetensors
  --set scale_by_std=false --set pipeline.scale_factor=0.227872 --set precision=fp32
  --set batch_size=1024 --set optimizer.lr=2.0e-4 --set optimizer.warmup_steps=100
  --set ema.decay=0.995 --set ema.start=0 --set num_workers=14 --set checkpoint_every=100 --set log_every=50
  --out-dir runs/shapes-ldm-stage4"
ldmkit train examples/shapes/ldm.yaml --fresh --max-steps 1400 $STAGE4 --set dataset.preload=400000
ldmkit train examples/shapes/ldm.yaml --max-steps 1900 $STAGE4 --set dataset.preload=150000

# 5. the shipped copy: fp16 weights (26.5 MB), the spec, and the logs
python -c "import ldmkit, torch; ldmkit.Pipeline.load('runs/shapes-ldm-stage4/pipeline').save('plugins/ldmkit_shapes/model', dtype=torch.float16)"
cp runs/shapes-autoencoder/log.csv plugins/ldmkit_shapes/model/autoencoder.log.csv
cp runs/shapes-ldm-stage4/log.csv plugins/ldmkit_shapes/model/ldm-finetune2.log.csv
