"""Write the Hugging Face GPT-2 fixture (tests/fixtures/hf-gpt2/): small random-init
`transformers.GPT2LMHeadModel`s with GPT-2's own vocabulary (50257 tokens), saved by
`save_pretrained` as the hub lays them out (config.json + model.safetensors, bf16), and the
log-probs `transformers` gives for a few (prompt, completion) rows, so that
`cargo test -p tests --test hf_gpt2` checks without Python that alignlab opens such a folder
with GPT-2's tokenizer and computes the same log-probs on its CPU and GPU engines.

Each row is built as alignlab builds one (and as TRL does): prompt and completion tokenized
apart with GPT-2's tokenizer, `<|endoftext|>` (50256) before the prompt and after the
completion; the sequence log-prob sums log p over the completion's tokens and the end token.
The weights are perturbed after the init (so biases, gains and attention are not trivial),
rounded to bf16 (what is saved), and the log-probs computed from those same weights in
float64.

Run from anywhere:  pip install torch transformers  &&  python scripts/hf_gpt2_golden.py
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf-gpt2"
TOKENIZER = ROOT / "assets" / "tokenizers" / "gpt2"
EOT = 50256

SHAPES = {
    "two-layers": dict(n_embd=8, n_layer=2, n_head=2, n_positions=32),
    "three-heads": dict(n_embd=12, n_layer=1, n_head=3, n_positions=24),
}

ROWS = [
    ("User: Is fire hot? Assistant:", " Yes."),
    ("User: Can a fish walk? Assistant:", " No, a fish cannot walk."),
    ("User: Would you ever eat a bug? Assistant:", " Never."),
    ("Hello", " world! Café, naïve ✓ 1234"),
]


def main():
    tokenizer = GPT2TokenizerFast.from_pretrained(str(TOKENIZER))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995], "not GPT-2's tokenizer"
    for seed, (name, shape) in enumerate(SHAPES.items()):
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=50257,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            **shape,
        )
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
        (folder / "generation_config.json").unlink(missing_ok=True)  # not read by alignlab
        (folder / "model.safetensors").chmod(0o644)
        model = model.to(torch.float64)
        rows = []
        for prompt, completion in ROWS:
            prompt_ids = tokenizer(prompt)["input_ids"]
            completion_ids = tokenizer(completion)["input_ids"]
            assert prompt_ids and completion_ids, (prompt, completion)
            ids = [EOT] + prompt_ids + completion_ids + [EOT]
            first = 1 + len(prompt_ids)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits, dim=-1)
            token_logps = [logp[t - 1, ids[t]].item() for t in range(first, len(ids))]
            rows.append(
                {
                    "prompt": prompt,
                    "completion": completion,
                    "ids": ids,
                    "first_scored": first,
                    "token_logps": token_logps,
                    "seq_logp": sum(token_logps),
                }
            )
        (folder / "logps.json").write_text(
            json.dumps(
                {"transformers": transformers.__version__, "torch": torch.__version__, "rows": rows},
                indent=1,
            )
            + "\n"
        )
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, {len(rows)} rows")


if __name__ == "__main__":
    main()
