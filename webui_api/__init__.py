"""webui-api: a drop-in, offline replacement for the AUTOMATIC1111 web UI's HTTP API.

Importing this package has no side effects: no torch import, no device probing, no argv.
"""

__version__ = "0.1.0"
