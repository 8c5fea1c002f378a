#!/usr/bin/env bash
# The wheels bench.gpu_phi4 needs on the device machine beyond its image, into .whl/ (ignored), which the
# device call carries (README "Phi-4 on a GPU"). The image (.library/device/KINDS.md) is Python 3.12 on
# x86-64 with torch 2.11, transformers 5.17, accelerate 1.15 and peft, and no trl or datasets. Carried,
# at the versions this project resolves: trl, datasets and its dill + multiprocess (the image lacks
# them), transformers and peft (the project's pins), regex and fsspec (transformers 5.23 checks
# regex >= 2025.10.22 at import, datasets 5.2 wants fsspec <= 2026.9.0; the image's versions are unread),
# and bitsandbytes for the QLoRA run (41.1 MiB: it ships a library per CUDA version, 13.0 among them).
# --no-deps: every need is named here. 57.4 MiB in all; a device call carries 64 MiB, the 4.4 MiB
# working tree included.
#   bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl  # one version of each: two stop the install there
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    trl==1.16.0 peft==0.21.2 transformers==5.23.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    regex==2026.11.19 fsspec==2026.9.0 bitsandbytes==0.50.2
du -sh .whl
