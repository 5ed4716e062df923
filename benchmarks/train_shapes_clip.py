"""Train `grape-shapes-clip`, the tiny open_clip model grape_hf ships, on the shapes world.

    python benchmarks/train_shapes_clip.py

Seeded and CPU-only: draws 25,600 scene/caption pairs from seed 0, trains the 5.5M-parameter model of
`grape_hf/model_configs/grape-shapes-clip.json` with open_clip's contrastive loss (batch 128, 800 steps, about
two minutes on two CPU cores), then writes, in open_clip's own state-dict format,

- `grape_hf/assets/grape-shapes-clip/open_clip_model.safetensors` (fp16), and
- `grape_hf/assets/grape-shapes-clip/README.md`, the model card with the text->image R@1/5/10 of the saved
  checkpoint, reloaded through `grape_hf.load_retriever`, on a held-out corpus of 1,000 images (seed 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from grape_hf.retrieval.retrievers import ASSETS_DIR, MODEL_CONFIGS_DIR
from grape_hf.shapes import build_shift, generate_scenes

ARCH = "grape-shapes-clip"
SPEC = f"open_clip:{ARCH}@grape-shapes"

CARD = """---
library_name: open_clip
license: apache-2.0
tags: [clip, grape_hf, synthetic, zero-shot-image-retrieval]
---

# grape-shapes-clip

A {params:.1f}M-parameter [open_clip](https://github.com/mlfoundations/open_clip) model trained from scratch on
grape_hf's synthetic *shapes world* (`grape_hf.shapes`): 64-pixel images of 1-3 coloured shapes, each with one
canonical English caption such as "a small red circle on the left and a large blue square in the middle". It is the
frozen retriever of grape_hf's offline CLIP track: no pretrained CLIP can be downloaded there.

It understands exactly that caption style. German, French, Spanish or Chinese captions, chatty descriptions longer
than its {context}-token context and composed "reference + edit" queries all fail, which is what a GRAPE rewriter
learns to fix.

```python
>>> from grape_hf import load_retriever
>>> retriever = load_retriever("{spec}", device="cpu")
>>> retriever.encode_text(["a small red circle on the left"]).shape
torch.Size([1, {embed_dim}])
```

or with open_clip alone:

```python
import open_clip
from grape_hf.retrieval.retrievers import BUILTIN_OPEN_CLIP_CHECKPOINTS, MODEL_CONFIGS_DIR

open_clip.add_model_config(MODEL_CONFIGS_DIR)
checkpoint = BUILTIN_OPEN_CLIP_CHECKPOINTS["{arch}"]["grape-shapes"]  # assets/{arch}/open_clip_model.safetensors
model, _, preprocess = open_clip.create_model_and_transforms("{arch}", pretrained=str(checkpoint))
tokenizer = open_clip.get_tokenizer("{arch}")
```

## Config (`grape_hf/model_configs/{arch}.json`)

```json
{config}
```

## Training

```bash
{command}
```

- data: {num_pairs:,} scene/caption pairs drawn from seed {seed} (`grape_hf.shapes.generate_scenes`, repeats
  allowed), rendered once; {epochs:.1f} passes
- {steps} steps of batch {batch_size}, AdamW (lr {lr}, weight decay {weight_decay}, betas 0.9/0.98), {warmup}
  warm-up steps then cosine decay, open_clip's `ClipLoss`, fp32 on CPU with {threads} torch thread(s)
- training took {train_seconds:.0f} s (data {data_seconds:.0f} s) on {machine}
- saved in fp16 (open_clip's state-dict keys); open_clip loads it into fp32

## In-distribution retrieval (text -> image)

The canonical caption of each image of a held-out corpus of {eval_images:,} distinct scenes (seed {eval_seed}; the
training stream is seed {seed}, so images differ even where a scene repeats), ranked among all {eval_images:,}
images by the saved checkpoint loaded through `grape_hf.load_retriever`:

| R@1 | R@5 | R@10 | MRR |
|-----|-----|------|-----|
| {r1:.3f} | {r5:.3f} | {r10:.3f} | {mrr:.3f} |

The shifted query sets and their no-rewrite numbers: `benchmarks/shapes_baselines.py`,
`benchmarks/results/shapes.json`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-pairs", type=int, default=25_600, help="Scene/caption pairs drawn for training.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="Torch threads; 1 avoids thrashing on a shared machine."
    )
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--eval-seed", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=ASSETS_DIR / ARCH)
    return parser


def to_uint8(images) -> torch.Tensor:
    """PIL images as one `(N, 3, H, W)` uint8 tensor (a quarter of the memory of floats)."""
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images])).permute(0, 3, 1, 2)


def normalise(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The same as open_clip's eval transform on a 64-px image: its resize and centre crop are no-ops there."""
    return (batch.float().div_(255) - mean) / std


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    import open_clip
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    open_clip.add_model_config(MODEL_CONFIGS_DIR)
    model = open_clip.create_model(ARCH, output_dict=True)
    tokenizer = open_clip.get_tokenizer(ARCH)
    params = sum(p.numel() for p in model.parameters())
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)

    start = time.perf_counter()
    scenes = generate_scenes(args.num_pairs, seed=args.seed, unique=False)
    images = to_uint8([scene.render() for scene in scenes])
    tokens = tokenizer([scene.caption for scene in scenes])
    data_seconds = time.perf_counter() - start
    print(f"{len(scenes)} pairs ({len({s.key for s in scenes})} distinct scenes) in {data_seconds:.1f} s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * progress))

    loss_fn = ClipLoss()
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(scenes), generator=generator)
    cursor = 0
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(scenes), generator=generator), 0
        batch = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        out = model(normalise(images[batch], mean, std), tokens[batch])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - start
            print(
                f"step {step:4d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  {elapsed:.0f} s",
                flush=True,
            )
    train_seconds = time.perf_counter() - start

    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.output_dir / "open_clip_model.safetensors"
    state = {name: tensor.detach().half().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(checkpoint), metadata={"format": "pt", "arch": ARCH})
    print(f"saved {checkpoint} ({checkpoint.stat().st_size / 1e6:.1f} MB)", flush=True)

    # Measure what ships: the fp16 file, loaded the way users load it.
    from grape_hf import RankScorer, load_retriever
    from grape_hf.evaluation import retrieval_metrics

    retriever = load_retriever(SPEC, device="cpu") if args.output_dir == ASSETS_DIR / ARCH else None
    if retriever is None:
        from grape_hf.retrieval.retrievers import OpenCLIPRetriever

        retriever = OpenCLIPRetriever(SPEC, ARCH, str(checkpoint), device="cpu")
    rows, corpus = build_shift("in_distribution", num_images=args.eval_images, seed=args.eval_seed)
    scorer = RankScorer(retriever, [scene.render() for scene in corpus], show_progress_bar=False)
    metrics = retrieval_metrics(scorer.ranks([row["query"] for row in rows], [row["target_id"] for row in rows]))
    print(json.dumps(metrics), flush=True)

    command = "python benchmarks/train_shapes_clip.py" + "".join(
        f" --{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name != "output_dir" and value != parser.get_default(name)
    )
    config = (MODEL_CONFIGS_DIR / f"{ARCH}.json").read_text().strip()

    card = CARD.format(
        params=params / 1e6,
        context=tokenizer.context_length,
        spec=SPEC,
        arch=ARCH,
        embed_dim=retriever.embedding_dim,
        config=config,
        command=command,
        num_pairs=args.num_pairs,
        seed=args.seed,
        epochs=args.steps * args.batch_size / args.num_pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        threads=args.threads,
        train_seconds=train_seconds,
        data_seconds=data_seconds,
        machine=f"a {os.cpu_count()}-core {platform.machine()} CPU",
        eval_images=args.eval_images,
        eval_seed=args.eval_seed,
        r1=metrics["R@1"],
        r5=metrics["R@5"],
        r10=metrics["R@10"],
        mrr=metrics["MRR"],
    )
    (args.output_dir / "README.md").write_text(card)
    print(f"wrote {args.output_dir / 'README.md'}")


if __name__ == "__main__":
    main()
