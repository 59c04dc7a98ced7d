#!/usr/bin/env bash
# One-shot GPU benchmark session: everything docs/performance.md asks of a lent GPU, in one call.
#
#   bash benchmarks/gpu_session.sh stylegan2   # StyleGAN2-ADA 64/128/256, eager then torch.compile
#   bash benchmarks/gpu_session.sh diffusion   # ddpm_64 fp32 / bf16 / bf16+compile, sampling speed-up
#   bash benchmarks/gpu_session.sh all         # both (may not fit one 10-minute call: the deadline cuts the rest)
#   bash benchmarks/gpu_session.sh cpu-smoke   # the same commands with tiny budgets on the CPU (check the script)
#
# Run from the repository root. It installs the wheels of .whl/ (benchmarks/fetch_gpu_wheels.sh makes them)
# and raresynth itself into /tmp/site, prints the machine and versions, then runs benchmarks/throughput.py and
# benchmarks/sampling.py, each command under its own timeout and all of them under one deadline, and goes on
# after a failure. Into $OUT it writes three files: session-PART.log (everything), results-PART.json (all rows)
# and summary-PART.txt (one line per row, with the target and whether it is met), rewritten after every step.
#
# Environment (defaults): OUT (/tmp/gpu_out), PYTHON (python3), GPU_SESSION_WHEELS (.whl),
# GPU_SESSION_SITE (/tmp/site), GPU_SESSION_DEADLINE (510: seconds from the start after which steps are cut or
# skipped, so that a part ends by about 9 minutes), GPU_SESSION_SMOKE (1 with cpu-smoke: tiny budgets, no GPU),
# GPU_SESSION_STEPS (run only these steps, e.g. "sg256_compile ddpm64_bf16_compile": a follow-up call for what
# a deadline cut; the summary prints the line), GPU_SESSION_LINK_INSTALL (1: link raresynth into the site
# instead of building it, the fallback; for testing it).

set -u

PART=${1:-}
SMOKE=${GPU_SESSION_SMOKE:-0}
case "$PART" in
    stylegan2|diffusion|all) ;;
    cpu-smoke) SMOKE=1 ;;
    *) echo "usage: bash benchmarks/gpu_session.sh stylegan2|diffusion|all|cpu-smoke" >&2; exit 2 ;;
esac

OUT=${OUT:-/tmp/gpu_out}
PY=${PYTHON:-python3}
WHEELS=${GPU_SESSION_WHEELS:-.whl}
SITE=${GPU_SESSION_SITE:-/tmp/site}
WORK=/tmp/gpu_session            # per-step logs and JSON: $OUT keeps only three files
if [ "$SMOKE" = 1 ]; then
    DEADLINE=${GPU_SESSION_DEADLINE:-7200}
    export CUDA_VISIBLE_DEVICES=""
else
    DEADLINE=${GPU_SESSION_DEADLINE:-510}
fi
export PYTHONUNBUFFERED=1

# --- what each step runs ---------------------------------------------------------------------------------------
# Budgets for one H100, chosen so that a part ends well inside 9 minutes even at 3x the targets of
# docs/performance.md (StyleGAN2 2 / 3.5 / 8 s/kimg at 64 / 128 / 256 px; ddpm 1000 img/s at 64 px):
# StyleGAN2 ticks of 16 steps (one lazy R1 pass, four path-length passes each), 2 warm-up + 4 measured ticks;
# ddpm ticks of 20 steps of 64, 2 warm-up + 4 measured; each compiled row runs after all eager ones.
WARMUP=(--warmup-ticks 2)
SG64=(benchmarks/configs/stylegan2_ada_64.yaml schedule.tick_kimg=0.512 budget.kimg=3.072)    # batch 32
SG128=(benchmarks/configs/stylegan2_ada_128.yaml schedule.tick_kimg=0.512 budget.kimg=3.072)  # batch 32
SG256=(benchmarks/configs/stylegan2_ada_256.yaml schedule.tick_kimg=0.256 budget.kimg=1.536)  # batch 16
DDPM64=(benchmarks/configs/ddpm_64.yaml schedule.tick_kimg=1.28 budget.kimg=7.68)             # batch 64
SAMPLING=(--preset 64 --resolution 64 --channels 3 --n 64 --sampler ddpm:1000 --sampler ddim:50 --sampler dpmsolver++:25)
# torch.compile rows: the stylegan2_ada backend compiles with dynamic=False (a dynamic-shape recompile of its
# backward failed in Inductor on torch 2.14.1, "Cannot convert expression to float"); the variable below asks
# the same of every other compiled module (it exists since torch 2.11).
COMPILE_ENV=(env TORCH_DYNAMO_AUTOMATIC_DYNAMIC_SHAPES=0)
SG_EXTRA=()
DDPM_EXTRA=()
if [ "$SMOKE" = 1 ]; then  # narrow networks, batch 4, 6 ticks of 2 steps: minutes on two CPU cores
    SMALL_DATA=(batch_size=4 data.format_options.train_per_class=8 data.format_options.held_out_per_class=2
                schedule.grid_size=2 schedule.tick_kimg=0.008 budget.kimg=0.048)
    SG_EXTRA=(generator.channel_base=256 generator.channel_max=8 generator.z_dim=16 generator.w_dim=16 "${SMALL_DATA[@]}")
    DDPM_EXTRA=("generator.block_out_channels=[8,8,8,8,8,8]" generator.norm_num_groups=4 generator.layers_per_block=1
                "${SMALL_DATA[@]}")
    SAMPLING=(--preset tiny --resolution 16 --channels 3 --n 4 --sampler ddpm:40 --sampler ddim:10 --sampler dpmsolver++:5)
fi

# --- helpers ---------------------------------------------------------------------------------------------------

report() {
    "$PY" benchmarks/gpu_session.py report --status "$WORK/status.tsv" --json-dir "$WORK/json" --out "$OUT" \
        --part "$PART" $([ "$SMOKE" = 1 ] && echo --smoke) >/dev/null
}

# step NAME LIMIT COMMAND...: run COMMAND under min(LIMIT, time to the deadline), log it, record its exit status.
# COMMAND may name $JSON, replaced by the step's JSON path. A step is not started with less than a third of its
# LIMIT (and 45 s) left before the deadline.
step() {
    local name=$1 limit=$2 log="$WORK/logs/$1.log" json="$WORK/json/$1.json"
    shift 2
    if [ -n "${GPU_SESSION_STEPS:-}" ] && [[ " $GPU_SESSION_STEPS " != *" $name "* ]]; then return; fi
    local args=("${@//\$JSON/$json}")
    local left=$((DEADLINE - SECONDS))
    if [ "$SMOKE" = 1 ]; then limit=$((limit * 10)); fi  # CPU: slow compiles, but no hang goes unnoticed
    if [ "$left" -lt 45 ] || [ "$left" -lt $((limit / 3)) ]; then
        echo "=== [$name] SKIPPED: ${left}s left before the deadline, too little for its ${limit}s"
        printf '%s\t-\t0\t0\t%s\n' "$name" "$log" >>"$WORK/status.tsv"
        report
        return
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo
    echo "=== [$name] at ${SECONDS}s, limit ${limit}s: ${args[*]}"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "${args[@]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== [$name] exit $rc after $((SECONDS - start))s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" "$log" >>"$WORK/status.tsv"
    report
}

install() {
    echo "=== install into $SITE"
    mkdir -p "$SITE"
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl) wheel dist version
    if [ "${#wheels[@]}" -gt 0 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
            || echo "WARNING: installing the wheels of $WHEELS failed"
    else
        echo "WARNING: no wheels in $WHEELS (make them with: bash benchmarks/fetch_gpu_wheels.sh; carry .whl)"
    fi
    # Wheels of packages the machine has, installed only where its version is older (or missing).
    for wheel in "$WHEELS"/if-older/*.whl; do
        dist=$(basename "$wheel" | cut -d- -f1)
        version=$(basename "$wheel" | cut -d- -f2)
        if "$PY" benchmarks/gpu_session.py older "$dist" "$version"; then
            echo "$dist here is missing or older than $version: installing $(basename "$wheel")"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$wheel"
        fi
    done
    shopt -u nullglob
    rm -rf "$SITE/tests"  # torch-fidelity's wheel ships a top-level package "tests"
    # raresynth itself, built from a copy of the tree (the build leaves nothing in the repository); its entry
    # points register the built-in plugins. Without a setuptools to build it: links and a written dist-info.
    rm -rf "$WORK/src" && mkdir -p "$WORK/src" && cp -r pyproject.toml README.md core plugins "$WORK/src/"
    if [ "${GPU_SESSION_LINK_INSTALL:-0}" != 1 ] && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
            --no-compile --no-cache-dir --upgrade --target "$SITE" "$WORK/src"; then
        echo "raresynth installed into $SITE"
    else
        echo "building raresynth failed or was skipped: linking it instead"
        "$PY" benchmarks/gpu_session.py link-install . "$SITE"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

environment() {
    echo "=== machine"
    date -u
    nproc; free -g | head -2; df -h /tmp | tail -1
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" benchmarks/gpu_session.py env
    timeout 120 "$PY" -m raresynth plugins
}

stylegan2_eager() {
    step sg64 90 "$PY" benchmarks/throughput.py "${SG64[@]}" "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step sg128 120 "$PY" benchmarks/throughput.py "${SG128[@]}" "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step sg256 120 "$PY" benchmarks/throughput.py "${SG256[@]}" "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
}

stylegan2_compiled() {  # cheapest compile first: the deadline cuts the most expensive
    step sg64_compile 180 "${COMPILE_ENV[@]}" "$PY" benchmarks/throughput.py "${SG64[@]}" generator.compile=true \
        "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step sg128_compile 210 "${COMPILE_ENV[@]}" "$PY" benchmarks/throughput.py "${SG128[@]}" generator.compile=true \
        "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step sg256_compile 240 "${COMPILE_ENV[@]}" "$PY" benchmarks/throughput.py "${SG256[@]}" generator.compile=true \
        "${SG_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
}

diffusion_eager() {
    # fp32 is the config's own precision ("no"): a bare precision=no override would read as YAML false.
    step ddpm64_fp32 120 "$PY" benchmarks/throughput.py "${DDPM64[@]}" "${DDPM_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step ddpm64_bf16 120 "$PY" benchmarks/throughput.py "${DDPM64[@]}" precision=bf16 "${DDPM_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
    step sampling64 240 "$PY" benchmarks/sampling.py "${SAMPLING[@]}" --json '$JSON'
}

diffusion_compiled() {
    step ddpm64_bf16_compile 240 "${COMPILE_ENV[@]}" "$PY" benchmarks/throughput.py "${DDPM64[@]}" precision=bf16 generator.compile=true \
        "${DDPM_EXTRA[@]}" "${WARMUP[@]}" --json '$JSON'
}

main() {
    echo "=== gpu_session part $PART (smoke: $SMOKE), deadline ${DEADLINE}s, OUT=$OUT"
    install
    environment
    case "$PART" in
        stylegan2) stylegan2_eager; stylegan2_compiled ;;
        diffusion) diffusion_eager; diffusion_compiled ;;
        all|cpu-smoke) stylegan2_eager; diffusion_eager; stylegan2_compiled; diffusion_compiled ;;
    esac
    echo
    echo "=== done at ${SECONDS}s"
    report
    cat "$OUT/summary-$PART.txt"
}

rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/json" "$OUT" && : >"$WORK/status.tsv"
main 2>&1 | tee "$OUT/session-$PART.log"
