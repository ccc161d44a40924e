"""AI pre-reads: model registry, ONNX Runtime runtime, pipelines, DICOM SR/SEG outputs."""
