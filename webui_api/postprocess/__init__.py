"""Finished-image work after the engine: infotext text, image encoding and metadata reading.

`infotext` is plain text (no PIL); `encode` is the PIL seam for result images.
"""
