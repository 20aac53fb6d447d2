"""Diagnostic: do the demo model's visual tokens carry "which colour goes with which shape"?

The multiple-choice questions "What color is the <shape>?" and "Which shape is <color>?" need the LLM to
find the asked object among several. This script separates the two halves of that job on held-out videos:

* **the tokens**: a one-layer linear attention probe (4 heads) whose query is a learned vector for the asked shape
  (or colour) reads the answer from the model's LLM-input tokens (tower -> ToMe -> connector, exactly what
  `encode_video` gives the LLM). It is trained on the multi-object questions of 80% of the videos and tested on
  the other 20%, at several training-sample counts;
* **the model**: the model's own greedy answer (`chat`, scored like `eval synth`) to the same test questions.

A probe far above the model means the tokens hold the binding and the LLM does not use it.

    python benchmarks/probe_binding.py                       # ~4 min on 2 CPU cores
    python benchmarks/probe_binding.py --model DIR --videos 600
    python benchmarks/probe_binding.py --model DIR --tokens tome   # the tokens before the connector

``--tokens tome`` feeds the probe the tower's features after ToMe, before the connector's MLP, so the two sides of
the connector can be compared: a binding the ToMe'd features hold and the connector's output does not was lost in
the connector.

Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_readme, command_line, machine_line, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# task -> (the object field the question names, the vocabulary of that field)
KEYS = {"mc_color": "shape", "mc_shape": "color"}


class AttentionProbe(torch.nn.Module):
    """Learned query per asked value -> softmax attention over the tokens -> linear readout of the option."""

    def __init__(self, dim: int, num_queries: int, num_options: int, heads: int = 4, head_dim: int = 32):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = torch.nn.Embedding(num_queries, heads * head_dim)
        self.key = torch.nn.Linear(dim, heads * head_dim)
        self.value = torch.nn.Linear(dim, heads * head_dim)
        self.out = torch.nn.Linear(heads * head_dim, num_options)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        k = self.key(tokens).view(b, n, self.heads, self.head_dim)
        v = self.value(tokens).view(b, n, self.heads, self.head_dim)
        q = self.query(asked).view(b, self.heads, self.head_dim)
        scores = torch.einsum("bnhe,bhe->bhn", k, q) / self.head_dim**0.5
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bhn,bnhe->bhe", weights, v).reshape(b, -1))


@contextlib.contextmanager
def connector_skipped(model):
    """The model encodes videos to its ToMe'd tower features: the connector's MLP is the identity meanwhile."""
    mlp = model.projector.mlp
    model.projector.mlp = torch.nn.Identity()
    try:
        yield
    finally:
        model.projector.mlp = mlp


def padded(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch and its mask, standardised per channel over the real tokens."""
    width = max(t.shape[0] for t in tokens)
    x = torch.zeros(len(tokens), width, tokens[0].shape[1])
    mask = torch.zeros(len(tokens), width, dtype=torch.bool)
    for i, t in enumerate(tokens):
        x[i, : len(t)], mask[i, : len(t)] = t, True
    mu, sd = x[mask].mean(0), x[mask].std(0) + 1e-6
    return (x - mu) / sd * mask[..., None], mask


def train_probe(
    x, mask, asked, answer, train_idx, test_idx, sizes, checkpoints, batch: int, seed: int
) -> dict[int, float]:
    """Held-out accuracy of a fresh probe after each number of training samples in ``checkpoints``.

    ``sizes``: (number of values the asked field can take, number of options).
    """
    torch.manual_seed(seed)
    probe = AttentionProbe(x.shape[-1], *sizes)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.01)
    curve, step = {}, 0
    for samples in sorted(checkpoints):
        while step * batch < samples:
            idx = train_idx[torch.randint(0, len(train_idx), (batch,))]
            loss = torch.nn.functional.cross_entropy(probe(x[idx], mask[idx], asked[idx]), answer[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        with torch.no_grad():
            pred = probe(x[test_idx], mask[test_idx], asked[test_idx]).argmax(1)
        curve[samples] = (pred == answer[test_idx]).float().mean().item()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "models" / "videochat-flash-demo"))
    p.add_argument(
        "--videos", type=int, default=400, help="held-out scenes generated (half short, half long)"
    )
    p.add_argument("--seed", type=int, default=7007)
    p.add_argument("--samples", default="800,1600,3200,6400,12800", help="probe training-sample checkpoints")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tokens", choices=("connector", "tome"), default="connector", help="which tokens the probe reads"
    )
    p.add_argument("--no-readme", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from videochat_flash.config import CompressionConfig
    from videochat_flash.data.scoring import score_mc
    from videochat_flash.data.shapes import COLORS, SHAPES
    from videochat_flash.data.synth import make_eval_set
    from videochat_flash.inference.session import chat, encode_video
    from videochat_flash.model.videochat import VideoChatFlash

    model = VideoChatFlash.from_pretrained(a.model)
    vocab = {"shape": SHAPES, "color": COLORS}
    checkpoints = [int(s) for s in a.samples.split(",")]
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        eval_jsonl = make_eval_set(
            Path(tmp) / "eval", a.seed, a.videos, niah_multipliers=(), workers=a.threads
        )
        records = [json.loads(line) for line in eval_jsonl.read_text().splitlines()]
        records = [r for r in records if r["task"] in KEYS and len(r["meta"]["objects"]) > 1]
        encoded = {}  # video -> VideoTokens, encoded once for the probe and the model's own answers
        probed = {}  # video -> the tokens the probe reads
        for r in records:
            if r["video"] not in encoded:
                path = str(eval_jsonl.parent / r["video"])
                if a.tokens == "tome":  # decode and run the tower once; the model's tokens are the MLP of these
                    with connector_skipped(model):
                        merged = encode_video(model, path)
                    with torch.no_grad():
                        encoded[r["video"]] = dataclasses.replace(merged, tokens=model.projector.mlp(merged.tokens))
                    probed[r["video"]] = merged.tokens
                else:
                    encoded[r["video"]] = encode_video(model, path)
                    probed[r["video"]] = encoded[r["video"]].tokens
        videos = sorted(encoded)
        test_videos = set(videos[int(0.8 * len(videos)) :])
        for task, key in KEYS.items():
            recs = [r for r in records if r["task"] == task]
            x, mask = padded([probed[r["video"]].float() for r in recs])
            asked = torch.tensor([vocab[key].index(r["meta"]["objects"][r["target"]][key]) for r in recs])
            answer = torch.tensor([r["answer_index"] for r in recs])
            is_test = torch.tensor([r["video"] in test_videos for r in recs])
            train_idx, test_idx = (~is_test).nonzero().flatten(), is_test.nonzero().flatten()
            sizes = (len(vocab[key]), len(recs[0]["options"]))
            curve = train_probe(
                x, mask, asked, answer, train_idx, test_idx, sizes, checkpoints, a.batch, a.seed
            )
            no_compression = CompressionConfig(enabled=False)
            model_ok = [
                score_mc(
                    chat(
                        model,
                        encoded[recs[i]["video"]],
                        recs[i]["prompt"],
                        generation={"max_new_tokens": 8, "do_sample": False},
                        compression=no_compression,
                    )[0],
                    recs[i]["answer_letter"],
                    recs[i]["options"],
                )
                for i in test_idx.tolist()
            ]
            model_acc = sum(model_ok) / max(1, len(model_ok))
            rows.append(
                [
                    task,
                    len(train_idx),
                    len(test_idx),
                    *(f"{100 * curve[c]:.1f}" for c in checkpoints),
                    f"{100 * model_acc:.1f}",
                ]
            )
            print(task, {c: round(v, 3) for c, v in curve.items()}, "model", round(model_acc, 3), flush=True)
    headers = ["task", "train q", "test q", *(f"probe @{c}" for c in checkpoints), "model"]
    body = (
        f"`{command_line()}`\n\n{machine_line()}; model `{Path(a.model).name}`, probe on `{a.tokens}` tokens; {time.time() - t0:.0f} s.\n"
        f"Held-out multi-object questions, accuracy in %. `probe @N`: the attention probe after N training "
        f"samples; `model`: the model's own greedy answer.\n\n" + markdown_table(headers, rows)
    )
    print(body)
    if not a.no_readme:
        append_readme("Binding probe: visual tokens vs the LLM (`probe_binding.py`)", body)


if __name__ == "__main__":
    main()
