"""`--init-from`: start a new run from another run's weights, and say how much the load changed the function.

A fine-tuning run (e.g. a memorizing model started from a model trained without memory) is only the experiment
it claims to be when the loaded model computes what the source computed. Listing fresh and skipped tensors does
not say that: a tensor that loads may still be used differently (a kNN layer's local attention where the source
had an XL layer). So the loaded model and the source are both scored on the same held-out bytes (each with its
own state carried, a memory starting empty and filling as it reads) and the difference is logged and returned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open

from longrange.eval.evaluate import evaluate
from longrange.model.io import checkpoint_dir, load, load_weights
from longrange.model.lm import LongRangeLM

log = logging.getLogger(__name__)

CHECK_BYTES = 8 * 1024  # per held-out document: enough segments to see a memory fill, seconds at the small presets
CHECK_DOCS = 2


def init_weights(model: LongRangeLM, source: Path, held_out: list[bytes] | None = None) -> dict:
    """Load `source`'s weights into `model` (by name; mis-shaped tensors are an error) and compare the two.

    Returns ``{"loaded", "fresh", "skipped", "source_bpb", "loaded_bpb", "bytes"}``; the bpb fields are None
    when no held-out documents are given or the source cannot be built on its own.
    """
    own = set(model.state_dict())
    fresh = load_weights(model, checkpoint_dir(source), strict=False)
    with safe_open(str(checkpoint_dir(source) / "model.safetensors"), framework="pt") as fh:
        skipped = sorted(set(fh.keys()) - own)
    report = {"loaded": len(own) - len(fresh), "fresh": list(fresh), "skipped": skipped}
    log.info(
        "initialised from %s: %d tensors loaded; fresh (not in the source): %s; skipped (no place here): %s",
        *(source, report["loaded"], fresh or "none", skipped or "none"),
    )
    report.update(source_bpb=None, loaded_bpb=None, bytes=0)
    docs = [d[:CHECK_BYTES] for d in (held_out or [])[:CHECK_DOCS] if d]
    if not docs:
        return report
    try:
        source_model = load(source)
    except (ValueError, OSError) as err:  # e.g. a mechanism not registered here: the load itself still stands
        log.info("initialised from %s: the source alone could not be built to compare (%s)", source, err)
        return report
    with torch.no_grad():
        before = evaluate(source_model, docs, batch_size=len(docs))
        after = evaluate(model, docs, batch_size=len(docs))
    report.update(source_bpb=before["bpb"], loaded_bpb=after["bpb"], bytes=before["bytes"])
    log.info(
        "initialised from %s: on %d held-out bytes the loaded model scores %.4f bits per byte where the source "
        "scores %.4f (%+.4f); a difference above a few hundredths means the load changed what the model computes",
        *(source, before["bytes"], after["bpb"], before["bpb"], after["bpb"] - before["bpb"]),
    )
    return report
