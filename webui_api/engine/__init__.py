"""The generation engine: models, conditioning, noise, denoiser, pipeline.

Modules here import torch; the app imports them lazily so importing `webui_api` stays light.
"""
