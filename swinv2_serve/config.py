"""SwinV2 configurations: the architecture and the preprocessing a checkpoint needs, as data.

Every name follows timm (``swinv2_tiny_window8_256`` ...) plus the paper's SwinV2-H and SwinV2-G.
A config is resolved once (windows shrunk to the feature map, CPB normaliser fixed) so the model,
the deploy form and the export metadata all read the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._version import __version__
from .contract import ExportMetadata
from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def _per_stage(value: int | tuple[int, ...] | list[int], num_stages: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * num_stages
    value = tuple(int(v) for v in value)
    if len(value) != num_stages:
        raise ConfigError(f"{what} needs one value per stage ({num_stages}), got {value}")
    return value


@dataclass(frozen=True)
class SwinV2Config:
    """Architecture + preprocessing of one SwinV2 model.

    ``window_size`` is the requested window per stage; ``stage_windows`` is what each stage really
    uses (a window never exceeds its feature map). ``pretrained_window_sizes`` is the CPB normaliser:
    the window size, per stage, at which the CPB meta-network was trained.
    """

    name: str
    img_size: tuple[int, int] = (256, 256)
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, ...] = (8, 8, 8, 8)
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    extra_norm_period: int = 0  # SwinV2-H/G: a LayerNorm on the main branch every N blocks
    attn_chunk_windows: int | None = None
    # preprocessing (timm's pretrained cfgs)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    labels: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", _pair(self.img_size))
        n = len(self.depths)
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", _per_stage(self.num_heads, n, "num_heads"))
        object.__setattr__(self, "window_size", _per_stage(self.window_size, n, "window_size"))
        object.__setattr__(
            self, "pretrained_window_sizes", _per_stage(self.pretrained_window_sizes, n, "pretrained_window_sizes")
        )
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(s) for s in self.labels))
        self.validate()

    # -- derived geometry -------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    @property
    def patch_grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def stage_resolutions(self) -> tuple[tuple[int, int], ...]:
        """Feature map (H, W) each stage's blocks run at; patch merging rounds odd sizes up."""
        h, w = self.patch_grid
        out = []
        for i in range(self.num_stages):
            if i > 0:
                h, w = (h + 1) // 2, (w + 1) // 2
            out.append((h, w))
        return tuple(out)

    @property
    def stage_windows(self) -> tuple[tuple[int, int], ...]:
        """Window per stage after shrinking to the feature map."""
        return tuple(
            (min(ws, h), min(ws, w)) for ws, (h, w) in zip(self.window_size, self.stage_resolutions)
        )

    @property
    def stage_shifts(self) -> tuple[tuple[int, int], ...]:
        """Shift of the odd blocks per stage: half the window, 0 where the window covers the map."""
        return tuple(
            (0 if h <= wh else wh // 2, 0 if w <= ww else ww // 2)
            for (wh, ww), (h, w) in zip(self.stage_windows, self.stage_resolutions)
        )

    @property
    def cpb_normalisers(self) -> tuple[tuple[int, int], ...]:
        """Window size the relative coordinates are scaled by (pretrained window, else own window)."""
        return tuple(
            (p, p) if p > 0 else win for p, win in zip(self.pretrained_window_sizes, self.stage_windows)
        )

    # -- checks and (de)serialisation --------------------------------------------------------
    def validate(self) -> None:
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"img_size {self.img_size} is not a multiple of the patch size {self.patch_size}; "
                f"use e.g. {self.patch_size * max(1, round(h / self.patch_size))}"
            )
        min_size = self.patch_size * 2 ** (self.num_stages - 1)
        if h < min_size or w < min_size:
            raise ConfigError(f"img_size {self.img_size} is too small: {self.name} needs at least {min_size}px")
        if any(ws < 1 for ws in self.window_size):
            raise ConfigError(f"window_size must be >= 1, got {self.window_size}")
        for dim, heads in zip(self.stage_dims, self.num_heads):
            if dim % heads:
                raise ConfigError(f"stage dim {dim} is not divisible by {heads} heads")
        if self.attn_chunk_windows is not None and self.attn_chunk_windows < 1:
            raise ConfigError(f"attn_chunk_windows must be >= 1, got {self.attn_chunk_windows}")

    def replace(self, **changes: Any) -> SwinV2Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwinV2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown SwinV2Config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def metadata(self, *, fp16: bool = False, opset: int | None = None) -> ExportMetadata:
        """What a model built from this config says about itself (written into every export and checkpoint)."""
        return ExportMetadata(
            model=self.name,
            img_size=self.img_size,
            window_sizes=tuple(h for h, _ in self.stage_windows),
            pretrained_window_sizes=tuple(h for h, _ in self.cpb_normalisers),
            num_classes=self.num_classes,
            labels=self.labels,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            fp16=fp16,
            opset=opset,
            config=self.to_dict(),
            swinv2_serve_version=__version__,
        )


def _preset(name: str, *, img: int, window: int, embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...],
            pretrained: tuple[int, ...] = (0, 0, 0, 0), **kw: Any) -> SwinV2Config:
    return SwinV2Config(name=name, img_size=(img, img), window_size=(window,) * len(depths), embed_dim=embed_dim,
                        depths=depths, num_heads=heads, pretrained_window_sizes=pretrained, **kw)


_T = dict(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), heads=(6, 12, 24, 48))
_FT = (12, 12, 12, 6)  # windows of the 192px ImageNet-22k pretraining, per stage

PRESETS: dict[str, SwinV2Config] = {
    c.name: c
    for c in [
        _preset("swinv2_tiny_window8_256", img=256, window=8, **_T),
        _preset("swinv2_tiny_window16_256", img=256, window=16, **_T),
        _preset("swinv2_small_window8_256", img=256, window=8, **_S),
        _preset("swinv2_small_window16_256", img=256, window=16, **_S),
        _preset("swinv2_base_window8_256", img=256, window=8, **_B),
        _preset("swinv2_base_window16_256", img=256, window=16, **_B),
        _preset("swinv2_base_window12_192", img=192, window=12, num_classes=21841, **_B),
        _preset("swinv2_base_window12to16_192to256", img=256, window=16, pretrained=_FT, **_B),
        _preset("swinv2_base_window12to24_192to384", img=384, window=24, pretrained=_FT, crop_pct=1.0, **_B),
        _preset("swinv2_large_window12_192", img=192, window=12, num_classes=21841, **_L),
        _preset("swinv2_large_window12to16_192to256", img=256, window=16, pretrained=_FT, **_L),
        _preset("swinv2_large_window12to24_192to384", img=384, window=24, pretrained=_FT, crop_pct=1.0, **_L),
        # The paper's giants (no public weights): head_dim 32, a main-branch LayerNorm every 6 blocks.
        _preset("swinv2_huge_window12_192", img=192, window=12, embed_dim=352, depths=(2, 2, 18, 2),
                heads=(11, 22, 44, 88), extra_norm_period=6, num_classes=21841),
        _preset("swinv2_giant_window12_192", img=192, window=12, embed_dim=512, depths=(2, 2, 42, 4),
                heads=(16, 32, 64, 128), extra_norm_period=6, num_classes=21841),
        # A small model for the digits demo and fast tests (not a published variant).
        _preset("swinv2_nano_window4_64", img=64, window=4, embed_dim=32, depths=(1, 1, 2, 1), heads=(1, 2, 4, 8),
                num_classes=10, crop_pct=1.0),
    ]
}


# -- published weights, per preset (swinv2_serve.hub fetches them) ---------------------------------------------
HUB_ORG = "timm"
MSRA_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v2.0.0/"


@dataclass(frozen=True)
class PretrainedTag:
    """One set of published weights of a preset."""

    tag: str  # ours: in1k | in22k | in22k-ft-in1k
    timm_tag: str  # the hub repo is timm/<model>.<timm_tag>
    num_classes: int
    msra_file: str  # the same weights in the official release (MSRA layout)
    revision: str | None = None  # a pinned hub commit; None follows "main"
    sha256: str | None = None  # a pinned digest of the hub file; None trusts the hub's own (see module doc)

    def repo_id(self, model: str) -> str:
        return f"{HUB_ORG}/{model}.{self.timm_tag}"

    @property
    def msra_url(self) -> str:
        return MSRA_RELEASE + self.msra_file


def _in1k(msra: str) -> PretrainedTag:
    return PretrainedTag("in1k", "ms_in1k", 1000, msra)


def _in22k(msra: str) -> PretrainedTag:
    return PretrainedTag("in22k", "ms_in22k", 21841, msra)


def _in22k_ft(msra: str) -> PretrainedTag:
    return PretrainedTag("in22k-ft-in1k", "ms_in22k_ft_in1k", 1000, msra)


# timm 1.0's default_cfgs for swinv2_* (hf_hub_id "timm/<name>.<tag>", url = the MSRA file); the first is the
# default. SwinV2-H/G and the nano demo preset have no published weights.
PRETRAINED: dict[str, tuple[PretrainedTag, ...]] = {
    "swinv2_tiny_window8_256": (_in1k("swinv2_tiny_patch4_window8_256.pth"),),
    "swinv2_tiny_window16_256": (_in1k("swinv2_tiny_patch4_window16_256.pth"),),
    "swinv2_small_window8_256": (_in1k("swinv2_small_patch4_window8_256.pth"),),
    "swinv2_small_window16_256": (_in1k("swinv2_small_patch4_window16_256.pth"),),
    "swinv2_base_window8_256": (_in1k("swinv2_base_patch4_window8_256.pth"),),
    "swinv2_base_window16_256": (_in1k("swinv2_base_patch4_window16_256.pth"),),
    "swinv2_base_window12_192": (_in22k("swinv2_base_patch4_window12_192_22k.pth"),),
    "swinv2_base_window12to16_192to256": (_in22k_ft("swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth"),),
    "swinv2_base_window12to24_192to384": (_in22k_ft("swinv2_base_patch4_window12to24_192to384_22kto1k_ft.pth"),),
    "swinv2_large_window12_192": (_in22k("swinv2_large_patch4_window12_192_22k.pth"),),
    "swinv2_large_window12to16_192to256": (_in22k_ft("swinv2_large_patch4_window12to16_192to256_22kto1k_ft.pth"),),
    "swinv2_large_window12to24_192to384": (_in22k_ft("swinv2_large_patch4_window12to24_192to384_22kto1k_ft.pth"),),
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str) -> SwinV2Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def window_for(native_img: int, native_window: int, img: int) -> int:
    """The window at ``img`` that keeps the trained window-to-image ratio (8 @ 256 -> 16 @ 512; at least 1)."""
    if img == native_img:
        return native_window
    return max(1, round(native_window * img / native_img))


def resolve_config(
    name: str | SwinV2Config,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | tuple[int, ...] | None = None,
    pretrained_window_sizes: int | tuple[int, ...] | None = None,
    num_classes: int | None = None,
    attn_chunk_windows: int | None = None,
    **overrides: Any,
) -> SwinV2Config:
    """A named config with a new resolution/window: the log-CPB transfer. The window rule lives here, once.

    A new ``img_size`` without ``window_size`` scales every stage's window with the resolution, keeping the
    window-to-image ratio the config was trained with (``window_for``: 8 @ 256 -> 16 @ 512); an explicit
    ``window_size`` is used as given. Unless ``pretrained_window_sizes`` is given, the CPB normaliser stays the
    one the named config was trained with (its pretrained windows, else its own windows after shrinking), so
    the meta-network sees coordinates on the scale it learned whatever window the model now runs at.
    """
    base = name if isinstance(name, SwinV2Config) else get_config(name)
    trained_norm = tuple(h for h, _ in base.cpb_normalisers)
    changes: dict[str, Any] = dict(overrides)
    if img_size is not None:
        changes["img_size"] = _pair(img_size)
    if window_size is not None:
        changes["window_size"] = _per_stage(window_size, base.num_stages, "window_size")
    elif img_size is not None:
        changes["window_size"] = tuple(window_for(base.img_size[0], w, changes["img_size"][0])
                                       for w in base.window_size)
    changes["pretrained_window_sizes"] = (
        trained_norm if pretrained_window_sizes is None
        else _per_stage(pretrained_window_sizes, base.num_stages, "pretrained_window_sizes")
    )
    if num_classes is not None:
        changes["num_classes"] = num_classes
        if num_classes != base.num_classes:
            changes["labels"] = None
    if attn_chunk_windows is not None:
        changes["attn_chunk_windows"] = attn_chunk_windows
    cfg = base.replace(**changes)
    if window_size is not None:
        first = cfg.stage_resolutions[0]
        if cfg.window_size[0] > max(first):
            raise ConfigError(
                f"window_size {cfg.window_size[0]} is larger than the first feature map {first} of a "
                f"{cfg.img_size[0]}x{cfg.img_size[1]} input; use at most {max(first)} (img_size / 32 is usual)"
            )
    return cfg
