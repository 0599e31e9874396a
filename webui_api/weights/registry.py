"""The pinned registry of weight files a stock A1111 install downloads on first use.

Every entry records what A1111 v1.10 fetches (its folder under `models/`, the file name it
saves as, the official URL) plus what this server adds to make the download safe to
automate: the expected size and sha256 (from the model authors' releases; `None` where no
published or independently recorded digest could be established: such a file is fetched
only with an explicit `--allow-unverified`) and the licence, so `webui-api models list`
tells an operator what they are about to install.

Pure data and lookups: no network, no torch, no mutable module state. Tests inject their
own entries with `WeightsRegistry.with_entries`, which returns a new registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from webui_api.errors import NotFound

HF = "https://huggingface.co"
GITHUB = "https://github.com"

# Kinds group entries for listing and for the code that resolves them.
UPSCALER = "upscaler"
FACE = "face restoration"
INTERROGATE = "interrogate"
TAESD = "taesd"
VAE_APPROX = "vae approx"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class WeightFile:
    """One pinned file: where A1111 keeps it, where it comes from, how to check it."""

    name: str  # registry name; for upscalers A1111's listed name ("R-ESRGAN 4x+")
    kind: str  # UPSCALER | FACE | INTERROGATE | TAESD | VAE_APPROX | CHECKPOINT
    folder: str  # A1111's folder under models/ ("RealESRGAN"); see folders.WeightFolders
    filename: str  # the file name A1111 saves it as
    url: str  # the official origin A1111 downloads from
    sha256: str | None  # lower-case hex; None: not established, needs --allow-unverified
    size: int | None  # bytes, when known (progress and a sanity check only)
    licence: str
    scale: int | None = None  # upscalers: the scale A1111 lists (4 for the 1x ScuNET denoisers, as A1111 does)

    @property
    def verified(self) -> bool:
        return self.sha256 is not None


def _upscaler(name: str, folder: str, filename: str, url: str, sha256: str | None, size: int | None,
              licence: str, scale: int) -> WeightFile:
    return WeightFile(name, UPSCALER, folder, filename, url, sha256, size, licence, scale)


_REAL_ESRGAN = f"{GITHUB}/xinntao/Real-ESRGAN/releases/download"
_KAIR = f"{GITHUB}/cszn/KAIR/releases/download/v1.0"
_DAT = f"{HF}/w-e-w/DAT/resolve/main/experiments/pretrained_models/DAT"
_TAESD = f"{GITHUB}/madebyollin/taesd/raw/main"

# A1111 modules/esrgan_model.py, realesrgan_model.py, dat_model.py and the SwinIR / ScuNET
# built-in extensions. File names are the ones A1111 saves under (ESRGAN_4x.pth, SwinIR_4x.pth
# and ScuNET.pth are renamed on download; the others keep the URL's name).
UPSCALERS: tuple[WeightFile, ...] = (
    _upscaler("ESRGAN_4x", "ESRGAN", "ESRGAN_4x.pth", f"{_KAIR}/ESRGAN.pth",
              "65fece06e1ccb48853242aa972bdf00ad07a7dd8938d2dcbdf4221b59f6372ce", None, "MIT (KAIR)", 4),
    _upscaler("R-ESRGAN General 4xV3", "RealESRGAN", "realesr-general-x4v3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",
              "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", 4885111, "BSD-3-Clause", 4),
    _upscaler("R-ESRGAN General WDN 4xV3", "RealESRGAN", "realesr-general-wdn-x4v3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
              "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca", 4885111, "BSD-3-Clause", 4),
    _upscaler("R-ESRGAN AnimeVideo", "RealESRGAN", "realesr-animevideov3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth",
              "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d", 2504012, "BSD-3-Clause", 4),
    _upscaler("R-ESRGAN 4x+", "RealESRGAN", "RealESRGAN_x4plus.pth", f"{_REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",
              "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67040989, "BSD-3-Clause", 4),
    _upscaler("R-ESRGAN 4x+ Anime6B", "RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth",
              f"{_REAL_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
              "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", 17938799, "BSD-3-Clause", 4),
    _upscaler("R-ESRGAN 2x+", "RealESRGAN", "RealESRGAN_x2plus.pth", f"{_REAL_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",
              "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67061725, "BSD-3-Clause", 2),
    _upscaler("SwinIR 4x", "SwinIR", "SwinIR_4x.pth",
              f"{GITHUB}/JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
              "99adfa91350a84c99e946c1eb3d8fce34bc28f57d807b09dc8fe40a316328c0a", None, "Apache-2.0", 4),
    # A1111 saves "ScuNET GAN" as ScuNET.pth; for "ScuNET PSNR" it (by a bug) fetches the GAN
    # weights again. Here PSNR gets its own file, as the name promises.
    _upscaler("ScuNET GAN", "ScuNET", "ScuNET.pth", f"{_KAIR}/scunet_color_real_gan.pth", None, None, "Apache-2.0", 4),
    _upscaler("ScuNET PSNR", "ScuNET", "scunet_color_real_psnr.pth", f"{_KAIR}/scunet_color_real_psnr.pth",
              "fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e", 71982841, "Apache-2.0", 4),
    _upscaler("DAT x2", "DAT", "DAT_x2.pth", f"{_DAT}/DAT_x2.pth",
              "7760aa96e4ee77e29d4f89c3a4486200042e019461fdb8aa286f49aa00b89b51", None, "Apache-2.0", 2),
    _upscaler("DAT x3", "DAT", "DAT_x3.pth", f"{_DAT}/DAT_x3.pth",
              "581973e02c06f90d4eb90acf743ec9604f56f3c2c6f9e1e2c2b38ded1f80d197", None, "Apache-2.0", 3),
    _upscaler("DAT x4", "DAT", "DAT_x4.pth", f"{_DAT}/DAT_x4.pth",
              "391a6ce69899dff5ea3214557e9d585608254579217169faf3d4c353caff049e", None, "Apache-2.0", 4),
)

# A1111 modules/gfpgan_model.py, codeformer_model.py; facexlib's detector and parser, which
# A1111 redirects into the GFPGAN folder (face_restoration_utils.patch_facexlib).
FACE_FILES: tuple[WeightFile, ...] = (
    WeightFile("GFPGAN", FACE, "GFPGAN", "GFPGANv1.4.pth",
               f"{GITHUB}/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
               "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348632874, "Apache-2.0"),
    WeightFile("CodeFormer", FACE, "Codeformer", "codeformer-v0.1.0.pth",
               f"{GITHUB}/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
               "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", 376637898,
               "NTU S-Lab License 1.0 (non-commercial)"),
    WeightFile("facexlib detection", FACE, "GFPGAN", "detection_Resnet50_Final.pth",
               f"{GITHUB}/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
               "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", 109497761, "MIT"),
    WeightFile("facexlib parsing", FACE, "GFPGAN", "parsing_parsenet.pth",
               f"{GITHUB}/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
               "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", 85331193, "MIT"),
)

# A1111 modules/interrogate.py (BLIP caption model, OpenAI CLIP ViT-L/14 via clip.load, whose
# URL carries the file's sha256) and modules/deepbooru.py.
INTERROGATE_FILES: tuple[WeightFile, ...] = (
    WeightFile("BLIP caption", INTERROGATE, "BLIP", "model_base_caption_capfilt_large.pth",
               "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base_caption_capfilt_large.pth",
               None, 896081425, "BSD-3-Clause"),
    WeightFile("CLIP ViT-L/14", INTERROGATE, "CLIP", "ViT-L-14.pt",
               "https://openaipublic.azureedge.net/clip/models/"
               "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
               "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", None, "MIT"),
    WeightFile("deepdanbooru", INTERROGATE, "torch_deepdanbooru", "model-resnet_custom_v3.pt",
               f"{GITHUB}/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt",
               None, None, "MIT"),
)

# A1111 modules/sd_vae_taesd.py: models/VAE-taesd/<name>, from the TAESD repository.
TAESD_FILES: tuple[WeightFile, ...] = tuple(
    WeightFile(stem, TAESD, "VAE-taesd", f"{stem}.pth", f"{_TAESD}/{stem}.pth", None, None, "MIT")
    for stem in ("taesd_decoder", "taesd_encoder", "taesdxl_decoder", "taesdxl_encoder",
                 "taesd3_decoder", "taesd3_encoder")
)

# A1111 modules/sd_vae_approx.py ("Approx NN" live previews): models/VAE-approx/<name>. A1111
# ships model.pt (SD1/SD2) in its own repository (unchanged since it was added, 213777 bytes;
# the digest is of that file, fetched here from the v1.10.1 tree) and downloads the SDXL and SD3
# files from its v1.0.0-pre release, with no published digest.
_A1111 = f"{GITHUB}/AUTOMATIC1111/stable-diffusion-webui"
VAE_APPROX_FILES: tuple[WeightFile, ...] = (
    WeightFile("vaeapprox-sd1", VAE_APPROX, "VAE-approx", "model.pt",
               f"{_A1111}/raw/v1.10.1/models/VAE-approx/model.pt",
               "4f88c9078bb2238cdd0d8864671dd33e3f42e091e41f08903f3c15e4a54a9b39", 213777, "AGPL-3.0"),
    WeightFile("vaeapprox-sdxl", VAE_APPROX, "VAE-approx", "vaeapprox-sdxl.pt",
               f"{_A1111}/releases/download/v1.0.0-pre/vaeapprox-sdxl.pt", None, None, "AGPL-3.0"),
    WeightFile("vaeapprox-sd3", VAE_APPROX, "VAE-approx", "vaeapprox-sd3.pt",
               f"{_A1111}/releases/download/v1.0.0-pre/vaeapprox-sd3.pt", None, None, "AGPL-3.0"),
)

# A1111 modules/sd_models.list_models: downloaded when no checkpoint exists (unless
# --no-download-sd-model); its sha256 is the one A1111 checks.
CHECKPOINT_FILES: tuple[WeightFile, ...] = (
    WeightFile("v1-5-pruned-emaonly", CHECKPOINT, "Stable-diffusion", "v1-5-pruned-emaonly.safetensors",
               f"{HF}/runwayml/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
               "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", 4265146304, "CreativeML OpenRAIL-M"),
)

BUILTIN_FILES: tuple[WeightFile, ...] = (UPSCALERS + FACE_FILES + INTERROGATE_FILES + TAESD_FILES + VAE_APPROX_FILES
                                         + CHECKPOINT_FILES)


class UnknownWeights(NotFound):
    """A weights name the registry does not have."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(f"no pinned weights named {name!r}", errors=f"known names: {sorted(known)}")


@dataclass(frozen=True)
class WeightsRegistry:
    """Pinned files by name (case-insensitive lookup, listing in registration order)."""

    files: Mapping[str, WeightFile]

    @classmethod
    def builtin(cls) -> WeightsRegistry:
        return cls.of(BUILTIN_FILES)

    @classmethod
    def of(cls, entries: Iterable[WeightFile]) -> WeightsRegistry:
        return cls(MappingProxyType({entry.name: entry for entry in entries}))

    def with_entries(self, *entries: WeightFile) -> WeightsRegistry:
        """A new registry with `entries` added or replacing same-named ones (tests pin their
        own files and digests this way; the built-in registry is never modified)."""
        return WeightsRegistry.of([*self.files.values(), *entries])

    def with_sha256(self, name: str, sha256: str | None, size: int | None = None) -> WeightsRegistry:
        """A new registry where `name` expects another digest (and size)."""
        return self.with_entries(replace(self.get(name), sha256=sha256, size=size))

    def get(self, name: str) -> WeightFile:
        found = self.find(name)
        if found is None:
            raise UnknownWeights(name, self.files)
        return found

    def find(self, name: str) -> WeightFile | None:
        if name in self.files:
            return self.files[name]
        wanted = name.lower()
        return next((entry for key, entry in self.files.items() if key.lower() == wanted), None)

    def names(self) -> list[str]:
        return list(self.files)

    def of_kind(self, kind: str) -> list[WeightFile]:
        return [entry for entry in self.files.values() if entry.kind == kind]

    def in_folder(self, folder: str) -> list[WeightFile]:
        return [entry for entry in self.files.values() if entry.folder == folder]

    def __iter__(self) -> Iterator[WeightFile]:
        return iter(self.files.values())

    def __len__(self) -> int:
        return len(self.files)
