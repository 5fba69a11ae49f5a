#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md ("GPU"), one `streamd bench` command each, on a host with an NVIDIA
# GPU and the `train` extra (torch) installed. Each step has its own time limit, so one failing still
# leaves the others' results in $OUT (default out/): gpu.json and .txt, processes-4.json, processes-8.json,
# nvdec.json, frame-cost.json, each with its .txt; 12 minutes at most, all limits together.
#
#   OUT=out bash benchmarks/gpu.sh
#   OUT=out DEVICE=torch-cpu bash benchmarks/gpu.sh   # the same steps on a CPU, small: tries the script out
#
# A host without network access that lacks PyAV, pyzmq or tqdm gets them from wheels put in benchmarks/wheels/
# beforehand, installed into a temporary folder (not under $OUT) for this run only:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d benchmarks/wheels av==18.1.0 pyzmq==27.3.0 tqdm==4.70.1
set -uo pipefail  # no -e: a failed step is reported and the next one still runs
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
status=0

bench() {  # bench NAME SECONDS ARGS...: streamd bench ARGS under a time limit -> $OUT/NAME.json and .txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: streamd bench $* (limit ${limit} s)"
    timeout "$limit" python3 -m streamd bench "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== $name FAILED (124: over the time limit)"; status=1; }
}

if ! python3 -c "import av, zmq, tqdm" 2>/dev/null; then
    site=$(mktemp -d)
    python3 -m pip install --quiet --no-index --no-deps --target "$site" benchmarks/wheels/*.whl \
        || for wheel in benchmarks/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done  # a wheel is a zip
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$DEVICE" = cuda ]; then
    nvidia-smi | tee "$OUT/nvidia-smi.txt"
    four=(--processes 4 --cameras 8); eight=(--processes 8 --cameras 4 8); nvdec=(--cameras 8 32); small=()
else
    four=(--processes 2 --cameras 1); eight=(--processes 2 --cameras 1); nvdec=(--cameras 1); small=(--short)
fi
bench gpu 240 --device "$DEVICE"                                  # the network alone; one process of 8, 32, 64 cameras
bench processes-4 120 --device "$DEVICE" "${four[@]}"             # 4 processes of 8 cameras
bench processes-8 180 --device "$DEVICE" "${eight[@]}"            # 8 processes of 4, then of 8 cameras
bench nvdec 150 --device "$DEVICE" --hwaccel cuda "${nvdec[@]}"   # the cameras decoded on NVDEC
bench frame-cost 45 --frame-cost 1920x1080 "${small[@]}"          # the host CPU's work per 1080p frame
exit $status
