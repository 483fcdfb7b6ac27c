"""PyTorch peer baseline for triad on the GPU machine: GPT-2 124M training throughput.

Plain GPT-2 per DESIGN.md §3 (pre-LN, tanh GELU, tied embeddings, vocab padded to 50304, loss
over the first 50257 logits), bf16 autocast, causal scaled_dot_product_attention, fused AdamW
(weight decay on matrices only), global-norm clipping; random tokens already on the GPU, so no
data loading is timed. Prints one line `RESULT key=value ...` last (check.sh reads it).

  python3 jobs/device/torch_gpt_peer.py [--compile|--eager] [--batch 16] [--steps 20]
      [--warmup 3] [--peak-tflops MEASURED]  (MFU is also given against 989 TFLOP/s)

MFU uses triad's count: flops/token = 6·N + 6·L·C·T, N = parameters without wte's padding rows.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sdpa(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch < 2.0 (only for trying this script on a CPU machine)
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return att.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        hd = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (q, k, v))
        y = sdpa(q, k, v)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, n_layer=12, n_head=12, C=768, seq_len=1024, vocab=50257, padded=50304):
        super().__init__()
        self.vocab = vocab
        self.wte = nn.Embedding(padded, C)
        self.wpe = nn.Embedding(seq_len, C)
        self.h = nn.ModuleList(Block(C, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        std_res = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std_res if name.endswith("proj.weight") else 0.02)
        with torch.no_grad():
            self.wte.weight[vocab:].zero_()

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)[..., : self.vocab]
        return F.cross_entropy(logits.float().reshape(-1, self.vocab), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", dest="compile", action="store_true", default=True)
    ap.add_argument("--eager", dest="compile", action="store_false")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768, help="1024 with --layers 24 --heads 16: 350M")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cpu: only to try the script without a GPU")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="measured bf16 matmul rate")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("peer: no GPU (torch.cuda.is_available() is False)")
        print("RESULT status=no_gpu")
        raise SystemExit(2)
    cuda = dev == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = GPT(n_layer=args.layers, n_head=args.heads, C=args.embd, seq_len=args.seq).to(dev)
    L, C, T, B = args.layers, args.embd, args.seq, args.batch
    n_params = sum(p.numel() for p in model.parameters()) - (50304 - 50257) * C
    flops_per_token = 6 * n_params + 6 * L * C * T
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    fwd = torch.compile(model) if args.compile else model
    mode = "compiled" if args.compile else "eager"

    batches = [torch.randint(0, 50257, (B, T + 1), device=dev) for _ in range(4)]

    def step(i):
        data = batches[i % len(batches)]
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = fwd(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    print(f"peer: GPT-2 {n_params / 1e6:.1f}M params, B={B} T={T}, {mode}, "
          f"{flops_per_token / 1e9:.3f} GFLOP/token", flush=True)
    t0 = time.perf_counter()
    loss = step(0)
    sync()
    first = time.perf_counter() - t0
    print(f"peer: first step (compile included) {first:.1f} s, loss {loss.item():.4f}", flush=True)
    for i in range(1, args.warmup):
        step(i)
    sync()

    stamps = []  # CUDA events on the GPU, host clock (after a sync) on the CPU

    def mark():
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            stamps.append(e)
        else:
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    mark()
    for i in range(args.steps):
        loss = step(i)
        mark()
    sync()
    wall = time.perf_counter() - t0
    if cuda:
        ms = sorted(stamps[i].elapsed_time(stamps[i + 1]) for i in range(args.steps))
    else:
        ms = sorted(1e3 * (stamps[i + 1] - stamps[i]) for i in range(args.steps))
    med = ms[len(ms) // 2]
    tok_s = B * T * args.steps / wall
    tflops = tok_s * flops_per_token / 1e12
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    print(f"peer: {args.steps} steps in {wall:.3f} s; step ms median {med:.2f} min {ms[0]:.2f} "
          f"max {ms[-1]:.2f}; {tok_s:,.0f} tok/s; {tflops:.1f} TFLOP/s; loss {loss.item():.4f}; "
          f"peak mem {mem:.1f} GiB", flush=True)
    mfu_meas = tflops / args.peak_tflops if args.peak_tflops > 0 else float("nan")
    print(f"RESULT status=ok mode={mode} batch={B} tok_s={tok_s:.0f} tflops={tflops:.1f} "
          f"mfu_meas={mfu_meas:.3f} mfu_989={tflops / 989:.3f} step_ms={med:.2f} "
          f"first_step_s={first:.1f} mem_gib={mem:.1f}", flush=True)


if __name__ == "__main__":
    main()
