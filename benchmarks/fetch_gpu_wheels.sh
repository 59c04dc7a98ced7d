#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels that the lent GPU machines lack, for benchmarks/gpu_session.sh:
# raresynth's runtime dependencies missing there (Python 3.12, x86-64, no internet), one version of each.
#
#   bash benchmarks/fetch_gpu_wheels.sh        # from the repository root, on a machine that reaches PyPI
#
# The device already has torch 2.11, torchvision 0.26, accelerate, pluggy, numpy, pillow, pyyaml, safetensors,
# tqdm, scikit-image, tifffile, scipy, matplotlib, huggingface-hub 1.33, filelock, requests, regex, packaging and
# zipp (/work/.library/device/KINDS.md); the pins below match the development venv. .whl/if-older/ holds wheels
# of packages the device has, installed there only when its version is older (pydantic needs
# typing-extensions >= 4.16). The last step checks that every requirement of the wheels is met.

set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

PINS=(
    diffusers==0.42.1 importlib-metadata==10.2.0 lazy-importer==0.1.0  # diffusers and what it lists
    torch-fidelity==0.4.0                                               # needs torchvision: on the device
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
    pydicom==3.0.2 nibabel==5.4.2
)
IF_OLDER=(typing-extensions==4.16.0)

download() {  # DEST SPEC...: CPython 3.12 wheels for manylinux x86-64, without their dependencies
    local dest=$1
    shift
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}

new=$(mktemp -d)  # replace .whl only once every download worked
download "$new" "${PINS[@]}"
download "$new/if-older" "${IF_OLDER[@]}"
rm -rf .whl && mv "$new" .whl && chmod 755 .whl
ls -l .whl .whl/if-older
"$PY" benchmarks/gpu_session.py check-wheels .whl
