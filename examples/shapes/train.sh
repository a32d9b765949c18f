#!/usr/bin/env bash
# The exact commands that train the shipped Shapes model on one GPU (an H100 or H200 took minutes).
# Output: runs/shapes-ldm/pipeline (fp32), then the fp16 copy shipped in plugins/ldmkit_shapes/model/.
set -euo pipefail
ldmkit train examples/shapes/autoencoder.yaml --fresh
ldmkit train examples/shapes/ldm.yaml --fresh
python - <<'PY'
import ldmkit, torch, shutil
pipe = ldmkit.Pipeline.load("runs/shapes-ldm/pipeline")
pipe.save("plugins/ldmkit_shapes/model", dtype=torch.float16)
for log in ("runs/shapes-autoencoder/log.csv", "runs/shapes-ldm/log.csv"):
    shutil.copy(log, "plugins/ldmkit_shapes/model/" + log.split("/")[1] + ".log.csv")
PY
