"""hwaga tokenize: the golden files of the real HuggingFace tokenizer, through the command line,
from the vocabulary files and from a model file's "tokenizer" metadata; warnings and exit codes."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from hwaga_testlib import HWAGA_BIN, hwaga  # noqa: E402

SHARED = os.environ.get("HWAGA_SHARED_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared")
BPE = os.path.join(SHARED, "data", "bpe16k")
VOCAB = os.path.join(BPE, "bpe-16k-vocab.json")
MERGES = os.path.join(BPE, "bpe-16k-merges.txt")


def golden(ctx):
    with open(os.path.join(BPE, "golden-ctx%d.jsonl" % ctx), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_model_file(path, metadata):
    """A hwaga model file with no tensors: safetensors header with __metadata__ only."""
    header = json.dumps({"__metadata__": metadata}).encode("utf-8")
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)


def charbpe_json(ctx):
    """The documented "charbpe" JSON form, built here from the files (not by hwaga)."""
    with open(VOCAB, encoding="utf-8") as f:
        vocab = json.load(f)
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    with open(MERGES, encoding="utf-8") as f:
        merges = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
    return json.dumps({"type": "charbpe", "context_length": ctx, "lowercase": True, "unk_token": "[UNK]",
                       "pad_token": "[PAD]", "end_of_word_suffix": "</w>", "vocab": tokens, "merges": merges})


class TokenizeTest(unittest.TestCase):
    def check_golden(self, args, ctx):
        g = golden(ctx)
        p = hwaga("tokenize", *args, "--", *[x["prompt"] for x in g], check=True)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), len(g))
        for line, want in zip(lines, g):
            self.assertEqual(json.loads(line), want["ids"], want["prompt"])
        return p

    def test_golden_from_files(self):
        for ctx in (32, 64):
            p = self.check_golden(["--vocab", VOCAB, "--merges", MERGES, "--context", str(ctx)], ctx)
            # Each prompt longer than the context is reported once, by its number. Full lengths
            # come from a context long enough for all (no golden prompt ends in a literal [PAD]).
            full = hwaga("tokenize", "--vocab", VOCAB, "--merges", MERGES, "--context", "4096", "--",
                         *[x["prompt"] for x in golden(ctx)], check=True)
            lengths = [max([i + 1 for i, t in enumerate(json.loads(l)) if t != 0] or [0]) for l in full.stdout.splitlines()]
            want = ["prompt %d has %d tokens" % (i + 1, n) for i, n in enumerate(lengths) if n > ctx]
            self.assertGreaterEqual(len(want), 1)
            got = [l for l in p.stderr.splitlines() if "truncated" in l]
            self.assertEqual(len(got), len(want), p.stderr)
            for g, w in zip(got, want):
                self.assertIn(w, g)

    def test_tokens_flag(self):
        g = golden(32)[3]
        p = hwaga("tokenize", "--vocab", VOCAB, "--merges", MERGES, "--context", "32", "--tokens", g["prompt"], check=True)
        self.assertEqual(json.loads(p.stdout), g["tokens"])

    def test_golden_from_model_metadata(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "text.safetensors")
            write_model_file(path, {"format": "hwaga", "version": "1", "config": "{}", "tokenizer": charbpe_json(64)})
            self.check_golden(["-m", path], 64)
            bare = os.path.join(d, "bare.safetensors")
            write_model_file(bare, {"format": "hwaga", "version": "1", "config": "{}"})
            p = hwaga("tokenize", "-m", bare, "a dog")
            self.assertEqual(p.returncode, 1)
            self.assertIn("tokenizer", p.stderr)
            bad = os.path.join(d, "bad.safetensors")
            write_model_file(bad, {"format": "hwaga", "version": "1", "config": "{}", "tokenizer": '{"type":"bpe"}'})
            p = hwaga("tokenize", "-m", bad, "a dog")
            self.assertEqual(p.returncode, 1)
            self.assertIn("unknown tokenizer type", p.stderr)

    def test_invalid_utf8_exits_1(self):
        p = subprocess.run([HWAGA_BIN, "tokenize", "--vocab", VOCAB, "--merges", MERGES, "--context", "32",
                            b"ok", b"caf\xc3"], capture_output=True)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"prompt is not valid UTF-8 at byte 3", p.stderr)

    def test_bad_options_exit_2(self):
        for args in (["--vocab", VOCAB, "a"],                                   # no --merges/--context
                     ["--vocab", VOCAB, "--merges", MERGES, "--context", "32"],  # no prompt
                     ["-m", "x.safetensors", "--vocab", VOCAB, "a"],             # both sources
                     ["a dog"],                                                   # no source
                     ["--vocab", VOCAB, "--merges", MERGES, "--context", "0", "a"]):
            p = hwaga("tokenize", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))

    def test_bad_vocab_file_exits_1(self):
        p = hwaga("tokenize", "--vocab", MERGES, "--merges", MERGES, "--context", "32", "a")
        self.assertEqual(p.returncode, 1)
        self.assertIn("bpe-16k-merges.txt", p.stderr)
        self.assertIn("not valid JSON", p.stderr)


if __name__ == "__main__":
    unittest.main()
