"""Pathology: whole-slide image ingest, tiles, slide quality, case routing."""
