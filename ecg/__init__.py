"""12-lead ECG: waveform readers, signal quality, measurements, the cardiologists' queue.

Public entry points: :func:`ecg.readers.read_ecg` (bytes -> :class:`ecg.signal.Ecg12`)
and :func:`ecg.analyze.analyze` (-> :class:`ecg.analyze.Analysis`).
"""
