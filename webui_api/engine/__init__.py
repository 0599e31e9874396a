"""The generation engine: models, conditioning, noise, denoiser, pipeline.

Modules here import torch (protocols.py excepted: the rest of the server types against it);
the app imports them lazily so importing `webui_api` stays light.
"""
