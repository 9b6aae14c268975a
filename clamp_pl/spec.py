"""The model spec: everything a checkpoint needs to rebuild its network, codec and preprocessing, and to name
the data it was trained on.

A :class:`ModelSpec` is written into every checkpoint and model file as primitives (dicts, lists, numbers,
strings, booleans and None), so ``torch.load(..., weights_only=True)`` reads it and nothing but torch, numpy and
cv2 is needed to predict with it. Training, evaluation and inference all build from it:

* :meth:`ModelSpec.build_network` -> the plain-torch :class:`clamp_pl.models.CLAMP`;
* :meth:`ModelSpec.build_codec` -> the ONE :class:`clamp_pl.codecs.MSRAHeatmap` that makes the training targets
  and decodes the predictions;
* :meth:`ModelSpec.dataset_meta` -> the :class:`clamp_pl.data.metainfo.DatasetMeta` of the keypoints;
* ``input_size``, ``mean``/``std`` and ``padding`` -> the crop of :func:`clamp_pl.core.preprocess.crop_and_normalize`.

Derived values (the feature grid, the heatmap size) are computed once, from the network, when the spec is built
(:func:`network_geometry`), and recorded in it.

No Lightning, Hydra or OmegaConf here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clamp_pl.data.metainfo import DatasetMeta

__all__ = ["LEGACY_DATA_KEYS", "SPEC_DATA_KEYS", "SPEC_VERSION", "Geometry", "ModelSpec", "make_spec", "network_geometry"]

#: bumped when a field changes meaning; :meth:`ModelSpec.from_dict` refuses newer versions
SPEC_VERSION = 1
#: ``data`` config keys that belong to the model spec (codec sigma, normalisation, box padding)
SPEC_DATA_KEYS = ("sigma", "normalization", "padding")
#: ``data`` config keys of runs written before the spec existed, now derived from the network
LEGACY_DATA_KEYS = ("input_size", "heatmap_size", "feature_stride")
_DECODE_MODES = ("default", "dark")


@dataclass(frozen=True)
class Geometry:
    """What the network makes of a square ``image_size`` input: ``stride`` (input pixels per feature cell),
    ``feature_grid`` (gw, gh) of the dense CLIP features and ``heatmap_size`` (w, h) = feature grid x 2**num_deconv.
    """

    stride: int
    feature_grid: tuple[int, int]
    heatmap_size: tuple[int, int]


def network_geometry(clip_model: str, image_size: int, num_deconv: int) -> Geometry:
    """The stride, feature grid and heatmap size of a CLAMP network, from its open_clip model config
    (:func:`clamp_pl.models.clip_towers.tower_geometry`; no weights are read).

    A ViT's stride is its patch size (open_clip's or a timm trunk's: SigLIP, EVA02, PE-Core); a ModifiedResNet
    (CLIP RN50 and the package's tiny ``clamp-tiny-rn``) down-samples 32x, timm ConvNeXt / FastViT (MobileCLIP) by
    their last stage's reduction. E.g. ViT-L/14 at 224 -> 16x16 grid -> 64x64 heatmaps with 2 deconvolutions.

    Raises:
        ValueError: the model is unknown to open_clip, has no dense image features, or ``image_size`` is not a
            multiple of the stride.
    """
    from clamp_pl.models.clip_towers import tower_geometry

    stride, grid = tower_geometry(clip_model, int(image_size))
    side = grid[0] * 2 ** int(num_deconv)
    return Geometry(stride, grid, (side, side))


def _pair(v: Sequence[Any], what: str) -> tuple[int, int]:
    if len(v) != 2 or any(int(x) <= 0 for x in v):
        raise ValueError(f"spec {what} must be two positive integers, got {list(v)}")
    return int(v[0]), int(v[1])


def _plain(value: Any, where: str) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only (what ``weights_only=True`` loads); numpy scalars
    and arrays become Python numbers and lists, tuples become lists. Anything else is an error naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, Mapping):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"spec field {where}: {type(value).__name__} is not a primitive (dict, list, str, number, "
                    "bool, None)")


@dataclass(frozen=True)
class ModelSpec:
    """What a trained CLAMP model is, apart from its weights.

    Attributes:
        net: keyword arguments of :class:`clamp_pl.models.CLAMP` except ``prompts`` and ``heatmap_size`` (those
            come from ``meta`` and ``heatmap_size``): ``clip_model``, ``pretrained``, ``image_size``, ...
        input_size: network input (W, H) in pixels (``(image_size, image_size)``).
        feature_grid: (gw, gh) of the image tower's dense features (the feature-loss targets live on it).
        heatmap_size: (w, h) of the predicted heatmaps.
        normalization: name of the mean/std pair (``"imagenet"``, ``"clip"``), ``"tower"`` (the image tower's own,
            resolved by :func:`make_spec`) or ``"custom"``.
        mean, std: RGB, on the [0, 1] scale: the crop is ``(pixel / 255 - mean) / std``.
        padding: the crop box is the object box with the aspect ratio fixed to W/H, times ``padding``.
        sigma: Gaussian sigma of the heatmap targets, in heatmap pixels.
        decode: ``"default"`` (arg-max + quarter-pixel step) or ``"dark"`` (DARK: unbiased targets and
            Taylor-refined decoding, mmpose ``MSRAHeatmap(unbiased=True)``).
        shift_heatmap: flip test shifts the flipped heatmaps one pixel right (non-UDP codecs).
        flip_test: average with the horizontally flipped crop at test time (the default of eval and inference).
        meta: the keypoint layout the model was trained on (:meth:`DatasetMeta.to_dict`): its keypoint names are
            the trained vocabulary (:attr:`trained_vocabulary`).
        data: the data the model was trained on: ``{"name": datamodule name, "config": {"datamodule": registry name,
            files/root, split, protocol, ...}}`` (the resolved ``data`` config, without the preprocessing above).
        pose_prior: a shape model of the training labels' poses (:func:`clamp_pl.inference.qc.fit_pose_prior`:
            Procrustes mean shape and principal components) for the pose-plausibility check of
            :mod:`clamp_pl.inference.qc`; None when the run recorded none.
        version: :data:`SPEC_VERSION` of the writer.
    """

    net: dict[str, Any]
    input_size: tuple[int, int]
    feature_grid: tuple[int, int]
    heatmap_size: tuple[int, int]
    normalization: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: float
    sigma: float
    decode: str
    shift_heatmap: bool
    flip_test: bool
    meta: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    pose_prior: dict[str, Any] | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "net", _plain(dict(self.net), "net"))
        set_(self, "input_size", _pair(self.input_size, "input_size"))
        set_(self, "feature_grid", _pair(self.feature_grid, "feature_grid"))
        set_(self, "heatmap_size", _pair(self.heatmap_size, "heatmap_size"))
        set_(self, "meta", _plain(dict(self.meta), "meta"))
        set_(self, "data", _plain(dict(self.data), "data"))
        if self.pose_prior is not None:
            set_(self, "pose_prior", _plain(dict(self.pose_prior), "pose_prior"))
        problems = []
        for key in ("clip_model", "image_size"):
            if key not in self.net:
                problems.append(f"net has no {key!r}")
        for key in ("prompts", "heatmap_size"):
            if key in self.net:
                problems.append(f"net must not hold {key!r} (it comes from the spec's meta / heatmap_size)")
        if "image_size" in self.net and self.input_size != (int(self.net["image_size"]),) * 2:
            problems.append(f"input_size {self.input_size} != net.image_size {self.net['image_size']} (square)")
        for what in ("mean", "std"):
            vals = tuple(float(v) for v in getattr(self, what))
            if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
                problems.append(f"{what} must be 3 finite numbers, got {getattr(self, what)}")
            set_(self, what, vals)
        if any(s <= 0 for s in self.std):
            problems.append(f"std must be > 0, got {self.std}")
        if not float(self.padding) > 0:
            problems.append(f"padding must be > 0, got {self.padding}")
        if not float(self.sigma) > 0:
            problems.append(f"sigma must be > 0, got {self.sigma}")
        if self.decode not in _DECODE_MODES:
            problems.append(f"decode must be one of {_DECODE_MODES}, got {self.decode!r}")
        set_(self, "padding", float(self.padding))
        set_(self, "sigma", float(self.sigma))
        set_(self, "shift_heatmap", bool(self.shift_heatmap))
        set_(self, "flip_test", bool(self.flip_test))
        if problems:
            raise ValueError("invalid model spec: " + "; ".join(problems))
        self.dataset_meta()  # validates the keypoint layout (DatasetMeta's checks)

    # ------------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Primitives only (``torch.load(weights_only=True)`` and YAML/JSON can hold it)."""
        return {
            "version": self.version,
            "net": dict(self.net),
            "input_size": list(self.input_size),
            "feature_grid": list(self.feature_grid),
            "heatmap_size": list(self.heatmap_size),
            "normalization": {"name": self.normalization, "mean": list(self.mean), "std": list(self.std)},
            "padding": self.padding,
            "codec": {"sigma": self.sigma, "decode": self.decode, "shift_heatmap": self.shift_heatmap},
            "test": {"flip_test": self.flip_test},
            "meta": dict(self.meta),
            "data": dict(self.data),
            **({} if self.pose_prior is None else {"pose_prior": dict(self.pose_prior)}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_dict`; errors name the missing or bad field."""
        version = int(d.get("version", 0))
        if version > SPEC_VERSION:
            raise ValueError(f"model spec version {version} is newer than this clamp_pl reads ({SPEC_VERSION}): "
                             "update clamp_pl")
        try:
            norm, codec, test = d["normalization"], d["codec"], d["test"]
            # through DatasetMeta: int category ids may come back as strings from JSON/YAML
            meta = DatasetMeta.from_dict(d["meta"], "model spec meta").to_dict()
            return cls(
                net=dict(d["net"]),
                input_size=tuple(d["input_size"]),
                feature_grid=tuple(d["feature_grid"]),
                heatmap_size=tuple(d["heatmap_size"]),
                normalization=str(norm["name"]),
                mean=tuple(norm["mean"]),
                std=tuple(norm["std"]),
                padding=float(d["padding"]),
                sigma=float(codec["sigma"]),
                decode=str(codec["decode"]),
                shift_heatmap=bool(codec["shift_heatmap"]),
                flip_test=bool(test["flip_test"]),
                meta=meta,
                data=dict(d.get("data") or {}),
                pose_prior=None if d.get("pose_prior") is None else dict(d["pose_prior"]),
                version=SPEC_VERSION,
            )
        except KeyError as e:
            raise ValueError(f"model spec has no field {e.args[0]!r} (fields: {sorted(d)})") from None

    # ------------------------------------------------------------------------------------ builders
    def dataset_meta(self) -> DatasetMeta:
        """The keypoint layout as a :class:`DatasetMeta` (validated)."""
        return DatasetMeta.from_dict(self.meta, "model spec meta")

    def build_codec(self):
        """The heatmap codec (:class:`clamp_pl.codecs.MSRAHeatmap`): targets in training, decoding at test."""
        from clamp_pl.codecs import MSRAHeatmap

        return MSRAHeatmap(input_size=self.input_size, heatmap_size=self.heatmap_size, sigma=self.sigma,
                           unbiased=self.decode == "dark")

    def build_network(self, load_pretrained: bool = False):
        """The plain-torch :class:`clamp_pl.models.CLAMP` of this spec.

        Args:
            load_pretrained: load ``net.pretrained`` (an open_clip tag or file) into the CLIP towers: only to
                start a training run. Off, the towers are randomly initialised, to be overwritten by a
                checkpoint's weights: nothing is read or downloaded.
        """
        from clamp_pl.models import CLAMP

        kwargs = dict(self.net)
        if not load_pretrained:
            kwargs["pretrained"] = None
        net = CLAMP(prompts=list(self.meta["prompts"]), heatmap_size=self.heatmap_size, **kwargs)
        grid = net.feature_grid[::-1]  # (gh, gw) -> (gw, gh)
        if tuple(grid) != self.feature_grid:
            raise ValueError(f"spec feature_grid {self.feature_grid} but the network's is {tuple(grid)}")
        return net

    # ------------------------------------------------------------------------------------ views
    @property
    def num_keypoints(self) -> int:
        return len(self.meta["prompts"])

    @property
    def trained_vocabulary(self) -> tuple[str, ...]:
        """The keypoint names the model was trained on, in the order of its training heatmaps (the meta's)."""
        return tuple(self.meta["keypoint_names"])

    def vocabulary(self, names: Sequence[str] | None = None) -> DatasetMeta:
        """The keypoint meta of the keypoints ``names`` asked of this model (None: the trained vocabulary as it is).

        A name is trained when it is one of :attr:`trained_vocabulary` or its prompt text
        (:func:`clamp_pl.data.metainfo.name_to_prompt`) is a trained prompt ("left eye" finds AP-10K's ``L_Eye``):
        it keeps the trained prompt text and OKS sigma. Any other name gets the prompt derived from it and the
        default sigma (:func:`clamp_pl.data.metainfo.meta_from_names`). Flip pairs are derived from left/right in
        the names; the skeleton keeps the trained edges between asked keypoints. :meth:`untrained` lists the names
        never trained.
        """
        return self._vocabulary(names)[0]

    def untrained(self, names: Sequence[str] | None) -> tuple[str, ...]:
        """The names among ``names`` that the model was never trained on (see :meth:`vocabulary`), in their order."""
        return self._vocabulary(names)[1]

    def _vocabulary(self, names: Sequence[str] | None) -> tuple[DatasetMeta, tuple[str, ...]]:
        from clamp_pl.data.metainfo import meta_from_names, name_to_prompt

        trained = self.dataset_meta()
        if names is None or tuple(names) == trained.keypoint_names:
            return trained, ()
        asked = meta_from_names(names, name=trained.name)
        index: dict[str, int] = {}
        for i, (name, prompt) in enumerate(zip(trained.keypoint_names, trained.prompts)):
            for key in (name, prompt, name_to_prompt(name)):
                index.setdefault(key, i)
        found = [index.get(n, index.get(p)) for n, p in zip(asked.keypoint_names, asked.prompts)]
        where = {j: k for k, j in enumerate(found) if j is not None}
        untrained = tuple(n for n, j in zip(asked.keypoint_names, found) if j is None)
        meta = DatasetMeta(
            name=trained.name,
            keypoint_names=asked.keypoint_names,
            prompts=tuple(p if j is None else trained.prompts[j] for p, j in zip(asked.prompts, found)),
            flip_indices=asked.flip_indices,
            sigmas=np.array([s if j is None else trained.sigmas[j] for s, j in zip(asked.sigmas, found)]),
            skeleton=tuple((where[a], where[b]) for a, b in trained.skeleton if a in where and b in where),
            upper_body_ids=asked.upper_body_ids,
            lower_body_ids=asked.lower_body_ids,
            joint_weights=asked.joint_weights,
            species=dict(trained.species),
            species_to_family=dict(trained.species_to_family),
            provenance={**asked.provenance, "prompts": "the trained prompt where the name was trained, else "
                        "derived from the name", "sigmas": "the trained sigma where the name was trained, else "
                        + asked.provenance["sigmas"]},
        )
        return meta, untrained

    @property
    def head(self) -> str:
        """The keypoint head: ``"concat"`` (CLAMP's, K fixed) or ``"prompt"`` (keypoints = prompts, any names)."""
        return str(self.net.get("head", "concat"))

    @property
    def flip_indices(self) -> list[int]:
        return list(self.meta["flip_indices"])

    @property
    def data_name(self) -> str:
        """The name of the datamodule the model was trained on (``""`` when unknown)."""
        return str(self.data.get("name", ""))


def make_spec(
    net: Mapping[str, Any],
    meta: DatasetMeta,
    *,
    normalization: str,
    padding: float,
    sigma: float,
    decode: str,
    shift_heatmap: bool,
    flip_test: bool,
    data: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """A spec from the network arguments and the keypoint meta, with the input size, feature grid and heatmap
    size derived from the network (:func:`network_geometry`); ``normalization`` names a mean/std pair of
    :data:`clamp_pl.core.preprocess.NORMALIZATION`, or ``"tower"``: the image tower's own pair for ``net``'s
    ``clip_model`` and ``pretrained`` (:func:`clamp_pl.models.clip_towers.preprocess_config`, nothing downloaded).
    No argument has a default here: the defaults live in the configs (``conf/model``, ``conf/data/_base.yaml``)."""
    from clamp_pl.core.preprocess import NORMALIZATION, TOWER_NORMALIZATION

    net = dict(net)
    for derived in ("heatmap_size", "feature_stride", "prompts"):
        if derived in net:
            raise ValueError(f"net.{derived} is not a network argument of the spec: the heatmap size and stride "
                             "are derived from clip_model, image_size and num_deconv; the prompts come from meta")
    if normalization not in NORMALIZATION and normalization != TOWER_NORMALIZATION:
        raise ValueError(f"normalization must be one of {[*sorted(NORMALIZATION), TOWER_NORMALIZATION]}, "
                         f"got {normalization!r}")
    if "num_deconv" not in net:
        from clamp_pl.models import CLAMP

        net["num_deconv"] = inspect.signature(CLAMP).parameters["num_deconv"].default
    geometry = network_geometry(net["clip_model"], net["image_size"], net["num_deconv"])
    size = int(net["image_size"])
    if normalization == TOWER_NORMALIZATION:
        from clamp_pl.models.clip_towers import preprocess_config

        tower = preprocess_config(net["clip_model"], net.get("pretrained"), size)
        mean, std = tuple(tower["mean"]), tuple(tower["std"])
    else:
        mean, std = NORMALIZATION[normalization]
    return ModelSpec(
        net=net, input_size=(size, size), feature_grid=geometry.feature_grid, heatmap_size=geometry.heatmap_size,
        normalization=normalization, mean=mean, std=std, padding=padding, sigma=sigma, decode=decode,
        shift_heatmap=shift_heatmap, flip_test=flip_test, meta=meta.to_dict(), data=dict(data or {}),
    )
