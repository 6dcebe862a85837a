"""The PyTorch side of `alignlab bench`: a plain PyTorch eager implementation of the same
DPO step (the reference's log-probs computed once without grad and cached, as the lab
does; then per step the policy forward on 16 chosen + 16 rejected rows of 64 tokens with
the prompt's 16 tokens masked, sigmoid DPO loss, backward, AdamW), on the same GPT-2
configs. Prints one JSON line like `alignlab bench`.

    python3 scripts/bench_torch.py --config tiny --device cpu --steps 30
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
}
PAIRS, PROMPT, RESPONSE = 16, 16, 48


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
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    policy = GPT(**cfg).to(device)
    reference = GPT(**cfg).to(device)
    reference.load_state_dict(policy.state_dict())
    reference.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(1, cfg["vocab"], (2 * PAIRS, PROMPT + RESPONSE), device=device)
    mask = torch.zeros_like(tokens, dtype=torch.float32)
    mask[:, PROMPT:] = 1.0
    beta = 0.1

    with torch.no_grad():
        ref = seq_logps(reference, tokens, mask)

    def step():
        pol = seq_logps(policy, tokens, mask)
        margin = (pol[:PAIRS] - ref[:PAIRS]) - (pol[PAIRS:] - ref[PAIRS:])
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
        "config": args.config, "steps": args.steps, "seconds": seconds, "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * 2 * PAIRS * (PROMPT + RESPONSE), "final_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
