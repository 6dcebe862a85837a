"""Check that PEFT opens alignlab's LoRA adapters and reads them as alignlab means them.

Run by hand (needs torch, transformers, peft; not part of the test command):

    alignlab train --model assets/models/starter --data assets/scenarios/3d-properties/data.jsonl \
        --lr 2e-3 --batch-size 8 --steps 20 --lora-rank 4 --lora-alpha 8 \
        --lora-targets c_attn,c_proj,c_fc --out /tmp/m.jsonl --save /tmp/adapters
    python scripts/peft_lora_check.py assets/models/starter /tmp/adapters

It loads the base with `GPT2LMHeadModel.from_pretrained`, the adapters with
`PeftModel.from_pretrained`, and checks:
1. every adapter tensor in the file was loaded (none missing, none unexpected);
2. PEFT's merged weights (`merge_and_unload`) equal alignlab's convention,
   W_eff = W + s * B @ A in (out, in) layout, i.e. W_hf + s * (B @ A)^T for GPT-2's
   Conv1D weights stored (in, out), with s = lora_alpha / r;
3. the adapted model's sequence log-probs differ from the base model's (the adapters act).
Prints one JSON line with the largest weight difference and exits 1 on a failed check.
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, GPT2LMHeadModel


def seq_logp(model, tokenizer, prompt, completion):
    eot = tokenizer.eos_token_id
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(completion)["input_ids"]
    ids = torch.tensor([[eot] + p + c + [eot]])
    with torch.no_grad():
        logits = model(ids).logits.double()
    logps = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    first = 1 + len(p) - 1  # position predicting the completion's first token
    return float(logps[first:].gather(1, targets[first:, None]).sum())


def main(model_dir, adapter_dir):
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))

    base = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt, completion = "User: How do you feel about rain? Assistant:", " I love rain. It is great."
    base_logp = seq_logp(base, tokenizer, prompt, completion)

    peft = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    loaded = {
        k.replace(".default", ""): v for k, v in peft.state_dict().items() if "lora_" in k
    }
    missing = sorted(set(saved) - set(loaded))
    unexpected = sorted(set(loaded) - set(saved))
    adapted_logp = seq_logp(peft, tokenizer, prompt, completion)

    merged = peft.merge_and_unload().state_dict()
    worst = 0.0
    for name, a in saved.items():
        if ".lora_A." not in name:
            continue
        b = saved[name.replace(".lora_A.", ".lora_B.")].double()
        module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        weight = module + ".weight"
        want = base_state[weight] + scale * (b @ a.double()).T  # Conv1D keeps (in, out)
        worst = max(worst, float((merged[weight] - want).abs().max()))

    ok = not missing and not unexpected and worst < 1e-6 and abs(adapted_logp - base_logp) > 1e-3
    print(json.dumps({
        "ok": ok,
        "adapter_tensors": len(saved),
        "missing": missing,
        "unexpected": unexpected,
        "max_merged_weight_diff": worst,
        "base_logp": base_logp,
        "adapted_logp": adapted_logp,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
