"""Face restorer models (GFPGAN, CodeFormer), where their files live, and the restore pipeline.

A1111 lists two restorers, CodeFormer then GFPGAN, each reading .pth files from its folder
(models/Codeformer, models/GFPGAN, or --codeformer-models-path / --gfpgan-models-path);
.safetensors files are accepted too. The face detector's weights are facexlib's
detection_Resnet50_Final.pth (or the MobileNet-0.25 variant), which A1111 keeps in
models/GFPGAN; the restorer's own folder and Codeformer/facelib are searched as well, also
for facexlib's optional face parser parsing_parsenet.pth (A1111's paste mask; without it the
soft square mask is used).

Both restorers load through spandrel. CodeFormer's architecture ships in the separate
`spandrel_extra_arches` package (non-commercial licence, the optional extra `codeformer`),
registered here in a private registry so spandrel's global one is never modified. A restorer
that cannot run (package or weights missing) is refused with a 400 naming what is missing.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from webui_api.errors import BadRequest
from webui_api.postprocess.face_restore.align import align_face, paste_face
from webui_api.postprocess.face_restore.cache import ModelKey, PostprocessModels
from webui_api.postprocess.face_restore.detector import FaceDetector, FixedFaces, RetinaFaceDetector

MODEL_EXTENSIONS = (".pth", ".safetensors")
PARSER_FILE = "parsing_parsenet"  # facexlib's face parser (A1111's use_parse paste mask), optional
DETECTOR_FILES = ("detection_Resnet50_Final", "detection_mobilenet0.25_Final")  # preferred first

FaceNet = Callable[[Any], Any]  # 1x3x512x512 RGB in [-1, 1] -> the same


class FaceRestorerUnavailable(BadRequest):
    """A restorer that cannot run here: unknown name, missing package or missing weights."""


@dataclass(frozen=True)
class RestorerKind:
    """One of A1111's face restorers."""

    name: str  # "CodeFormer" | "GFPGAN" (A1111's FaceRestoration.name())
    folder: str  # default folder under the models dir
    flag: str  # cmd flag (argparse dest) that moves the folder
    architecture: str  # spandrel architecture id
    example_file: str  # the file A1111 downloads, named in "missing weights" errors
    name_must_contain: str = ""  # A1111 only takes GFPGAN files whose name says GFPGAN

    def accepts(self, path: Path) -> bool:
        return path.suffix.lower() in MODEL_EXTENSIONS and self.name_must_contain in path.name


CODEFORMER = RestorerKind("CodeFormer", "Codeformer", "codeformer_models_path", "CodeFormer", "codeformer-v0.1.0.pth")
GFPGAN = RestorerKind("GFPGAN", "GFPGAN", "gfpgan_models_path", "GFPGAN", "GFPGANv1.4.pth", name_must_contain="GFPGAN")
KINDS = (CODEFORMER, GFPGAN)  # A1111's shared.face_restorers order


def face_restorer_items() -> list[dict[str, Any]]:
    """/sdapi/v1/face-restorers: A1111 lists both restorers (whatever files are present) in its
    order; cmd_dir is null there too."""
    return [{"name": kind.name, "cmd_dir": None} for kind in KINDS]


def find_kind(name: str | None) -> RestorerKind:
    for kind in KINDS:
        if name is not None and kind.name.lower() == str(name).lower():
            return kind
    raise FaceRestorerUnavailable(
        f"unknown face restoration model {name!r}", errors=f"expected one of {[k.name for k in KINDS]}"
    )


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FaceRestoreFolders:
    """The folders of both restorers (A1111's defaults or the --*-models-path flags)."""

    gfpgan: Path
    codeformer: Path

    @classmethod
    def from_settings(cls, settings: Any) -> FaceRestoreFolders:
        return cls.under(Path(settings.models_dir), settings.cmd_flags)

    @classmethod
    def under(cls, models_dir: Path, cmd_flags: Mapping[str, Any] | None = None) -> FaceRestoreFolders:
        flags = cmd_flags or {}

        def folder(kind: RestorerKind) -> Path:
            return Path(flags[kind.flag]) if flags.get(kind.flag) else models_dir / kind.folder

        return cls(gfpgan=folder(GFPGAN), codeformer=folder(CODEFORMER))

    def folder(self, kind: RestorerKind) -> Path:
        return self.gfpgan if kind is GFPGAN else self.codeformer

    def model_file(self, kind: RestorerKind) -> Path:
        """The restorer's weights: the last matching file by name (GFPGANv1.4 over v1.3)."""
        folder = self.folder(kind)
        files = sorted(p for p in folder.iterdir() if p.is_file() and kind.accepts(p)) if folder.is_dir() else []
        if not files:
            raise FaceRestorerUnavailable(
                f"{kind.name} weights not found: put {kind.example_file} (or a .safetensors file) in {folder}",
                errors=f"no {'*GFPGAN*' if kind.name_must_contain else '*'}.pth / .safetensors file in {folder}",
            )
        return files[-1]

    def parser_file(self, kind: RestorerKind) -> Path | None:
        """facexlib's parsing_parsenet weights, looked up where the detector is; None when
        absent (optional: the paste then uses the soft square mask)."""
        for folder in dict.fromkeys([self.gfpgan, self.folder(kind), self.codeformer / "facelib"]):
            for ext in MODEL_EXTENSIONS:
                if (folder / f"{PARSER_FILE}{ext}").is_file():
                    return folder / f"{PARSER_FILE}{ext}"
        return None

    def detector_file(self, kind: RestorerKind) -> Path:
        """facexlib's RetinaFace weights, from the GFPGAN folder (where A1111 keeps them), the
        restorer's own folder, or Codeformer/facelib."""
        folders = dict.fromkeys([self.gfpgan, self.folder(kind), self.codeformer / "facelib"])
        for stem in DETECTOR_FILES:
            for folder in folders:
                for ext in MODEL_EXTENSIONS:
                    if (folder / f"{stem}{ext}").is_file():
                        return folder / f"{stem}{ext}"
        raise FaceRestorerUnavailable(
            f"face detector weights not found: put {DETECTOR_FILES[0]}.pth in {self.gfpgan}",
            errors=f"searched {[str(f) for f in folders]} for {[s + '.pth' for s in DETECTOR_FILES]}",
        )


# --------------------------------------------------------------------------- loading


EXTRA_ARCHES_MISSING = (
    "CodeFormer needs the optional package spandrel_extra_arches (install the 'codeformer' extra; "
    "its licence is non-commercial)"
)


def check_architecture(kind: RestorerKind) -> None:
    """Refuse CodeFormer when its architecture package is absent, without importing anything
    heavy (this runs on the event loop, before a job is queued)."""
    from importlib.util import find_spec

    if kind is CODEFORMER and find_spec("spandrel_extra_arches") is None:
        raise FaceRestorerUnavailable(EXTRA_ARCHES_MISSING, errors="module spandrel_extra_arches not found")


def spandrel_registry(kind: RestorerKind) -> Any:
    """spandrel's registry, plus CodeFormer from spandrel_extra_arches (a private copy)."""
    import spandrel

    if kind is not CODEFORMER:
        return spandrel.MAIN_REGISTRY
    try:
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch
    except ImportError as exc:
        raise FaceRestorerUnavailable(EXTRA_ARCHES_MISSING, errors=str(exc)) from exc
    registry = spandrel.MAIN_REGISTRY.copy()
    registry.add(spandrel.ArchSupport.from_architecture(CodeFormerArch()), ignore_duplicates=True)
    return registry


def load_restorer(path: Path, kind: RestorerKind, device: str) -> Any:
    """The spandrel descriptor of a restorer file, in eval mode on `device` (fp32: neither
    architecture supports half precision in spandrel)."""
    import spandrel

    from webui_api.engine.device import resolve_device

    try:
        descriptor = spandrel.ModelLoader(registry=spandrel_registry(kind)).load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as {kind.name}",
                                      errors="spandrel recognises no architecture in its weights") from exc
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused code in the pickle
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as {kind.name}",
                                      errors=f"the pickle holds more than tensors (possibly code), so it was refused: "
                                             f"{exc}; convert it to .safetensors") from exc
    except (EOFError, OSError, ValueError) as exc:  # truncated or not a weights file at all
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as {kind.name}",
                                      errors=f"not a readable weights file ({type(exc).__name__}: {exc})") from exc
    found = descriptor.architecture.id
    if found != kind.architecture:
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as {kind.name}",
                                      errors=f"its weights are a {found} model, expected {kind.architecture}")
    descriptor.eval()
    return descriptor.to(resolve_device(device))


def load_detector(path: Path, device: str) -> RetinaFaceDetector:
    """RetinaFace from facexlib's weight file (strict key match), on `device`."""
    from webui_api.engine.device import resolve_device
    from webui_api.engine.loading.files import read_state_dict
    from webui_api.postprocess.face_restore.retinaface import build_from_state_dict

    try:
        net = build_from_state_dict(read_state_dict(path))
    except (ValueError, RuntimeError) as exc:
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as the face detector",
                                      errors=str(exc)[:500]) from exc
    return RetinaFaceDetector(net.to(resolve_device(device)))


def load_parser(path: Path, device: str) -> Any:
    """facexlib's ParseNet from its weight file (strict key match), on `device`."""
    from webui_api.engine.device import resolve_device
    from webui_api.engine.loading.files import read_state_dict
    from webui_api.postprocess.face_restore.parsenet import build_parsenet

    try:
        net = build_parsenet(read_state_dict(path))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise FaceRestorerUnavailable(f"cannot use {path.name} in {path.parent} as the face parser",
                                      errors=str(exc)[:500]) from exc
    return net.to(resolve_device(device))


def face_net(kind: RestorerKind, descriptor: Any, codeformer_weight: float) -> FaceNet:
    """How A1111 calls each network: GFPGAN with return_rgb=False, CodeFormer with the
    fidelity weight and adain=True; both return (image, ...)."""
    model = descriptor.model
    if kind is GFPGAN:
        return lambda x: model(x, return_rgb=False)[0]
    return lambda x: model(x, weight=codeformer_weight, adain=True)[0]


# --------------------------------------------------------------------------- the pipeline


def run_face_net(net: FaceNet, crop: np.ndarray, device: Any = "cpu") -> np.ndarray:
    """One aligned crop through a restorer: uint8 RGB -> [-1, 1] -> net -> uint8 RGB
    (truncated like A1111's astype('uint8'))."""
    import torch

    tensor = torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    tensor = ((tensor - 0.5) / 0.5).to(device)
    with torch.inference_mode():
        out = net(tensor)
    out = (out[0].float().cpu().clamp(-1, 1) + 1) / 2
    return (out.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def restore_faces_in(
    image: Image.Image, detector: FaceDetector, net: FaceNet, device: Any = "cpu", parser: Any = None
) -> Image.Image:
    """Detect, align, restore and paste every face; the image itself when none is found.

    Every crop is taken from the original pixels and pasted in detection order, as facexlib
    does. `parser` (a ParseNet) makes the paste mask from the restored face's parsing."""
    rgb = np.asarray(image.convert("RGB"))
    faces = detector.detect(rgb)
    if not faces:
        return image
    result = rgb.astype(np.float32)
    for face in faces:
        aligned = align_face(rgb, face.landmarks)
        restored = run_face_net(net, aligned.crop, device)
        parsed = None
        if parser is not None:
            from webui_api.postprocess.face_restore.parsenet import parse_mask

            parsed = parse_mask(parser, restored, device)
        result = paste_face(result, restored, aligned.matrix, parsed)
    return Image.fromarray(np.clip(result, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class RestoreRequest:
    """What one restoration needs: the model by A1111 name and CodeFormer's fidelity weight."""

    model: str
    codeformer_weight: float = 0.5
    unload_after: bool = False  # face_restoration_unload: move the models back to the CPU

    def __post_init__(self) -> None:
        if not 0.0 <= self.codeformer_weight <= 1.0:
            raise BadRequest(f"CodeFormer weight must be between 0 and 1, got {self.codeformer_weight}")


@dataclass
class FaceRestorers:
    """Face restoration for one server: its folders, its model cache, its device."""

    folders: FaceRestoreFolders
    models: PostprocessModels
    device: str = "cpu"

    @classmethod
    def from_settings(cls, settings: Any, models: PostprocessModels) -> FaceRestorers:
        return cls(FaceRestoreFolders.from_settings(settings), models, settings.device)

    def api_items(self) -> list[dict[str, Any]]:
        return face_restorer_items()

    def check(self, name: str | None) -> RestorerKind:
        """Refuse, before any work, a restorer that cannot run (400 naming what is missing)."""
        kind = find_kind(name)
        check_architecture(kind)
        self.folders.model_file(kind)
        self.folders.detector_file(kind)
        return kind

    def restore(self, image: Image.Image, request: RestoreRequest, detector: FaceDetector | None = None) -> Image.Image:
        """Restore the faces of one image with the named model (loaded once, then cached).

        Faces are detected first: an image without any never loads the restorer."""
        kind = self.check(request.model)
        detector = detector or self._detector(kind)
        if isinstance(detector, RetinaFaceDetector):
            self._on_device(detector.net)
        try:
            faces = detector.detect(np.asarray(image.convert("RGB")))
            if not faces:
                return image
            descriptor = self._on_device(self._restorer(kind))
            net = face_net(kind, descriptor, request.codeformer_weight)
            parser = self._parser(kind)
            return restore_faces_in(image, FixedFaces(tuple(faces)), net, descriptor.device, parser)
        finally:
            if request.unload_after:
                self._unload(kind)

    def _restorer(self, kind: RestorerKind) -> Any:
        path = self.folders.model_file(kind)
        return self.models.get(ModelKey(kind.name, path, self.device), lambda: load_restorer(path, kind, self.device))

    def _parser(self, kind: RestorerKind) -> Any:
        """facexlib's ParseNet when its file is present (A1111's paste mask), else None: the
        soft square mask is used, and nothing is refused for a missing parser."""
        path = self.folders.parser_file(kind)
        if path is None:
            return None
        return self._on_device(
            self.models.get(ModelKey("parser", path, self.device), lambda: load_parser(path, self.device))
        )

    def _detector(self, kind: RestorerKind) -> RetinaFaceDetector:
        path = self.folders.detector_file(kind)
        return self.models.get(ModelKey("detector", path, self.device), lambda: load_detector(path, self.device))

    def _on_device(self, model: Any) -> Any:
        """Bring a model (back) to the server's device: face_restoration_unload parks them."""
        from webui_api.engine.device import resolve_device

        return model.to(resolve_device(self.device))

    def _unload(self, kind: RestorerKind) -> None:
        """A1111's face_restoration_unload: models leave the GPU after use (kept in RAM)."""
        import torch

        if self.device == "cpu":
            return
        keys = [ModelKey(kind.name, self.folders.model_file(kind), self.device),
                ModelKey("detector", self.folders.detector_file(kind), self.device)]
        parser = self.folders.parser_file(kind)
        if parser is not None:
            keys.append(ModelKey("parser", parser, self.device))
        for key in keys:
            if key in self.models:
                model = self.models.get(key, lambda: None)
                (model.net if isinstance(model, RetinaFaceDetector) else model).to(torch.device("cpu"))


def restore_request(options: Mapping[str, Any]) -> RestoreRequest:
    """The restoration a generation job asks for, from its options (A1111's
    face_restoration_model, code_former_weight, face_restoration_unload)."""
    return RestoreRequest(
        str(options.get("face_restoration_model") or CODEFORMER.name),
        float(options.get("code_former_weight", 0.5)),
        bool(options.get("face_restoration_unload", False)),
    )


@dataclass
class JobFaceStep:
    """The image -> image step the engine runs on every decoded image of one job.

    With `keep_originals` (A1111's save_images_before_face_restoration while saving) it also
    keeps each image it was given, in the engine's call order, which is the result's image
    order; the route saves them as "-before-face-restoration" files. Keeping them here, in
    the step the route owns, leaves the engine's JobResult contract as it is."""

    faces: Any  # FaceRestorers
    request: RestoreRequest
    keep_originals: bool = False
    originals: list[Image.Image] = field(default_factory=list)

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.keep_originals:
            self.originals.append(image)
        return self.faces.restore(image, self.request)


def keeps_originals(options: Mapping[str, Any], save_images: bool) -> bool:
    """A1111 saves the image before restoration when samples are saved and the option is on."""
    return bool(
        save_images and options.get("samples_save", True) and options.get("save_images_before_face_restoration", False)
    )


def job_restorer(
    settings: Any, models: PostprocessModels, options: Mapping[str, Any], keep_originals: bool = False
) -> JobFaceStep:
    """For a job with restore_faces: the image -> image step the engine runs after decoding.
    Checked now (a missing model is a 400 before the job is queued), loaded on first use."""
    faces = FaceRestorers.from_settings(settings, models)
    request = restore_request(options)
    faces.check(request.model)
    return JobFaceStep(faces, request, keep_originals)
