"""The preprocessor catalog: names, UI aliases, sliders and annotator files, as sd-webui-controlnet lists them.

Clients pick a module by its internal name ("depth") or its UI alias ("depth_midas"), read
/controlnet/module_list to build their menus, and send `processor_res` / `threshold_a` /
`threshold_b` that the extension clamps back to each slider's default when they are -1 or out
of range. This table reproduces those facts (names, aliases, slider labels, ranges, defaults,
steps, sort priorities) for every module this server can run; modules it cannot run are not
listed, so a client never picks one that would fail.

Pure data and lookups: no numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ValidationFailed


@dataclass(frozen=True)
class Slider:
    """One slider of the extension's UI; `api_json` is what module_detail shows for it."""

    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 0.01
    visible: bool = True

    def api_json(self) -> dict[str, float | str]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}

    def resolve(self, value: float | None) -> float:
        """The extension's bound check: -1, missing or out-of-range values become the default."""
        if value is None or value < self.minimum or value > self.maximum:
            return self.value
        return value


@dataclass(frozen=True)
class AnnotatorFile:
    """A weight file a model-based module loads: `<annotator dir>/<folder>/<filename>`.

    `folder` and `filename` are those of the extension's `annotator/downloads/` folder, so an
    existing download folder can be reused as the annotator directory unchanged.
    """

    folder: str
    filename: str
    url: str  # where the file can be downloaded by hand; we never download it ourselves


@dataclass(frozen=True)
class ModuleInfo:
    """One preprocessor: `name` is the internal key, `alias` the UI label (both accepted)."""

    name: str
    alias: str
    resolution: Slider
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    model_free: bool = False  # the extension's flag: usable without a ControlNet model (reference_*)
    annotator_files: tuple[AnnotatorFile, ...] = ()
    priority: int = 0
    tags: tuple[str, ...] = ()

    @property
    def needs_annotator(self) -> bool:
        return bool(self.annotator_files)

    def sliders(self) -> list[Slider]:
        """The visible sliders in the extension's order: resolution, threshold A, threshold B."""
        return [s for s in (self.resolution, self.threshold_a, self.threshold_b) if s is not None and s.visible]

    def detail(self) -> dict[str, object]:
        """This module's entry in /controlnet/module_list's `module_detail`."""
        return {"model_free": self.model_free, "sliders": [s.api_json() for s in self.sliders()]}


# --- slider constants (the extension's values) ------------------------------------------------

RESOLUTION = Slider("Resolution", 512, 64, 2048, step=8)
HIDDEN_RESOLUTION = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, visible=False)
# shuffle hides its resolution slider with a default of 512 on a 0..1 range: every request runs at 512
FIXED_512_RESOLUTION = Slider("EMPTY_LABEL", 512, 0.0, 1.0, visible=False)

_HF = "https://huggingface.co/lllyasviel/Annotators/resolve/main/"
_HF_CN = "https://huggingface.co/lllyasviel/ControlNet/resolve/main/annotator/ckpts/"

HED_FILE = AnnotatorFile("hed", "ControlNetHED.pth", _HF + "ControlNetHED.pth")
PIDINET_FILE = AnnotatorFile("pidinet", "table5_pidinet.pth", _HF + "table5_pidinet.pth")
LINEART_FILE = AnnotatorFile("lineart", "sk_model.pth", _HF + "sk_model.pth")
LINEART_COARSE_FILE = AnnotatorFile("lineart", "sk_model2.pth", _HF + "sk_model2.pth")
LINEART_ANIME_FILE = AnnotatorFile("lineart_anime", "netG.pth", _HF + "netG.pth")
MIDAS_FILE = AnnotatorFile("midas", "dpt_hybrid-midas-501f0c75.pt", _HF_CN + "dpt_hybrid-midas-501f0c75.pt")
MLSD_FILE = AnnotatorFile("mlsd", "mlsd_large_512_fp32.pth", _HF_CN + "mlsd_large_512_fp32.pth")
NORMAL_BAE_FILE = AnnotatorFile("normal_bae", "scannet.pt", _HF + "scannet.pt")
OPENPOSE_BODY_FILE = AnnotatorFile("openpose", "body_pose_model.pth", _HF + "body_pose_model.pth")
OPENPOSE_HAND_FILE = AnnotatorFile("openpose", "hand_pose_model.pth", _HF + "hand_pose_model.pth")
OPENPOSE_FACE_FILE = AnnotatorFile("openpose", "facenet.pth", _HF + "facenet.pth")
LERES_FILE = AnnotatorFile("leres", "res101.pth", _HF + "res101.pth")
ZOE_FILE = AnnotatorFile("zoedepth", "ZoeD_M12_N.pt", _HF + "ZoeD_M12_N.pt")
UNIFORMER_FILE = AnnotatorFile("uniformer", "upernet_global_small.pth", _HF_CN + "upernet_global_small.pth")


def _module(name: str, alias: str | None = None, **kwargs: object) -> ModuleInfo:
    kwargs.setdefault("resolution", RESOLUTION)
    return ModuleInfo(name=name, alias=alias or name, **kwargs)  # type: ignore[arg-type]


_STYLE_FIDELITY = Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0)
_GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, step=0.001)
_OPENPOSE = ("OpenPose",)

MODULES: tuple[ModuleInfo, ...] = (
    # weight-free
    _module("none", priority=10, tags=("InstructP2P",)),
    _module("invert", "invert (from white bg & black line)", resolution=HIDDEN_RESOLUTION, priority=20,
            tags=("Canny", "Lineart", "Scribble", "MLSD")),
    _module("canny", threshold_a=Slider("Low Threshold", 100, 1, 255, step=1),
            threshold_b=Slider("High Threshold", 200, 1, 255, step=1), priority=100, tags=("Canny",)),
    _module("blur_gaussian", threshold_a=Slider("Sigma", 9.0, 0.01, 64.0), tags=("Tile",)),
    _module("scribble_xdog", threshold_a=Slider("XDoG Threshold", 32, 1, 64), tags=("Scribble", "SparseCtrl")),
    _module("shuffle", resolution=FIXED_512_RESOLUTION, tags=("Shuffle",)),
    _module("threshold", threshold_a=Slider("Binarization Threshold", 127, 0, 255)),
    _module("binary", threshold_a=Slider("Binary threshold", 0, 0, 255)),  # older extension versions
    _module("color", "t2ia_color_grid", tags=("T2I-Adapter",)),
    _module("tile_resample", threshold_a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0), priority=100, tags=("Tile",)),
    _module("tile_colorfix", threshold_a=Slider("Variation", 8.0, 3.0, 32.0, step=1.0), tags=("Tile",)),
    _module("tile_colorfix+sharp", threshold_a=Slider("Variation", 8.0, 3.0, 32.0, step=1.0),
            threshold_b=Slider("Sharpness", 1.0, 0.0, 2.0), tags=("Tile",)),
    _module("lineart_standard", "lineart_standard (from white bg & black line)", priority=100, tags=("Lineart",)),
    _module("recolor_luminance", threshold_a=_GAMMA, priority=100, tags=("Recolor",)),
    _module("recolor_intensity", threshold_a=_GAMMA, tags=("Recolor",)),
    _module("reference_only", threshold_a=_STYLE_FIDELITY, model_free=True, priority=100, tags=("Reference",)),
    _module("reference_adain", threshold_a=_STYLE_FIDELITY, model_free=True, tags=("Reference",)),
    _module("reference_adain+attn", threshold_a=_STYLE_FIDELITY, model_free=True, tags=("Reference",)),
    # model-based (annotator weights from the local annotator folder)
    _module("depth", "depth_midas", annotator_files=(MIDAS_FILE,), priority=100, tags=("Depth",)),
    _module("depth_leres", threshold_a=Slider("Remove Near %", 0, 0, 100, step=0.1),
            threshold_b=Slider("Remove Background %", 0, 0, 100, step=0.1), annotator_files=(LERES_FILE,),
            tags=("Depth",)),
    _module("depth_zoe", annotator_files=(ZOE_FILE,), tags=("Depth",)),
    _module("normal_map", "normal_midas", threshold_a=Slider("Normal Background Threshold", 0.4, 0.0, 1.0),
            annotator_files=(MIDAS_FILE,), tags=("NormalMap",)),
    _module("normal_bae", annotator_files=(NORMAL_BAE_FILE,), priority=100, tags=("NormalMap",)),
    _module("hed", "softedge_hed", annotator_files=(HED_FILE,), tags=("SoftEdge",)),
    _module("hed_safe", "softedge_hedsafe", annotator_files=(HED_FILE,), tags=("SoftEdge",)),
    _module("scribble_hed", annotator_files=(HED_FILE,), tags=("Scribble", "SparseCtrl")),
    _module("pidinet", "softedge_pidinet", annotator_files=(PIDINET_FILE,), priority=100, tags=("SoftEdge",)),
    _module("pidinet_safe", "softedge_pidisafe", annotator_files=(PIDINET_FILE,), tags=("SoftEdge",)),
    _module("pidinet_scribble", "scribble_pidinet", annotator_files=(PIDINET_FILE,), priority=100,
            tags=("Scribble", "SparseCtrl")),
    _module("pidinet_sketch", "t2ia_sketch_pidi", annotator_files=(PIDINET_FILE,), tags=("T2I-Adapter",)),
    _module("lineart", "lineart_realistic", annotator_files=(LINEART_FILE,), tags=("Lineart",)),
    _module("lineart_coarse", annotator_files=(LINEART_COARSE_FILE,), tags=("Lineart",)),
    _module("lineart_anime", annotator_files=(LINEART_ANIME_FILE,), tags=("Lineart",)),
    _module("mlsd", threshold_a=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0),
            threshold_b=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0),
            annotator_files=(MLSD_FILE,), priority=100, tags=("MLSD",)),
    _module("segmentation", "seg_ufade20k", annotator_files=(UNIFORMER_FILE,), tags=("Segmentation",)),
    _module("openpose", annotator_files=(OPENPOSE_BODY_FILE,), tags=_OPENPOSE),
    _module("openpose_hand", annotator_files=(OPENPOSE_BODY_FILE, OPENPOSE_HAND_FILE), tags=_OPENPOSE),
    _module("openpose_face", annotator_files=(OPENPOSE_BODY_FILE, OPENPOSE_FACE_FILE), tags=_OPENPOSE),
    _module("openpose_faceonly", annotator_files=(OPENPOSE_BODY_FILE, OPENPOSE_FACE_FILE), tags=_OPENPOSE),
    _module("openpose_full", annotator_files=(OPENPOSE_BODY_FILE, OPENPOSE_HAND_FILE, OPENPOSE_FACE_FILE),
            priority=100, tags=_OPENPOSE),
)


@dataclass(frozen=True)
class _Index:
    """Case-insensitive lookup of names and aliases, built once from MODULES."""

    by_key: dict[str, ModuleInfo] = field(default_factory=dict)

    @classmethod
    def build(cls, modules: tuple[ModuleInfo, ...]) -> _Index:
        keys: dict[str, ModuleInfo] = {}
        for info in modules:
            keys.setdefault(info.alias.lower(), info)
        for info in modules:  # internal names win over aliases, like the extension's lookup order
            keys[info.name.lower()] = info
        return cls(by_key=keys)


_INDEX = _Index.build(MODULES)


def module_info(name: str) -> ModuleInfo:
    """The module a client named (internal name or UI alias, any case); 422 when unknown."""
    info = _INDEX.by_key.get(str(name).strip().lower())
    if info is None:
        raise ValidationFailed(
            "Module not available",
            errors=(
                f"ControlNet module {name!r} is not one this server provides; GET /controlnet/module_list lists them"
            ),
        )
    return info


def find_module(name: str) -> str:
    """Canonical (internal) name of a module from its name or alias, case-insensitive."""
    return module_info(name).name


def list_modules() -> list[ModuleInfo]:
    """Every module in the extension's order: "none" first, then by priority and label, descending."""
    rest = [m for m in MODULES if m.name != "none"]
    rest.sort(key=lambda m: str(m.priority).zfill(8) + m.alias, reverse=True)
    return [_INDEX.by_key["none"], *rest]


def all_tags() -> list[str]:
    """The control types of /controlnet/control_types: "All", then every module tag sorted."""
    return ["All", *sorted({tag for m in MODULES for tag in m.tags})]


def modules_for_tag(tag: str) -> list[ModuleInfo]:
    """The modules of one control type in list order ("none" always first, every module for "All").

    The extension's default preprocessor for a type is the second entry (the first after
    "none") when there is one.
    """
    modules = list_modules()
    if tag == "All":
        return modules
    return [m for m in modules if tag in m.tags or m.name == "none"]
