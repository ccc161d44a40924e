"""Pipelines by the key a manifest names in ``pipeline:``.

A model folder names its pipeline rather than carrying code, so a manifest can
only ask for pre- and post-processing that this center ships and has tested.
"""

from __future__ import annotations

from collections.abc import Callable

from ai_models.manifest import Manifest
from ai_models.pipelines.base import Pipeline
from ai_models.pipelines.ct_nodule_seg import CtNoduleSegPipeline
from ai_models.pipelines.cxr_triage import CxrTriagePipeline
from ai_models.pipelines.ecg_rhythm import EcgRhythmPipeline
from ai_models.pipelines.wsi_tiles import PIPELINE_KEY as WSI_TILES
from ai_models.pipelines.wsi_tiles import WsiTilePipeline
from core.errors import InvalidInput

PIPELINES: dict[str, Callable[[Manifest], Pipeline]] = {
    "cxr_triage": CxrTriagePipeline,
    "ct_nodule_seg": CtNoduleSegPipeline,
    "ecg_rhythm": EcgRhythmPipeline,
    WSI_TILES: WsiTilePipeline,
}


def get_pipeline(manifest: Manifest) -> Pipeline:
    """The pipeline ``manifest.pipeline`` names, constructed for this manifest."""
    try:
        factory = PIPELINES[manifest.pipeline]
    except KeyError:
        raise InvalidInput(f"{manifest.ref}: model.yaml names pipeline "
                           f"{manifest.pipeline!r}, which this center does not have "
                           f"(it has {', '.join(sorted(PIPELINES))})") from None
    try:
        return factory(manifest)
    except ValueError as e:
        raise InvalidInput(str(e)) from e
