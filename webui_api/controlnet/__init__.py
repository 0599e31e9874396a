"""ControlNet: sd-webui-controlnet's API (units, models, preprocessors) on top of the engine."""
