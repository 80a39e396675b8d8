#!/usr/bin/env python3
"""PyTorch reference for `patchwork bench train`: the same ViT-Tiny models and the
same supervised train step (ViT, linear head on the CLS token, cross-entropy,
backward, AdamW) and forward pass, printing the same figures: images/s (median over
steps after warm-up), achieved GFLOP/s with the same FLOP count, and peak memory.
`dino-s16` is DINO's ViT-S/16 pre-training step (2 x 224 px + 8 x 96 px crops, head
384-2048-2048-256-65536 with a weight-normalised last layer, teacher EMA, centering,
per-parameter gradient clipping), as bench/dino.rs runs it through the plugins.
`--precision bf16` runs forward and loss under torch.autocast(bfloat16), as a session
with `precision: Bf16` autocasts its matmuls.

Not run by CI (it needs torch; on a machine without it, PyPI's wheel runs on the CPU:
`python3 -m pip install --target /tmp/torchsite torch`, then `PYTHONPATH=/tmp/torchsite`).
Run it beside the Rust bench on the same machine, with the same thread count, in one
series:

    patchwork bench train --threads 2 --models tiny16,tiny4
    python3 benchmarks/pytorch_reference.py --threads 2 --models tiny16,tiny4

and on a GPU:

    patchwork bench train --device cuda:0 --models dino-s16 --batch 64 [--precision bf16]
    python3 benchmarks/pytorch_reference.py --device cuda --models dino-s16 --batch 64 [--precision bf16]

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
# DINO's ViT-S/16 recipe: encoder, crops, head.
DINO_S16 = dict(img=224, patch=16, d=384, depth=12, heads=6, local=96, globals_=2, locals_=8,
                hidden=2048, bottleneck=256, out=65536)


def encoder_flops(img, patch, d, depth):
    """Matmul FLOPs of one image through the encoder, counted as bench/vit.rs does."""
    n = (img // patch) ** 2 + 1
    embed = 2 * (n - 1) * 3 * patch * patch * d
    block = 2 * n * 12 * d * d + 4 * n * n * d
    return embed + depth * block


def forward_flops(img, patch, d, depth):
    """Matmul FLOPs of one image's forward pass with the 1000-class head."""
    return encoder_flops(img, patch, d, depth) + 2 * d * CLASSES


def dino_step_flops(c):
    """Matmul FLOPs per image of one DINO step, counted as bench/dino.rs does."""
    head = 2 * (c["d"] * c["hidden"] + c["hidden"] ** 2 + c["hidden"] * c["bottleneck"]
                + c["bottleneck"] * c["out"])
    g = encoder_flops(c["img"], c["patch"], c["d"], c["depth"]) + head
    l = encoder_flops(c["local"], c["patch"], c["d"], c["depth"]) + head
    student = c["globals_"] * g + c["locals_"] * l
    return 3 * student + c["globals_"] * g


def build(img, patch, d, depth, heads, classes=CLASSES):
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
            self.head = nn.Linear(d, classes) if classes else nn.Identity()

        def pos(self, grid):
            """The position embedding for a grid x grid patch input (bicubic, as DINO)."""
            full = (img // patch)
            if grid == full:
                return self.pos_embed
            cls, rest = self.pos_embed[:, :1], self.pos_embed[:, 1:]
            rest = rest.reshape(1, full, full, d).permute(0, 3, 1, 2)
            rest = F.interpolate(rest, size=(grid, grid), mode="bicubic", align_corners=False)
            return torch.cat([cls, rest.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)

        def forward(self, x):
            grid = x.shape[-1] // patch
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos(grid)
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x)[:, 0])

    return Vit()


def build_dino_head(c):
    """DINO's projection head: MLP with GELU, L2-normalised bottleneck, weight-normed last layer."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(
                nn.Linear(c["d"], c["hidden"]), nn.GELU(),
                nn.Linear(c["hidden"], c["hidden"]), nn.GELU(),
                nn.Linear(c["hidden"], c["bottleneck"]))
            self.last = nn.utils.parametrizations.weight_norm(
                nn.Linear(c["bottleneck"], c["out"], bias=False))

        def forward(self, x):
            return self.last(F.normalize(self.mlp(x), dim=-1))

    return Head()


def measure_dino(batch, threads, warmup, steps, device, bf16):
    """Images/s of DINO's ViT-S/16 step (median) and the peak memory."""
    import copy
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = DINO_S16
    student = torch.nn.ModuleDict({
        "backbone": build(c["img"], c["patch"], c["d"], c["depth"], c["heads"], classes=None),
        "head": build_dino_head(c)}).to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.04)
    center = torch.zeros(1, c["out"], device=device)
    globals_ = torch.randn(c["globals_"] * batch, 3, c["img"], c["img"], device=device)
    locals_ = torch.randn(c["locals_"] * batch, 3, c["local"], c["local"], device=device)
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def run(net, x):
        return net["head"](net["backbone"](x))

    def step():
        nonlocal center
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            s_out = torch.cat([run(student, globals_), run(student, locals_)]).float() / 0.1
            with torch.no_grad():
                t_out = run(teacher, globals_).float()
            t_prob = F.softmax((t_out - center) / 0.04, dim=-1).chunk(c["globals_"])
            s_logp = F.log_softmax(s_out, dim=-1).chunk(c["globals_"] + c["locals_"])
            loss, terms = 0.0, 0
            for iq, q in enumerate(t_prob):
                for v, lp in enumerate(s_logp):
                    if v != iq:
                        loss = loss + torch.sum(-q * lp, dim=-1).mean()
                        terms += 1
            loss = loss / terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:
            torch.nn.utils.clip_grad_norm_(p, 3.0)
        opt.step()
        with torch.no_grad():
            center = center * 0.9 + t_out.mean(dim=0, keepdim=True) * 0.1
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(0.996).add_(ps.detach(), alpha=0.004)
        return loss.item()  # waits for the device

    for _ in range(warmup):
        step()
    rates, loss = [], float("nan")
    for _ in range(max(steps, 1)):
        t = time.perf_counter()
        loss = step()
        rates.append(batch / (time.perf_counter() - t))
    if device.startswith("cuda"):
        peak, what = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"
    return statistics.median(rates), loss, peak, what


def report_dino(batch, label, figures, version):
    c = DINO_S16
    ips, loss, peak, what = figures
    flops = dino_step_flops(c)
    print(f"DINO ViT-S/{c['patch']} step ({c['globals_']}x{c['img']} px + {c['locals_']}x{c['local']} px crops, "
          f"head out {c['out']}), batch {batch}, {label} (PyTorch {version} eager):")
    print(f"  train step: {ips:.2f} img/s, {ips * flops / 1e12:.2f} TFLOP/s at {flops / 1e9:.2f} GFLOP/img "
          f"(student 3 × forward, teacher forward); loss {loss:.4f}")
    print(f"  peak memory: {peak / 2**30:.2f} GiB ({what})")
    sys.stdout.flush()


def measure(name, batch, threads, warmup, steps, device, bf16):
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

    kind = "cuda" if device.startswith("cuda") else "cpu"

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        sync()

    def forward():
        with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
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


def report(name, batch, label, peak_gflops, figures, version):
    img, patch, d, depth, _ = MODELS[name]
    fwd = forward_flops(img, patch, d, depth)
    train_ips, forward_ips, peak, what = figures
    tg, fg = train_ips * 3 * fwd / 1e9, forward_ips * fwd / 1e9
    print(f"ViT-Tiny/{patch} @ {img} px, batch {batch}, {label} (PyTorch {version} eager):")
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
    p.add_argument("--peak-gflops", type=float, default=230.0,
                   help="the fp32 peak the GFLOP/s are compared with: pass the figure "
                        "`patchwork bench peak` prints on this machine (default: the 2-core "
                        "Zen 4 CI machine's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    names = [m for m in args.models.split(",") if m]
    for name in names:
        if name not in MODELS and name != "dino-s16":
            sys.exit(f"unknown model '{name}' (available: {', '.join(MODELS)}, dino-s16)")
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
    bf16 = args.precision == "bf16"
    where = f"{args.threads} threads" if args.device == "cpu" else args.device
    label = f"{where}, {'bf16 autocast' if bf16 else 'fp32'}"
    if name == "dino-s16":
        figures = measure_dino(args.batch, args.threads, args.warmup, args.steps, args.device, bf16)
        report_dino(args.batch, label, figures, torch.__version__)
        return
    figures = measure(name, args.batch, args.threads, args.warmup, args.steps, args.device, bf16)
    report(name, args.batch, label, args.peak_gflops, figures, torch.__version__)


if __name__ == "__main__":
    main()
