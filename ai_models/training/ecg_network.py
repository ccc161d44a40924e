"""The demonstration ECG rhythm network: a small 1-D CNN over 12 leads.

Seven conv blocks (conv, batch norm, ReLU, max-pool by 2) take 10 s at 250 Hz
(2500 samples) down to about 4 Hz; the receptive field of the last block is
about 2.5 s, enough to compare successive RR intervals down to 40 /min.  Global
average and max pooling then a linear layer give one *logit* per label: the
sigmoid is left to post-processing, as for the image models.  About 0.15 M
parameters, an ONNX file of about 0.6 MB.
"""

from __future__ import annotations

import torch
from torch import nn

ECG_CHANNELS = (16, 32, 48, 64, 64, 96, 96)
ECG_KERNELS = (7, 7, 7, 7, 7, 5, 5)


class EcgRhythmCnn(nn.Module):
    def __init__(self, num_labels: int = 4, in_leads: int = 12) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_leads
        for out, k in zip(ECG_CHANNELS, ECG_KERNELS, strict=True):
            layers += [nn.Conv1d(width, out, k, padding=k // 2, bias=False),
                       nn.BatchNorm1d(out), nn.ReLU(inplace=True), nn.MaxPool1d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def ecg_cnn(num_labels: int = 4) -> EcgRhythmCnn:
    return EcgRhythmCnn(num_labels)
