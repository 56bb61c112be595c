"""A longrange model used from Hugging Face transformers: export, load, generate with its memories, score.

    python examples/hf_transformers.py            # a tiny Transformer-XL at random weights, in a temporary folder
    python examples/hf_transformers.py runs/xl    # a run of yours (any system)

Needs the optional transformers package (pip install 'longrange[hf]'). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import longrange
import longrange.hf  # registers the "longrange" model type with AutoConfig and AutoModelForCausalLM
from longrange.data.tokenizer import load_run_tokenizer

PROMPT = "Memories carry context from one segment to the next. " * 3  # longer than the tiny model's segment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="run or checkpoint folder (default: a tiny random model)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            torch.manual_seed(0)
            run = longrange.save(
                longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny")), Path(tmp) / "run"
            )
        out = longrange.hf.export_hf(run, Path(tmp) / "hf")  # what `longrange export hf RUN OUT` writes
        model = AutoModelForCausalLM.from_pretrained(out)  # a LongRangeForCausalLM, in eval mode
        tokenizer = load_run_tokenizer(out)  # the run's BPE tokenizer.json, or bytes
        print(f"{type(model).__name__}: {model.config.longrange['layers']}, segment {model.segment_len} tokens")

        # generate: the prompt is read segment by segment into the memories, then one token at a time
        ids = torch.tensor([tokenizer.encode(PROMPT)])
        sequences = model.generate(ids, max_new_tokens=32, do_sample=False)
        print("greedy continuation:", repr(tokenizer.decode(sequences[0, ids.shape[1] :].tolist())))

        # score as lm-evaluation-harness does: log p(continuation | context), memories carried across segments
        context, continuation = tokenizer.encode(PROMPT), tokenizer.encode("Memories carry context")
        [(logprob, is_greedy)] = longrange.hf.loglikelihood(model, [(context, continuation)])
        print(f"log p(continuation | context) = {logprob:.3f} nats (greedy: {is_greedy})")


if __name__ == "__main__":
    main()
