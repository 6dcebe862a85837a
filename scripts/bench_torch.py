"""The PyTorch side of `alignlab bench`: a plain PyTorch eager implementation of the same
DPO step (the reference's log-probs computed once without grad and cached, as the lab
does; then per step the policy forward on `--pairs` chosen + rejected rows of `--seq-len`
tokens with the first quarter (the prompt) masked, sigmoid DPO loss, backward, AdamW), on
the same GPT-2 configs; with `--lora-rank` the policy is wrapped by PEFT (LoRA on the
layers alignlab's --lora-targets name) and only the adapters train. Prints one JSON line
like `alignlab bench`.

    python3 scripts/bench_torch.py --config tiny --device cpu --steps 30
    python3 scripts/bench_torch.py --config distilgpt2 --pairs 4 --seq-len 128 --lora-rank 8 --steps 3
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "tiny": dict(vocab=96, ctx=64, d_model=64, n_layer=2, n_head=4),
    "medium": dict(vocab=96, ctx=128, d_model=256, n_layer=4, n_head=8),
    "gpt2": dict(vocab=50257, ctx=1024, d_model=768, n_layer=12, n_head=12),
    "distilgpt2": dict(vocab=50257, ctx=1024, d_model=768, n_layer=6, n_head=12),
}
# PEFT's GPT-2 module names (as alignlab's --lora-targets take them) -> this model's
PEFT_NAMES = {"c_attn": ["qkv"], "c_proj": ["proj", "fc_proj"], "c_fc": ["fc"]}


class Block(nn.Module):
    def __init__(self, c, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.fc_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.n_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, ctx, d_model, n_layer, n_head):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():  # GPT-2 init, as lab_core::config::init_params
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() > 1:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "fc_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.lnf(x) @ self.wte.weight.T  # (B, T, V), tied head


def seq_logps(model, tokens, mask):
    logp = model(tokens)[:, :-1].log_softmax(-1)
    token_logp = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (token_logp * mask[:, 1:]).sum(-1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="tiny", choices=CONFIGS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per row, the first quarter prompt")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA-DPO with PEFT (0: full fine-tuning)")
    parser.add_argument("--lora-alpha", type=float, default=8.0)
    parser.add_argument("--lora-targets", default="c_attn")
    args = parser.parse_args()
    pairs, prompt = args.pairs, args.seq_len // 4
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    policy = GPT(**cfg).to(device)
    reference = GPT(**cfg).to(device)
    reference.load_state_dict(policy.state_dict())
    reference.requires_grad_(False)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        targets = [name for t in args.lora_targets.split(",") for name in PEFT_NAMES[t]]
        lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets)
        policy = get_peft_model(policy, lora)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(1, cfg["vocab"], (2 * pairs, args.seq_len), device=device)
    mask = torch.zeros_like(tokens, dtype=torch.float32)
    mask[:, prompt:] = 1.0
    beta = 0.1

    with torch.no_grad():
        ref = seq_logps(reference, tokens, mask)

    def step():
        pol = seq_logps(policy, tokens, mask)
        margin = (pol[:pairs] - ref[:pairs]) - (pol[pairs:] - ref[pairs:])
        loss = -F.logsigmoid(beta * margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(2):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    steps_per_s = args.steps / seconds
    print(json.dumps({
        "engine": "pytorch-eager", "device": str(device), "threads": torch.get_num_threads(),
        "config": args.config, "pairs": pairs, "seq_len": args.seq_len,
        "lora": {"r": args.lora_rank, "lora_alpha": args.lora_alpha, "target_modules": args.lora_targets, "trainable": sum(p.numel() for p in trainable)} if args.lora_rank else None,
        "steps": args.steps, "seconds": seconds, "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * 2 * pairs * args.seq_len, "final_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
