"""A1111's interrogators behind POST /sdapi/v1/interrogate: BLIP caption + CLIP ranking ("clip")
and the DeepDanbooru tagger ("deepdanbooru").

Torch and transformers are imported by the model modules (blip, clip, deepdanbooru, service's
calls) only when a model is used, never by importing this package. The category lists and the
BERT vocabulary BLIP's decoder needs ship in `data/`.
"""
