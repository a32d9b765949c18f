#!/usr/bin/env bash
# The paper experiment on one GPU, from the repository root of a plain checkout (ldmkit need not be installed):
#   OUT=runs/paper bash examples/paper/gpu_job.sh            (TINY=1 for the tiny CPU version: DEVICE=cpu)
# It writes OUT/results.json (rewritten as results arrive), OUT/results.md, OUT/run.log (the whole log) and
# OUT/classifier.safetensors: the Shapes classifier behind the Frechet distance, trained first on the same device
# (about 20 s on a GPU; if that fails, the shipped classifier is used and results.json says so). With
# CLASSIFIER_WEIGHTS=shipped the shipped classifier (the same recipe, trained on the CPU) scores the run instead.
set -uo pipefail
OUT=${OUT:-runs/paper}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"

# The built-in plugins are found through the 'ldmkit' entry points of the installed distribution. Without an
# installed ldmkit: install this checkout in editable mode, or (no pip, no setuptools) describe the entry points
# in a metadata folder on the path, which is all that plugin discovery reads.
has_plugins() { "$PY" -c "from importlib import metadata as m; import sys; sys.exit(not any(e.name == 'shapes' for e in m.entry_points(group='ldmkit')))"; }
if ! has_plugins; then
  "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.log" 2>&1 || true
fi
if ! has_plugins; then
  META=$(mktemp -d)
  "$PY" - "$META" <<'EOF'
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = Path(sys.argv[1]) / f"ldmkit-{project['version']}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ldmkit\nVersion: {project['version']}\n")
groups = project["entry-points"]
text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
(info / "entry_points.txt").write_text(text)
EOF
  export PYTHONPATH="$PYTHONPATH:$META"
fi
has_plugins || { echo "the ldmkit plugins cannot be found" >&2; exit 2; }
"$PY" -m ldmkit.cli plugins 2>&1 | tee "$OUT/run.log"
nvidia-smi 2>&1 | head -15 | tee -a "$OUT/run.log"
CLS_ARGS="--train 24000 --test 4000 --epochs 8"
[ -n "${TINY:-}" ] && CLS_ARGS="--train 64 --test 32 --epochs 1"
CLASSIFIER=()
if [ "${CLASSIFIER_WEIGHTS:-}" = shipped ]; then
  echo "scoring with the shipped Shapes classifier" | tee -a "$OUT/run.log"
elif "$PY" scripts/train_shapes_classifier.py --device "$DEVICE" $CLS_ARGS --out "$OUT/classifier.safetensors" 2>&1 \
    | tee -a "$OUT/run.log" && [ -f "$OUT/classifier.safetensors" ]; then
  CLASSIFIER=(--classifier "$OUT/classifier.safetensors")
fi
"$PY" -m ldmkit.cli paper run --out "$OUT" --device "$DEVICE" ${TINY:+--tiny} "${CLASSIFIER[@]}" 2>&1 | tee -a "$OUT/run.log"
