"""The fuzz targets: name -> harness module (see :mod:`fuzz.harnesses`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"

#: Every parser that reads input from outside the center, by the name of its corpus.
TARGETS: dict[str, str] = {
    "inspect_encoded": "fuzz.harnesses.inspect_encoded",
    "gateway_stream": "fuzz.harnesses.gateway_stream",
    "ecg_dicom": "fuzz.harnesses.ecg_dicom",
    "ecg_aecg": "fuzz.harnesses.ecg_aecg",
    "ecg_wfdb_zip": "fuzz.harnesses.ecg_wfdb_zip",
    "ecg_wfdb_record": "fuzz.harnesses.ecg_wfdb_record",
    "dicomweb_path": "fuzz.harnesses.dicomweb_path",
    "report_verify": "fuzz.harnesses.report_verify",
    "proxy_header": "fuzz.harnesses.proxy_header",
}


def harness(name: str) -> ModuleType:
    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r}; known: {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name])


def corpus(name: str) -> Path:
    return CORPUS_DIR / name
