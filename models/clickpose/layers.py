"""Small building blocks shared by the encoder, the decoder and the prediction heads."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    State-dict names: ``layers.{i}.weight/bias`` (as the reference checkpoints).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


def _relu_in_place(x: Tensor) -> Tensor:
    return F.relu(x, inplace=True)


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """Activation of the transformer feed-forward blocks (config ``transformer_activation``), applied to a linear
    layer's fresh output. ReLU works in place there: the hidden tensor is the largest of the encoder (tokens x
    d_ffn), and a second one of that size costs an allocation and a pass over memory; autograd allows it, since the
    linear layer's backward does not need its output."""
    table = {"relu": _relu_in_place, "gelu": F.gelu, "glu": F.glu, "selu": F.selu}
    if name not in table:
        raise ValueError(f"transformer_activation must be one of {sorted(table)}, got {name!r}")
    return table[name]
