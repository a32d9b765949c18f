#!/usr/bin/env bash
# Stage 7 of train.sh: fine-tune the stage-6 model (the shipped folder) so that a class label means exactly
# one object. Until stage 6 the label was the largest object of a scene of one to three objects, so the model
# learned "a picture containing this object"; ldm.yaml now gives scenes of several objects the null label
# (dataset.params.multi_object_label: 18, the label part's null_class), and the label part's weight 2.0 keeps
# about as many label-conditioned samples as before. The rest is stage 6's mix and settings, on scenes stage 6
# did not see (dataset seed 17).
#
# Usage, from the repository root:  bash examples/shapes/stage7.sh DEST [extra `ldmkit train` arguments]
# DEST receives the fp16 pipeline folder and the run's log (ldm-finetune5.log.csv); the run itself writes
# to runs/shapes-ldm-stage7. Works in a checkout where ldmkit is not installed (the plugins' entry points are
# then declared through a dist-info folder on PYTHONPATH). With TIME_LIMIT=SECONDS the run is stopped there
# like Ctrl-C (it saves the step in flight), resumed to the next multiple of 50 steps and exported there.
# Test on a CPU: bash examples/shapes/stage7.sh /tmp/s7 --max-steps 2 --device cpu --set batch_size=8 \
#   --set dataset.preload=64 --set num_workers=0
set -uo pipefail
DEST=${1:?usage: stage7.sh DEST [extra ldmkit train arguments]}
shift
ROOT=$(pwd)
RUN=runs/shapes-ldm-stage7
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"

if ! python3 -c "import importlib.metadata as m; m.distribution('ldmkit')" 2>/dev/null; then
    # entry points without installing: the [project.entry-points.ldmkit] table as a dist-info folder
    EP=$(mktemp -d)/ldmkit-0.1.0.dist-info
    mkdir -p "$EP"
    printf 'Metadata-Version: 2.1\nName: ldmkit\nVersion: 0.1.0\n' >"$EP/METADATA"
    sed -n '/^\[project.entry-points.ldmkit\]/,/^$/p' pyproject.toml \
        | sed -e 's/^\[project.entry-points.ldmkit\]/[ldmkit]/' -e 's/"//g' >"$EP/entry_points.txt"
    export PYTHONPATH="$PYTHONPATH:$(dirname "$EP")"
fi
export LDMKIT_STRICT_PLUGINS=1  # a plugin that fails to load stops the job here
python3 -m ldmkit.cli plugins || exit 1

MODEL=plugins/ldmkit_shapes/model
STAGE7=(--set init_from=$MODEL --set first_stage_weights=$MODEL/first_stage.safetensors
    --set scale_by_std=false --set pipeline.scale_factor=0.227872 --set precision=fp32
    --set batch_size=1024 --set optimizer.lr=2.0e-4 --set optimizer.warmup_steps=100
    --set ema.decay=0.995 --set ema.start=0 --set dataset.preload=300000 --set num_workers=7
    --set checkpoint_every=100 --set log_every=50 --set dataset.params.seed=17 --out-dir $RUN)
mkdir -p $RUN && rm -f $RUN/log.csv
tail -n +1 -F $RUN/log.csv 2>/dev/null &  # the log's rows (every 50 steps) as they are written
TAIL=$!
trap 'kill $TAIL 2>/dev/null' EXIT
LIMIT=()
[ -n "${TIME_LIMIT:-}" ] && LIMIT=(timeout -s INT --kill-after=120 "$TIME_LIMIT")
"${LIMIT[@]}" python3 -m ldmkit.cli train examples/shapes/ldm.yaml --no-progress --fresh --max-steps 200 \
    "${STAGE7[@]}" "$@"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then  # timeout, Ctrl-C, killed
    # stopped early: the checkpoint holds the last finished step; resume (exactly) to the next logged
    # step, a multiple of 50, so the log ends where the run does, and export there
    STEP=$(python3 -c "from ldmkit.training.checkpoint import load_state; print(load_state('$RUN/last.ckpt')['step'])") \
        || exit $rc
    END=$(((STEP + 49) / 50 * 50))
    echo "stage 7 stopped (exit $rc) at step $STEP; resuming to step $END (its --max-steps from now on)"
    python3 -m ldmkit.cli train examples/shapes/ldm.yaml --no-progress "${STAGE7[@]}" "$@" --max-steps "$END" \
        || exit 1
elif [ $rc -ne 0 ]; then
    exit $rc
fi
mkdir -p "$DEST"
python3 -c "import sys, torch, ldmkit; ldmkit.Pipeline.load(sys.argv[1]).save(sys.argv[2], dtype=torch.float16)" \
    "$RUN/pipeline" "$DEST" || exit 1
cp "$RUN/log.csv" "$DEST/ldm-finetune5.log.csv"
ls -l "$DEST"
