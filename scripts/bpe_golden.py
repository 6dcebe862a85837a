"""Write the golden fixture of alignlab's byte-level BPE (crates/lab-core/tests/fixtures/bpe/):
what Hugging Face `tokenizers` gives for 10,000+ strings, with our trained tokenizer and with
GPT-2's, so that `cargo test -p lab-core --test bpe` checks parity without Python.

Steps:
1. `cargo test ... -- --ignored write_golden_inputs` writes corpus.jsonl (the corpus of seed
   0), trains our tokenizer on it into trained/, and saves GPT-2's tokenizer with our writer
   into a scratch folder;
2. strings.jsonl: the corpus's distinct prompts, completions and whole examples
   (`<|endoftext|>` + prompt + completion + `<|endoftext|>`), hand-picked edge cases, and
   seeded random mixtures of tricky fragments;
3. gpt2/ids.txt and trained/ids.txt: HF's ids for each string, one line each;
4. trained/hf_saved.json: trained/tokenizer.json loaded and saved again by HF;
5. a check (printed, not written) that `transformers.AutoTokenizer.from_pretrained` opens
   both folders our writer made and gives HF's ids and the text back.

Run from anywhere:  pip install tokenizers transformers  &&  python scripts/bpe_golden.py
(set CARGO_TARGET_DIR as usual; --skip-cargo reuses the inputs already written).
"""

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/lab-core/tests/fixtures/bpe"
GPT2 = ROOT / "assets/tokenizers/gpt2"
EOT = "<|endoftext|>"
MIN_STRINGS = 10_000

# Strings chosen to exercise each alternative of GPT-2's pattern and each HF rule.
EDGE_CASES = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "a", " a", "a ", "a  ", "  a",
    "a  b", "a   b", "a \t b", "a\tb", "a\t\tb", "\t\tx", "x\n\n\n", "x\n \n y", "trailing   ",
    "hello   world", "hello \n world", "line one\nline two\n", "tab\tseparated\tvalues",
    "I'm", "don't", "we'll", "they've", "you're", "he'd", "it's", "It'S", "I'M", "WE'LL",
    "O'Neil", "rock'n'roll", "''s", "'s's", "'", "''", "' s", "'ss", "'re'", "?'s", "!'ll",
    "don’t", "l'homme", "'tis", "'90s", "x'",
    "0", "7", "42", "3.14", "1,000,000", "12345678901234567890", "x1y2z3", "v2.0.1", "2+2=4",
    "١٢٣", "Ⅻ", "½", "²³", "۱۲", "一二三", "(1)", "#1", "-5", "1e-9",
    ".", "...", "!!!", "?!", "--", "—", "...?!", "()", "[]{}", "<>", "@#$%^&*", "a.b.c",
    "end.", "end. ", "end.  ", " .", " . .", "\"quoted\"", "«guillemets»", "¿qué?",
    "café", "naïve", "Ωμέγα", "Привет мир", "中文字符", "日本語のテキスト", "한국어", "עברית",
    "العربية", "हिन्दी", "ǅemal", "ʰa", "e\u0301", "e\u0301te", "a\u0300\u0301\u0302",
    "\u0915\u094d\u0937", "ñ vs n\u0303", "Straße", "İstanbul", "ﬁne",
    "😀", "😀😀", " 😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "a😀b", "♥", "☃ snow",
    "\u00a0", "a\u00a0b", "a\u00a0\u00a0 ", "\u3000!", " \u3000x", "\u2028", "x\u2029y",
    "\x0b", "\x0c", "\x85", "\u200b", "a\u200bb", "\u00ad", "\ufeffx", "\x00", "\x1b[0m",
    "\x7f", "\x1c\x1d x",
    EOT, EOT + EOT, "a" + EOT + "b", " " + EOT + " ", EOT + " Yes", "<|endoftext|", "|>",
    "<|", "<" + EOT + ">", "<|endoftext|><|endoftext", "text" + EOT + "\n",
    " Yes", " No", " Never", " Sure", " I", " Yes.", " No.", "Yes.", " Yes..", " Yes.Yes.",
    "User: Is fire hot? Assistant: Yes",
]

# Fragments for the random mixtures.
FRAGMENTS = [
    "a", "Z", "hello", "The", "é", "ß", "naïve", "Ωμ", "Привет", "中文", "日本", "한",
    "ǅ", "ʰ", "e\u0301", "\u0301", "\u094d", "0", "42", "3.14", "١٢", "Ⅻ", "½", ".", "...",
    "!?", "--", "'", "\"", "(", ")", "#", "$", "€", "😀", "👍🏽", "🇫🇷", "\u200b",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "n't", " ", " ", " ", "  ", "   ",
    "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\x0b", "\x85", EOT, "<|", "|>",
    " Yes", " Yes.", " No.", " Never", "Yes", ":", "?",
]


def run_cargo(gpt2_saved: Path) -> None:
    env = dict(os.environ, BPE_GPT2_DIR=str(gpt2_saved))
    cmd = ["cargo", "test", "--release", "-p", "lab-core", "--test", "bpe", "--",
           "--ignored", "--exact", "write_golden_inputs"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def golden_strings() -> list[str]:
    examples = [json.loads(line) for line in (FIXTURES / "corpus.jsonl").read_text().splitlines()]
    strings: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        if text not in seen:
            seen.add(text)
            strings.append(text)

    for ex in examples:
        add(ex["prompt"])
        add(ex["completion"])
        add(EOT + ex["prompt"] + ex["completion"] + EOT)
    for text in EDGE_CASES:
        add(text)
    rng = random.Random(0)
    while len(strings) < MIN_STRINGS + 500:
        add("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 10))))
    return strings


def hf_gpt2() -> Tokenizer:
    """GPT-2 as transformers' GPT2TokenizerFast builds it from vocab.json + merges.txt."""
    tok = Tokenizer(models.BPE.from_file(str(GPT2 / "vocab.json"), str(GPT2 / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def write_ids(tok: Tokenizer, strings: list[str], path: Path) -> list[list[int]]:
    ids = [enc.ids for enc in tok.encode_batch(strings)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(map(str, row)) for row in ids))
    return ids


def check_transformers(folder: Path, strings: list[str], want: list[list[int]]) -> str:
    """AutoTokenizer opens `folder` and agrees with `tokenizers` on every string."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    bad = 0
    for text, ids in zip(strings, want):
        got = tok(text, add_special_tokens=True)["input_ids"]
        back = tok.decode(got, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if got != ids or back != text:
            bad += 1
            if bad <= 3:
                print(f"  mismatch {text!r}: {got} vs {ids}, decoded {back!r}", file=sys.stderr)
    return (f"{folder.name}: {type(tok).__name__}, eos {tok.eos_token!r} = {tok.eos_token_id}, "
            f"{len(strings) - bad}/{len(strings)} strings agree (ids and decode)")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        gpt2_saved = Path(scratch) / "gpt2"
        if "--skip-cargo" not in sys.argv:
            run_cargo(gpt2_saved)
        strings = golden_strings()
        with open(FIXTURES / "strings.jsonl", "w") as out:
            for text in strings:
                out.write(json.dumps(text) + "\n")

        trained = Tokenizer.from_file(str(FIXTURES / "trained/tokenizer.json"))
        trained_ids = write_ids(trained, strings, FIXTURES / "trained/ids.txt")
        gpt2_ids = write_ids(hf_gpt2(), strings, FIXTURES / "gpt2/ids.txt")
        trained.save(str(FIXTURES / "trained/hf_saved.json"))
        print(f"tokenizers {tokenizers.__version__}: {len(strings)} strings, "
              f"{sum(map(len, gpt2_ids))} GPT-2 tokens, {sum(map(len, trained_ids))} trained tokens")

        try:
            import transformers
        except ImportError:
            print("transformers not installed: AutoTokenizer check skipped")
            return
        print(f"transformers {transformers.__version__}:")
        print("  " + check_transformers(FIXTURES / "trained", strings, trained_ids))
        if gpt2_saved.exists():
            print("  " + check_transformers(gpt2_saved, strings, gpt2_ids))


if __name__ == "__main__":
    main()
