"""The demonstration tile classifier: a tiny 2-D CNN over 64 x 64 RGB tiles.

Four conv blocks (conv, batch norm, ReLU, max-pool by 2) take a 64 px tile (128 µm at
the 2 µm/px the pipeline reads) down to 4 x 4; global average and max pooling then a
linear layer give one *logit* per class (background, tissue, atypical).  The softmax is
left to post-processing, as for the other models, so the exported graph can be compared
with torch in the parity check.  About 25 k parameters, an ONNX file of about 0.1 MB:
it trains in a minute on two CPU threads, which keeps ``train tile`` reproducible and
quick enough for a test.
"""

from __future__ import annotations

import torch
from torch import nn

TILE_CHANNELS = (12, 24, 32, 48)


class TileCnn(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for out in TILE_CHANNELS:
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def tile_cnn(num_classes: int = 3) -> TileCnn:
    return TileCnn(num_classes)
