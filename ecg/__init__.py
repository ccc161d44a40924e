"""12-lead ECG: waveform readers, signal quality, measurements, the cardiologists' queue."""
