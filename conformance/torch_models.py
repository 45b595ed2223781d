"""Torch architectures with random weights, built at test time: the models the PyTorch front
end is checked and measured on (tests/test_pytorch.py, benchmarks/bench_torch.py).

- :func:`resnet`: a ResNet-style CNN written in torch (basic blocks, batch norm with
  trained-looking statistics, global pooling, a linear head);
- :func:`bert`: a transformers ``BertModel`` from a ``BertConfig``;
- :func:`gpt2`: a transformers ``GPT2LMHeadModel`` from a ``GPT2Config``, and
  :func:`decoder_step`, one decoding step of it with its KV cache as plain tensors.

Nothing is downloaded (``HF_HUB_OFFLINE=1`` is set); every model is in eval mode. torch and
transformers are imported on first use: this module imports without them.
"""

from __future__ import annotations

import functools
import os
from typing import Any


def resnet(widths: tuple[int, ...] = (32, 64, 128, 256), classes: int = 100) -> Any:
    """One basic block per stage, each after the first halving the size."""
    return _classes()["ResNet"](widths, classes).eval()


def bert(hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128,
         vocab: int = 1000, positions: int = 128) -> Any:
    transformers = _transformers()
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=intermediate,
                                     max_position_embeddings=positions)
    return transformers.BertModel(config).eval()


def gpt2(embd: int = 64, layers: int = 2, heads: int = 4, vocab: int = 1000,
         positions: int = 128) -> Any:
    transformers = _transformers()
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=embd, n_layer=layers,
                                     n_head=heads, n_positions=positions, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def decoder_step(model: Any) -> Any:
    """``model`` (a GPT-2) as one decoding step over plain tensors: ``ids`` and the past
    keys and values of each layer in; logits and the grown keys and values out."""
    return _classes()["DecoderStep"](model).eval()


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs only: nothing to fetch
    import transformers

    return transformers


@functools.cache
def _classes() -> dict[str, type]:
    """The modules, defined on first use: they derive from ``torch.nn.Module``."""
    import torch

    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c: int, o: int, stride: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
            self.c2, self.b2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
            self.down = None if stride == 1 and c == o else nn.Sequential(
                nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o))

        def forward(self, x: Any) -> Any:
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet(nn.Module):
        def __init__(self, widths: tuple[int, ...], classes: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU())
            blocks, c = [], widths[0]
            for i, w in enumerate(widths):
                blocks.append(Block(c, w, 1 if i == 0 else 2))
                c = w
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(c, classes)
            with torch.no_grad():  # trained-looking statistics, not the identity
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.5, 0.5)
                        m.running_var.uniform_(0.5, 2.0)

        def forward(self, x: Any) -> Any:
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    class DecoderStep(nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, *past: Any) -> Any:
            from transformers import DynamicCache

            cache = DynamicCache()
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            return (out.logits, *(t for layer in out.past_key_values.layers
                                  for t in (layer.keys, layer.values)))

    return {"ResNet": ResNet, "DecoderStep": DecoderStep}
