"""ControlNet preprocessors (annotators): sd-webui-controlnet's modules, names and sliders.

Public API: `run_preprocessor`, `find_module`, `list_modules`, `ModuleInfo`, `AnnotatorCache`,
`MissingAnnotatorFile`, `numpy_seed`, `annotator_dir_for`, `default_annotator_dir`, and for
/controlnet/control_types `all_tags` / `modules_for_tag`. Importing this package imports neither
torch nor OpenCV; they are imported when a module runs. See `annotators` for the folder layout
of the weight files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .annotators import AnnotatorCache, AnnotatorFileUnreadable, AnnotatorPackageMissing, MissingAnnotatorFile
from .call import PoseCallback
from .catalog import (
    AnnotatorFile,
    ModuleInfo,
    Slider,
    all_tags,
    find_module,
    list_modules,
    module_info,
    modules_for_tag,
)
from .runner import RUNNERS, numpy_seed, run_preprocessor

if TYPE_CHECKING:
    from ...settings import Settings

ANNOTATOR_FOLDER = "ControlNetAnnotators"


def default_annotator_dir(models_dir: Path) -> Path:
    """<models>/ControlNetAnnotators: beside models/ControlNet, so a scan for ControlNet models
    never mistakes an annotator .pth for one; its sub-folders are the extension's `downloads/` ones."""
    return Path(models_dir) / ANNOTATOR_FOLDER


def annotator_dir_for(settings: Settings) -> Path:
    """--controlnet-annotator-models-path (the extension's flag, read from the command-line flags)
    when given, else `default_annotator_dir(settings.models_dir)`."""
    configured = settings.cmd_flags.get("controlnet_annotator_models_path")
    return Path(configured) if configured else default_annotator_dir(settings.models_dir)


__all__ = [
    "ANNOTATOR_FOLDER", "RUNNERS", "AnnotatorCache", "AnnotatorFile", "AnnotatorFileUnreadable",
    "AnnotatorPackageMissing", "MissingAnnotatorFile", "ModuleInfo", "PoseCallback", "Slider", "all_tags",
    "annotator_dir_for", "default_annotator_dir", "find_module", "list_modules", "module_info", "modules_for_tag",
    "numpy_seed", "run_preprocessor",
]
