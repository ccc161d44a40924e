"""The two demonstration networks, built from MONAI so that the pipelines' pre- and
post-processing, the training script and the ONNX export agree on one definition."""

from __future__ import annotations

from monai.networks.nets import DenseNet121, UNet

#: U-Net feature maps per level: small enough for a CPU (≈0.15 M parameters, an
#: ONNX file well under 2 MB) and still enough for a phantom nodule.
CT_UNET_CHANNELS = (8, 16, 32, 64)


def cxr_densenet(num_labels: int = 2) -> DenseNet121:
    """DenseNet121 on one grey channel with one *logit* per label.

    The sigmoid is left to post-processing so that the exported graph is the
    same for every threshold and the logits can be compared in parity checks.
    """
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_labels)


def ct_unet() -> UNet:
    """A small 3-D residual U-Net: background and nodule logits per voxel.

    Batch norm rather than MONAI's default instance norm: sliding-window
    inference normalises each 64³ window on its own under instance norm, so a
    window of air and one of mediastinum would be scaled differently; batch
    norm's running statistics treat every window alike.
    """
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=CT_UNET_CHANNELS,
                strides=(2, 2, 2), num_res_units=1, norm="batch")
