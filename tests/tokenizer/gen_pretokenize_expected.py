#!/usr/bin/env python3
"""Writes data/pretokenize_expected.json: the reference regex splits of test
strings for the byte-level BPE pre-tokenizers, computed with the `regex`
module (which has \\p{L}) from the Hugging Face tokenizer.json patterns.

The strings are the llama.cpp vocab test strings (shared/data/vocab/*.inp)
plus edge cases. The llama.cpp strings may not be committed into this
repository, so for them only the byte length of each word is written
(with the index of the string); the test reads the strings from shared/data. The turbokv splitters are hand-written; this file is their
oracle for the vocabularies (llama-bpe, qwen2) whose GGUF we do not have.

Usage: python3 gen_pretokenize_expected.py /work/shared/data > data/pretokenize_expected.json
"""
import json
import sys

import regex

PATTERNS = {
    "gpt-2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama-bpe": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}

EXTRA = [
    "Hello  world", "a\r\n\r\nb", "a \n\n b", "   x", "x   ", "'S 'LL 'Re 's't", "it's", "''s",
    "12345678", "1 22 333 4444", "\u0661\u0662\u0663\u0664", "e\u0301te\u0301", "caf\u00e9",
    "x\u00a0y", "x\u3000\u3000y", "\t\tx", "?!\n\nA", " ?!\r\nA", "a\u2028b", "\u2167\u2168x",
    "\U0001F999\U0001F999 ok", "\u4e2d\u6587 text", "under_score", "$100.00", "x\n", "\n", " ",
    "  ", "\r\n", "A.B", "don't STOP", " 'll", "3.14159265",
]


def main():
    data = sys.argv[1]
    with open(f"{data}/vocab/ggml-vocab-llama-bpe.gguf.inp", encoding="utf-8") as f:
        raw = f.read()
    strings = raw.split("\n__ggml_vocab_test__\n")
    if strings and strings[-1] == "":
        strings.pop()
    n_inp = len(strings)
    strings += EXTRA
    out = {}
    for name, pattern in PATTERNS.items():
        cases = []
        for i, s in enumerate(strings):
            words = regex.findall(pattern, s)
            assert "".join(words) == s, (name, s)
            if i < n_inp:
                cases.append({"inp_index": i, "word_bytes": [len(w.encode("utf-8")) for w in words]})
            else:
                cases.append({"text": s, "words": words})
        out[name] = cases
    json.dump(out, sys.stdout, ensure_ascii=True, indent=0)
    sys.stdout.write("\n")


main()
