#!/usr/bin/env bash
# The packages quantlab needs that the device tool's GPU image lacks, as Python 3.12 wheels in .whl/ (ignored by
# git, carried to the device: run(..., carry=[".whl"])); scripts/device-check.sh installs them there.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl \
  pydantic==2.14.4 pydantic-core annotated-types typing-inspection gguf==0.19.0
du -sh .whl
