"""Why causal Luna trailed the Transformer: one factor at a time at the compare layout (results/repro/luna-gap.md).

  python benchmarks/luna_gap.py train VARIANT [--unscaled] --out DIR [--seeds 2] [--reference FILE]
  python benchmarks/luna_gap.py probe VARIANT [--unscaled] [--seeds 2]
  python benchmarks/luna_gap.py table --out DIR

``train`` trains and evaluates one variant exactly as ``longrange compare --size tiny --steps 300 --rows 8
--whole-row "" --precision fp32`` trains each system (the same corpus, 8 rows x 64 tokens per update, schedule,
held-out documents; `longrange.compare.run_system`), seeds 0 .. N-1, and appends a JSON line to DIR/results.jsonl.
Most variants are config changes; a few change the code in this process only (the init, no attention, the
embedding scale, a learned position gain, fairseq-apollo's own causal layer). ``--unscaled`` adds the sinusoids
at their size before the fix (unit amplitude, 35 times the token embeddings).

``probe`` trains on rows of a random triple repeated (``a b c a b c ...``, 16 symbols): the next symbol is the one
two places back. A model that sees the order of its context predicts every symbol after the third; one that sees
its prefix as a bag ({a, b, c}, equal counts) is left with a coin flip between the two symbols other than the
current one (1 bit). Prints held-out bits per symbol on symbols 5 onward.

``reference`` needs fairseq-apollo's ``fairseq/modules/luna_attention.py`` (--reference FILE); the few fairseq
helpers it imports are stood in for here (dropout, quant-noise off, a float32 softmax as fairseq's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import longrange
from longrange.attention import luna as luna_module
from longrange.attention.base import AttentionModule, AttentionOutput
from longrange.compare import CompareConfig, plan, run_system
from longrange.model import build, lm

# name -> (system, config overrides, learning rate, code change or None)
VARIANTS: dict[str, tuple[str, dict, float, str | None]] = {
    "transformer": ("transformer", {}, 2e-3, None),
    "transformer-sinusoidal": ("transformer", {"positions": "sinusoidal"}, 2e-3, None),
    "transformer-no-positions": ("transformer", {"full.rotary": False}, 2e-3, None),
    "luna": ("luna", {}, 2e-3, None),
    "positions-none": ("luna", {"positions": "none"}, 2e-3, None),
    "positions-learned": ("luna", {"positions": "learned", "max_len": 64}, 2e-3, None),
    "embedding-scale": ("luna", {}, 2e-3, "embedding_scale"),
    "position-gain": ("luna", {}, 2e-3, "position_gain"),
    "proj-len-4": ("luna", {"luna.proj_len": 4}, 2e-3, None),
    "proj-len-64": ("luna", {"luna.proj_len": 64}, 2e-3, None),
    "softplus": ("luna", {"luna.activation": "softplus"}, 2e-3, None),
    "normalize-length": ("luna", {"luna.normalize": "length"}, 2e-3, None),
    "softplus-normalize-length": ("luna", {"luna.activation": "softplus", "luna.normalize": "length"}, 2e-3, None),
    "chunk-8": ("luna", {"luna.chunk_len": 8}, 2e-3, None),
    "chunk-64": ("luna", {"luna.chunk_len": 64}, 2e-3, None),
    "untied": ("luna", {"luna.share_projections": False}, 2e-3, None),
    "init-reference": ("luna", {}, 2e-3, "init_reference"),
    "lr-1e-3": ("luna", {}, 1e-3, None),
    "lr-4e-3": ("luna", {}, 4e-3, None),
    "lr-8e-3": ("luna", {}, 8e-3, None),
    "no-attention": ("luna", {}, 2e-3, "no_attention"),
    "reference": ("luna", {}, 2e-3, "reference"),
}


def _sinusoids(length: int, width: int) -> torch.Tensor:
    pos = torch.arange(length)[:, None].float()
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2).float() / width)
    return torch.cat([torch.sin(pos * inv), torch.cos(pos * inv)], dim=1)


def _after_init(change) -> None:
    """Run `change(model)` at the end of every LongRangeLM construction (training and the reload for evaluation)."""
    original = lm.LongRangeLM.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        change(self)

    lm.LongRangeLM.__init__ = init


def embedding_scale(_) -> None:
    """Vaswani et al. / fairseq: token embeddings N(0, 1/d) times sqrt(d) (RMS 1), sinusoids unscaled."""
    build.EMBED_INIT_STD = 1.0

    def change(model):
        d = model.embed.weight.shape[1]
        nn.init.normal_(model.embed.weight, std=d**-0.5)
        model.embed.register_forward_hook(lambda module, inputs, output: output * d**0.5)

    _after_init(change)


def position_gain(_) -> None:
    """Unit sinusoids times a learned scalar, initialised at the fixed scale (0.02)."""
    from longrange.model import positions

    build.EMBED_INIT_STD = 1.0
    original = positions.AbsolutePositions.forward

    def change(model):
        model.positions.gain = nn.Parameter(torch.tensor(0.02))

    def forward(self, pos):
        return original(self, pos) * self.gain

    positions.AbsolutePositions.forward = forward
    _after_init(change)


def init_reference(_) -> None:
    """fairseq-apollo's init: xavier_uniform with gain 1/sqrt 2 on each projection, gain 1 on the output; its
    projected embeddings P ~ N(0, 1/d) times sqrt(d) plus sinusoids of the l slots."""

    def change(model):
        for module in model.modules():
            if isinstance(module, luna_module.LunaAttention):
                d = module.d_model
                nn.init.xavier_uniform_(module.pack_q.weight, gain=2**-0.5)
                for block in module.in_proj.weight.data.split(d):
                    nn.init.xavier_uniform_(block, gain=2**-0.5)
                nn.init.xavier_uniform_(module.out.weight)
                if hasattr(module, "p_init"):
                    nn.init.normal_(module.p_init, std=1.0)
                    module.p_pos.data.copy_(_sinusoids(module.proj_len, d))

    _after_init(change)


def no_attention(_) -> None:
    """Every Luna layer's attention output is zero: embeddings, positions and feed-forward layers only."""
    original = luna_module.causal_luna

    def causal_luna(*args):
        y, num, den = original(*args)
        return torch.zeros_like(y), num, den

    luna_module.causal_luna = causal_luna


def _load_reference(path: str):
    """fairseq-apollo's luna_attention.py, importable without fairseq: stand-ins for the helpers it imports."""
    if not path or not Path(path).is_file():
        raise SystemExit("luna_gap.py: error: the reference variant needs --reference PATH/luna_attention.py")
    fairseq = types.ModuleType("fairseq")
    utils = types.ModuleType("fairseq.utils")
    utils.softmax = lambda x, dim, onnx_trace=False: F.softmax(x, dim=dim, dtype=torch.float32)
    incremental = types.ModuleType("fairseq.incremental_decoding_utils")
    incremental.with_incremental_state = lambda cls: cls
    modules = types.ModuleType("fairseq.modules")
    dropout = types.ModuleType("fairseq.modules.fairseq_dropout")
    dropout.FairseqDropout = lambda p, module_name=None: nn.Dropout(p)
    quant = types.ModuleType("fairseq.modules.quant_noise")
    quant.quant_noise = lambda module, p, block_size: module
    fairseq.utils = utils
    for module in (fairseq, utils, incremental, modules, dropout, quant):
        sys.modules[module.__name__] = module
    spec = importlib.util.spec_from_file_location("reference_luna_attention", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    return reference


def reference(path: str) -> None:
    """fairseq-apollo's LunarCausalAttention in place of each Luna layer, as it is (biases, its init, softplus
    beta ln 2, prefix sums divided by t). The LM's P is learned as here, N(0, 1) plus sinusoids of the slots (its
    encoder's projected embeddings at its embedding scale), every layer packing it through its own projection."""
    ref = _load_reference(path)

    class Reference(AttentionModule):
        def __init__(self, d_model: int, n_heads: int, proj_len: int, first: bool):
            super().__init__()
            self.ref = ref.LunarCausalAttention(d_model, n_heads, tie_kv=True)
            if first:
                self.p_init = nn.Parameter(torch.randn(proj_len, d_model))
                self.register_buffer("p_pos", _sinusoids(proj_len, d_model))

        def forward(self, x, *, state=None, doc_start=None, pad_mask=None, carry=None):
            p = carry if carry is not None else (self.p_init + self.p_pos).expand(x.shape[0], -1, -1)
            out, _ = self.ref(x.transpose(0, 1), p.transpose(0, 1))
            return AttentionOutput(out.transpose(0, 1), None, None, p)

    def change(model):
        for i, block in enumerate(model.blocks):
            old = block.attention
            block.attention = Reference(old.d_model, old.n_heads, old.proj_len, i == 0)

    _after_init(change)


def _setup(variant: str, unscaled: bool, reference_path: str | None) -> tuple[str, dict, float]:
    system, overrides, lr, change = VARIANTS[variant]
    if unscaled:  # the sinusoids as before the fix: unit amplitude
        build.EMBED_INIT_STD = 1.0
    if change == "reference":
        reference(reference_path)
    elif change:
        globals()[change](None)
    return system, overrides, lr


def train(args) -> None:
    system, overrides, lr = _setup(args.variant, args.unscaled, args.reference)
    cc = CompareConfig(
        systems=[system],
        size="tiny",
        steps=args.steps,
        rows=8,
        seeds=args.seeds,
        whole_row=[],
        precision="fp32",
        ablations=False,
        lr=lr,
        overrides={system: overrides},
    )
    cfgs, _, row_tokens = plan(cc)
    name = args.variant + ("+unscaled" if args.unscaled else "")
    bpbs = []
    for seed in range(args.seeds):
        run_dir = Path(args.out) / name / f"seed-{seed}"
        if (run_dir / "done").exists():
            result = json.loads((run_dir / "result.json").read_text())
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            result = run_system(cc, system, cfgs[system], row_tokens, run_dir, seed)
        bpbs.append(result["bpb"])
    mean = sum(bpbs) / len(bpbs)
    std = (sum((b - mean) ** 2 for b in bpbs) / max(len(bpbs) - 1, 1)) ** 0.5
    line = {"variant": name, "bpb": mean, "std": std, "seed_bpb": bpbs, "parameters": result["parameters"]}
    print(json.dumps(line))
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _triples(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    triples = torch.stack([torch.randperm(16, generator=gen)[:3] + ord("a") for _ in range(n)])
    return triples.repeat(1, length // 3 + 2)[:, : length + 1]


def probe(args) -> None:
    system, overrides, _ = _setup(args.variant, args.unscaled, args.reference)
    bits = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = longrange.build_model(longrange.ModelConfig.from_name(f"{system}-tiny").replace(**overrides))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
        gen = torch.Generator().manual_seed(seed)
        for step in range(args.steps):
            for group in opt.param_groups:  # 20 steps of warm-up, then a cosine to zero
                group["lr"] = 2e-3 * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            rows = _triples(8, 64, gen)
            model(rows[:, :-1], targets=rows[:, 1:]).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        test = _triples(64, 64, torch.Generator().manual_seed(1000 + seed))
        with torch.no_grad():
            logits = model.eval()(test[:, :-1]).logits
        nll = F.cross_entropy(logits[:, 3:].flatten(0, 1), test[:, 4:].flatten())
        bits.append(nll.item() / math.log(2))
    name = args.variant + ("+unscaled" if args.unscaled else "")
    print(json.dumps({"probe": name, "bits_per_symbol": bits}))


def table(args) -> None:
    print("| variant | parameters | held-out bpb (mean ± std, seeds) |\n|---|---:|---|")
    for line in (Path(args.out) / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        seeds = ", ".join(f"{b:.4f}" for b in r["seed_bpb"])
        print(f"| {r['variant']} | {r['parameters']:,} | {r['bpb']:.4f} ± {r['std']:.4f} ({seeds}) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["train", "probe", "table"])
    p.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    p.add_argument("--unscaled", action="store_true", help="sinusoids at unit amplitude, as before the fix")
    p.add_argument("--out", default="runs/luna-gap")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="default: 300 (train), 600 (probe)")
    p.add_argument("--reference", help="fairseq-apollo's fairseq/modules/luna_attention.py (variant reference)")
    args = p.parse_args()
    if args.action != "table" and args.variant is None:
        p.error(f"{args.action} needs a variant")
    args.steps = args.steps or (600 if args.action == "probe" else 300)
    torch.set_num_threads(1)
    {"train": train, "probe": probe, "table": table}[args.action](args)


if __name__ == "__main__":
    main()
