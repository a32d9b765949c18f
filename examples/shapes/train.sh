#!/usr/bin/env bash
# The exact commands that produced the shipped Shapes model (plugins/ldmkit_shapes/model), run on one
# NVIDIA H200 from the repository root. Their logs ship beside the weights:
#   autoencoder.log.csv (stage 1), ldm.log.csv (stage 2), ldm-finetune.log.csv (stage 3).
set -euo pipefail

# 1. the KL-f4 autoencoder: 4000 steps of batch 128 (about 3 minutes)
ldmkit train examples/shapes/autoencoder.yaml --fresh --set dataset.preload=100000 --set num_workers=12

# 2. the latent diffusion model: 2696 steps of batch 256 (about 6 minutes; the step count filled the time at hand)
ldmkit train examples/shapes/ldm.yaml --fresh --max-steps 2696 --set dataset.preload=200000 --set num_workers=12 \
  --set checkpoint_every=100000
python -c "import ldmkit, torch; ldmkit.Pipeline.load('runs/shapes-ldm/pipeline').save('runs/shapes-ldm-stage2', dtype=torch.float16)"

# 3. fine-tuning from stage 2 at batch 1024: 1549 steps (about 7 minutes), EMA 0.995, the stage-2 scale factor kept
ldmkit train examples/shapes/ldm.yaml --fresh --max-steps 1549 --set dataset.preload=300000 --set num_workers=14 \
  --set checkpoint_every=100000 --set log_every=50 \
  --set init_from=runs/shapes-ldm-stage2 --set scale_by_std=false --set pipeline.scale_factor=0.227872 \
  --set batch_size=1024 --set optimizer.lr=3.0e-4 --set optimizer.warmup_steps=50 \
  --set ema.decay=0.995 --set ema.start=0

# 4. the shipped copy: fp16 weights (27 MB), the spec, and the logs
python -c "import ldmkit, torch; ldmkit.Pipeline.load('runs/shapes-ldm/pipeline').save('plugins/ldmkit_shapes/model', dtype=torch.float16)"
cp runs/shapes-autoencoder/log.csv plugins/ldmkit_shapes/model/autoencoder.log.csv
