"""`import_path` for Serve config files and KubeRay (`webui_api.cluster.entrypoint:app`).

The application is built from the same flags `launch.py` takes, read from the environment
variable WEBUI_API_ARGS (the config file's runtime_env sets it), with --ray implied.
"""

from __future__ import annotations

import os
import shlex

from ..cli import parse_args
from .deployments import build_application


def app_from_environment(variable: str = "WEBUI_API_ARGS") -> object:
    argv = shlex.split(os.environ.get(variable, ""))
    if "--ray" not in argv:
        argv.append("--ray")
    settings, _unknown = parse_args(argv)
    return build_application(settings)


app = app_from_environment()
