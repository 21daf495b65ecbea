"""Child process of the checkpoint-resume test: one AE fit, its final state written to a file.

    python tests/helpers_resume.py OUT.pt [CHECKPOINT_DIR EVERY]

A crash (``IMGCLUST_CRASH_AT_STEP``) exits with status 3. Each fit runs in its own fresh process, as a
real crash and resume do, so no state of the test process (other tests' imports, threads, OpenMP
settings) can leak between the reference run and the resumed one.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# MKL's reproducible mode (same results whatever the memory alignment), set before torch loads MKL
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "deep"))

from test_deep_core import _blobs_images, _tiny_ae  # noqa: E402

from imgclust.deep.training import SimulatedCrash  # noqa: E402


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out = argv[0]
    ck = {"checkpoint_dir": argv[1], "checkpoint_every": int(argv[2])} if len(argv) > 1 else {}
    x, _ = _blobs_images(n_per=16)  # 48 images, 16 per batch -> 3 steps per epoch, 6 in all; augment on
    try:
        est = _tiny_ae(epochs=2, **ck).fit(x)
    except SimulatedCrash:
        return 3
    torch.save({"state": est.network_.state_dict(), "losses": [h["loss"] for h in est.history_],
                "labels": torch.from_numpy(est.labels_), "resumed_from": est.resumed_from_step_ or -1}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
