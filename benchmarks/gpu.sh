#!/usr/bin/env bash
# The GPU benchmark (BENCHMARKS.md, "GPU"), made to run the first time on the lent GPU machine: Python 3.12,
# PyTorch CUDA, no PyAV, no pyzmq, no onnxruntime-gpu, no network (/work/shared/docs/GPU.md).
#
# A session runs it with the device tool in one call (each step has its own time limit; on the H200 the
# steps took about 5 minutes together once the machine had started):
#   run  command: bash benchmarks/gpu.sh    carry: ["benchmarks/wheels"]    timeout_s: 600
# benchmarks/wheels/ (git-ignored, never committed) must first be filled here, on a machine with network:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d benchmarks/wheels av==18.1.0 pyzmq==27.3.0 tqdm==4.70.1
# av 18.1.0 is the PyAV the test suite passes with (its cp311-abi3 wheel serves 3.11 and 3.12); tqdm is
# imported by streamd.model.train, which loads the weights. The working tree plus the carried wheels must
# stay under 64 MiB: about 11 MB of tree (two 5.3 MB model files) + 36.7 MB of wheels (av alone 35.8 MB).
#
# Steps, each under its own time limit, so that one failing still leaves the others' results:
#   1. nvidia-smi                                   -> $OUT/nvidia-smi.txt
#   2. the wheels, where av, zmq or tqdm are missing, into a temporary folder (not $OUT: everything under
#      $OUT is copied back) put on PYTHONPATH
#   3. versions, CUDA, and whether PyAV's NVENC/NVDEC work   -> $OUT/probe.json
#   4. streamd bench --device cuda: the network alone (ours and ECCV16, batches of 8, 32, 64 1080p cameras)
#      and the real Pipeline with 8, 32 and 64 1080p cameras at 50 fps -> $OUT/gpu.json and $OUT/gpu.txt
#   5. benchmarks/gpu_study.py: 32 cameras without CUDA graphs, with them, and with the colour work on the GPU,
#      in one process -> $OUT/gpu_study.json, .txt (the bench above has the other camera counts)
#   6. benchmarks/gpu_shards.py (cuda only): the cameras over 1, 4 and 8 processes, and 8 x 8 with OpenCV's pool
#      at one thread -> $OUT/gpu_shards.json, .txt
#
#   OUT=out DEVICE=torch-cpu bash benchmarks/gpu.sh   # the same steps on a CPU, small (about 45 s)
set -uo pipefail  # no -e: a failed step is reported and the next one still runs
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, say how it ended, remember a failure
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    rc=$?
    [ "$rc" -eq 0 ] || { echo "== $name FAILED: exit $rc (124: over the time limit)"; status=1; }
    return 0
}

install_wheels() {  # into $1; a wheel is a zip archive, so unpacking one is the fallback where pip is missing
    python3 -m pip install --quiet --no-index --no-deps --target "$1" benchmarks/wheels/*.whl && return 0
    echo "pip failed or is missing: unpacking the wheels instead"
    for wheel in benchmarks/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$1" || return 1; done
}

[ "$DEVICE" = cuda ] && step nvidia-smi 30 bash -o pipefail -c "nvidia-smi | tee '$OUT/nvidia-smi.txt'"

if ! python3 -c "import av, zmq, tqdm" 2>/dev/null; then
    SITE=$(mktemp -d)
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export -f install_wheels
    step wheels 90 bash -c "install_wheels '$SITE'"
fi

step probe 60 python3 benchmarks/gpu_probe.py "$OUT/probe.json"
step bench 300 bash -o pipefail -c "python3 -m streamd bench --device '$DEVICE' --json '$OUT/gpu.json' 2>&1 \
                                    | tee '$OUT/gpu.txt'"
study_size=""  # the GPU plan's 32 cameras of 1080p; on a CPU, two small ones
[ "$DEVICE" = cuda ] || study_size="--cameras 2 --size 640 360 --fps 25 --seconds 2"
step study 240 bash -o pipefail -c "PYTHONPATH=.\${PYTHONPATH:+:\$PYTHONPATH} python3 benchmarks/gpu_study.py '$OUT' \
                                    --device '${DEVICE#torch-}' $study_size --final-cameras 2>&1 | tee '$OUT/gpu_study.txt'"
[ "$DEVICE" = cuda ] && step shards 240 bash -o pipefail -c "PYTHONPATH=.\${PYTHONPATH:+:\$PYTHONPATH} WARM_UP_S=25 \
                                    python3 benchmarks/gpu_shards.py '$OUT' 2>&1 | tee '$OUT/gpu_shards.txt'"
exit $status
