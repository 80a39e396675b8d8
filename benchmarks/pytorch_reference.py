#!/usr/bin/env python3
"""PyTorch reference for `patchwork bench train`: the same ViT-Tiny models and the
same supervised train step (ViT, linear head on the CLS token, cross-entropy,
backward, AdamW) and forward pass, printing the same figures: images/s (median over
steps after warm-up), achieved GFLOP/s with the same FLOP count, and peak memory.

Not run by CI (it needs torch). Run it beside the Rust bench on the same machine,
with the same thread count, in one series:

    RAYON_NUM_THREADS=2 patchwork bench train --models tiny16,tiny4
    python3 benchmarks/pytorch_reference.py --threads 2 --models tiny16,tiny4

Each model runs in a fresh process so that its peak memory is its own.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time

CLASSES = 1000
MODELS = {
    # name: (img_size, patch_size, embed_dim, depth, heads)
    "tiny16": (224, 16, 192, 12, 3),
    "tiny4": (32, 4, 192, 12, 3),
}


def forward_flops(img, patch, d, depth):
    """Matmul FLOPs of one image's forward pass, counted as bench/vit.rs does."""
    n = (img // patch) ** 2 + 1
    embed = 2 * (n - 1) * 3 * patch * patch * d
    block = 2 * n * 12 * d * d + 4 * n * n * d
    return embed + depth * block + 2 * d * CLASSES


def build(img, patch, d, depth, heads):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, n, _ = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            x = F.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(b, n, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(d, eps=1e-6)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(d, eps=1e-6)
            self.fc1 = nn.Linear(d, 4 * d)
            self.fc2 = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class Vit(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, d, patch, stride=patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.norm = nn.LayerNorm(d, eps=1e-6)
            self.head = nn.Linear(d, CLASSES)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x)[:, 0])

    return Vit()


def measure(name, batch, threads, warmup, steps, device):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    img, patch, d, depth, heads = MODELS[name]
    model = build(img, patch, d, depth, heads).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.tensor([(i * 37) % CLASSES for i in range(batch)], device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()

    def forward():
        with torch.no_grad():
            model.eval()
            model(x)
            model.train()
        sync()

    def rate(fn):
        for _ in range(warmup):
            fn()
        rates = []
        for _ in range(max(steps, 1)):
            t = time.perf_counter()
            fn()
            rates.append(batch / (time.perf_counter() - t))
        return statistics.median(rates)

    train_ips = rate(train_step)
    forward_ips = rate(forward)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
        what = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        what = "process max RSS"
    return train_ips, forward_ips, peak, what


def report(name, batch, threads, peak_gflops, figures, version):
    img, patch, d, depth, _ = MODELS[name]
    fwd = forward_flops(img, patch, d, depth)
    train_ips, forward_ips, peak, what = figures
    tg, fg = train_ips * 3 * fwd / 1e9, forward_ips * fwd / 1e9
    print(f"ViT-Tiny/{patch} @ {img} px, batch {batch}, {threads} threads (PyTorch {version} eager, fp32):")
    print(f"  train step: {train_ips:.2f} img/s, {tg:.1f} GFLOP/s ({100 * tg / peak_gflops:.0f} % of {peak_gflops:.0f}) at {3 * fwd / 1e9:.3f} GFLOP/img (3 × forward)")
    print(f"  forward:    {forward_ips:.2f} img/s, {fg:.1f} GFLOP/s ({100 * fg / peak_gflops:.0f} % of {peak_gflops:.0f}) at {fwd / 1e9:.3f} GFLOP/img")
    print(f"  peak memory: {peak / 2**30:.2f} GiB ({what})")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny16,tiny4")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-gflops", type=float, default=230.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    names = [m for m in args.models.split(",") if m]
    for name in names:
        if name not in MODELS:
            sys.exit(f"unknown model '{name}' (available: {', '.join(MODELS)})")
    if not args.one:
        # One process per model, so each peak memory is that model's alone.
        for name in names:
            cmd = [sys.executable, __file__, "--one", "--models", name] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k not in ("one", "models")
            ]
            subprocess.run(cmd, check=True)
        return
    import torch

    name = names[0]
    figures = measure(name, args.batch, args.threads, args.warmup, args.steps, args.device)
    report(name, args.batch, args.threads, args.peak_gflops, figures, torch.__version__)


if __name__ == "__main__":
    main()
