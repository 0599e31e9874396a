"""ControlNet, as the sd-webui-controlnet extension exposes it through the API.

Torch-free parts live here: the unit fields of `alwayson_scripts` (`units`), the model
files of the ControlNet folders (`catalog`), the route-facing tables (`tables`). Loading the
networks and adding their residuals to the UNet is engine work (`webui_api.engine.control*`).
The preprocessors (`preprocessors`) turn an input image into a control map.
"""
