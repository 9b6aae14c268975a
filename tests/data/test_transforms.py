import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
from conftest import augment_config
from torch.utils.data import DataLoader

from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.core.geometry import (
    affine_points,
    bbox_xywh_to_center_scale,
    fix_aspect_ratio,
    flip_keypoints,
    get_warp_matrix,
    input_to_image_coords,
)
from clamp_pl.core.preprocess import NORMALIZATION, read_image
from clamp_pl.data.dataset import TopDownDataset
from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.transforms import TopDownAugment, TopDownTransform, build_photometric, half_body_box
from clamp_pl.formats.coco import DataError, Instance, load_coco_instances

AP10K = get_meta("ap10k")
NO_AUG = dict(half_body_prob=0.0, shift_prob=0.0, scale_factor=0.0, rot_prob=0.0)
#: everything off but the centre shift, so that a sample's centre minus the box centre is the shift
SHIFT_ONLY = dict(flip_prob=0.0, half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0, shift_prob=0.3)


def aug(seed: int = 0, **overrides) -> TopDownAugment:
    """The configured augmentation (conf/data/_base.yaml) with ``overrides``."""
    return TopDownAugment(meta=AP10K, seed=seed, **augment_config(**overrides))


@pytest.fixture(scope="module")
def ap10k_instances(test_data):
    insts, _, _ = load_coco_instances(test_data / "ap10k" / "test_ap10k.json", test_data / "ap10k", AP10K,
                                      train=False)
    return {i.ann_id: i for i in insts}


def _to_uint8(image):
    """Undo the ImageNet normalisation of a (3, H, W) image -> (H, W, 3) float in [0, 255]."""
    mean, std = NORMALIZATION["imagenet"]
    return (image.transpose(1, 2, 0) * np.array(std) + np.array(mean)) * 255.0


def _mmpose_warp(center, scale, rot, size):
    """mmpose's get_warp_matrix (no UDP): cv2.getAffineTransform on three points."""
    src_w = scale[0]
    dst_w, dst_h = size
    r = math.radians(rot)
    src_dir = np.array([-(src_w * -0.5) * math.sin(r), (src_w * -0.5) * math.cos(r)])
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0], dst[1] = [dst_w * 0.5, dst_h * 0.5], np.array([dst_w * 0.5, dst_h * 0.5]) + dst_dir
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]])
    return cv2.getAffineTransform(src, dst)


# ------------------------------------------------------------------------------------------------- geometry
def test_bbox_to_center_scale_fixes_aspect_and_pads():
    c, s = bbox_xywh_to_center_scale(np.array([10, 20, 100, 50]), aspect_ratio=1.0)
    np.testing.assert_allclose(c, [60, 45])
    np.testing.assert_allclose(s, [125, 125])
    c, s = bbox_xywh_to_center_scale(np.array([0, 0, 60, 200]), aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(s, [150, 200])
    _, s = bbox_xywh_to_center_scale(np.array([0, 0, 200, 60]), aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(s, [200, 200 / 0.75])


@pytest.mark.parametrize("seed", range(5))
def test_warp_matrix_equals_mmpose(seed):
    rng = np.random.default_rng(seed)
    center = rng.uniform(0, 1000, 2)
    scale = np.array([rng.uniform(50, 800)] * 2) * np.array([1.0, 4 / 3])
    rot = rng.uniform(-80, 80)
    ours = get_warp_matrix(center, scale, rot, (192, 256))
    np.testing.assert_allclose(ours, _mmpose_warp(center, scale, rot, (192, 256)), rtol=1e-4, atol=1e-3)


def test_rotation_is_counter_clockwise():
    mat = get_warp_matrix(np.array([100.0, 100.0]), np.array([100.0, 100.0]), 90.0, (100, 100))
    # a point right of the centre ends up above the centre (y down): counter-clockwise on screen
    np.testing.assert_allclose(affine_points(np.array([110.0, 100.0]), mat), [50, 40], atol=1e-9)


def test_affine_round_trip():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-100, 2000, (50, 17, 2))
    for _ in range(20):
        center, scale, rot = rng.uniform(0, 1500, 2), np.full(2, rng.uniform(20, 1500)), rng.uniform(-180, 180)
        fwd = get_warp_matrix(center, scale, rot, (256, 256))
        inv = get_warp_matrix(center, scale, rot, (256, 256), inv=True)
        assert np.abs(affine_points(affine_points(pts, fwd), inv) - pts).max() <= 1e-4


def test_input_to_image_coords_inverts_the_warp():
    rng = np.random.default_rng(1)
    center, scale = rng.uniform(100, 900, (4, 2)), rng.uniform(50, 700, (4, 1)) * [[0.75, 1.0]]
    kpts_in = rng.uniform(0, 256, (4, 17, 2))
    back = input_to_image_coords(kpts_in, center, scale, (192, 256))
    for i in range(4):
        inv = get_warp_matrix(center[i], scale[i], 0.0, (192, 256), inv=True)
        np.testing.assert_allclose(back[i], affine_points(kpts_in[i], inv), atol=1e-6)


def test_flip_keypoints_is_an_involution_and_swaps():
    kpts = np.random.default_rng(2).uniform(0, 500, (17, 3))
    once = flip_keypoints(kpts, 640, AP10K.flip_indices)
    np.testing.assert_allclose(once[1, :2], [639 - kpts[0, 0], kpts[0, 1]])
    np.testing.assert_allclose(once[8, 2], kpts[5, 2])
    np.testing.assert_allclose(flip_keypoints(once, 640, AP10K.flip_indices), kpts)


def _group_box(kpts, ids):
    pts = kpts[ids, :2]
    return (pts.min(0) + pts.max(0)) / 2, fix_aspect_ratio(pts.max(0) - pts.min(0), 0.75) * 1.5


def test_half_body_box_holds_the_chosen_points():
    rng = np.random.default_rng(3)
    chosen = {"upper": 0, "lower": 0}
    for _ in range(300):
        kpts = np.concatenate([rng.uniform(0, 800, (17, 2)), rng.integers(0, 3, (17, 1))], axis=1)
        box = half_body_box(kpts, AP10K.upper_body_ids, AP10K.lower_body_ids, 0.75, rng)
        groups = {"upper": [i for i in AP10K.upper_body_ids if kpts[i, 2] > 0],
                  "lower": [i for i in AP10K.lower_body_ids if kpts[i, 2] > 0]}
        if len(groups["upper"]) < 2 and len(groups["lower"]) <= 2:
            assert box is None
            continue
        center, scale = box
        assert scale[0] / scale[1] == pytest.approx(0.75)
        name = next(n for n, ids in groups.items() if len(ids) >= 2
                    and np.allclose(np.concatenate(_group_box(kpts, ids)), np.concatenate(box)))
        chosen[name] += 1
        # the chosen points lie in the box, even without its 1.5 padding
        assert np.all(np.abs(kpts[groups[name], :2] - center) <= scale / 2 / 1.5 + 1e-9)
    assert chosen["upper"] > 100 and chosen["lower"] > 30


def test_half_body_none_with_too_few_points():
    kpts = np.zeros((17, 3))
    kpts[0] = [10, 10, 2]
    assert half_body_box(kpts, AP10K.upper_body_ids, AP10K.lower_body_ids, 1.0, np.random.default_rng(0)) is None


def test_augment_half_body_crops_to_the_group(ap10k_instances):
    inst = ap10k_instances[6]
    t = TopDownTransform(AP10K, augment=aug(flip_prob=0.0, half_body_prob=1.0, shift_prob=0.0, scale_factor=0.0,
                                            rot_prob=0.0))
    for seed in range(6):
        out = t(inst, np.random.default_rng(seed))
        vis = out["visible"] > 0
        in_crop = np.all((out["keypoints"] >= 0) & (out["keypoints"] <= 255), axis=1) & vis
        groups = [set(AP10K.upper_body_ids), set(AP10K.lower_body_ids)]
        assert any(g & set(np.flatnonzero(vis)) <= set(np.flatnonzero(in_crop)) for g in groups)
        assert out["scale"][0] < 429 * 1.25  # smaller than the full box


def _box_instance(ann_id=1, bbox=(10.0, 20.0, 80.0, 60.0), image_size=(200, 200), kpts=None):
    """An instance that no pixel is read of: only its box, keypoints and id matter to the augmentation."""
    kpts = np.zeros((17, 3), np.float32) if kpts is None else np.asarray(kpts, np.float32)
    return Instance(ann_id=ann_id, image_id=1, image_path="unused.jpg", image_size=image_size,
                    bbox=np.asarray(bbox, np.float32), keypoints=kpts, category_id=1, species="a", family="b",
                    area=float(bbox[2] * bbox[3]))


def test_augment_ranges():
    augment = aug()
    inst = _box_instance(image_size=(200, 200))
    rng = np.random.default_rng(0)
    rots, scales, flips = [], [], []
    for _ in range(2000):
        p, _ = augment(inst, np.array([50.0, 50.0]), np.array([100.0, 100.0]), 1.0, rng)
        rots.append(p.rotation)
        scales.append(p.scale[0] / 100.0)
        flips.append(p.flipped)
    rots, scales = np.array(rots), np.array(scales)
    assert np.abs(rots).max() <= 80 and 0.35 < np.mean(rots == 0) < 0.45  # rotation with p 0.6
    assert scales.min() >= 0.5 and scales.max() <= 1.5 and abs(np.median(scales) - 1) < 0.05
    assert 0.45 < np.mean(flips) < 0.55


# ------------------------------------------------------------------------------------------------- samples
def test_forced_flip_equals_mirror_plus_swap(ap10k_instances):
    inst = ap10k_instances[6]
    flipped = TopDownTransform(AP10K, augment=aug(flip_prob=1.0, **NO_AUG))(inst, np.random.default_rng(0))
    plain = TopDownTransform(AP10K, augment=aug(flip_prob=0.0, **NO_AUG))(inst, np.random.default_rng(0))
    assert flipped["flipped"] and not plain["flipped"]
    # mmpose flips about x -> W - 1 - x in the image, which lands one input pixel off a mirror of the crop:
    # flipped column j shows plain column 256 - j
    mirror = plain["image"][:, :, ::-1]
    np.testing.assert_allclose(flipped["image"][:, :, 1:], mirror[:, :, :-1], atol=1e-5)
    fi = list(AP10K.flip_indices)
    np.testing.assert_allclose(flipped["keypoints"][:, 0], 256 - plain["keypoints"][fi, 0], atol=1e-4)
    np.testing.assert_allclose(flipped["keypoints"][:, 1], plain["keypoints"][fi, 1], atol=1e-4)
    np.testing.assert_array_equal(flipped["visible"], plain["visible"][fi])


@pytest.mark.parametrize("seed", range(8))
def test_keypoints_follow_the_warp_matrix(ap10k_instances, seed):
    inst = ap10k_instances[9284]
    out = TopDownTransform(AP10K, augment=aug(flip_prob=0.5))(inst, np.random.default_rng(seed))
    order = list(AP10K.flip_indices) if out["flipped"] else list(range(17))
    expected = affine_points(inst.keypoints[order, :2], out["warp_matrix"])
    vis = out["visible"] > 0
    np.testing.assert_allclose(out["keypoints"][vis], expected[vis], atol=1e-3)
    assert out["image"].shape == (3, 256, 256) and out["image"].dtype == np.float32


def _blob_instance(tmp_path, suffix, size=(1024, 683)):
    """A dark image with a bright Gaussian blob (sigma 5 px) at each labelled keypoint."""
    w, h = size
    rng = np.random.default_rng(7)
    kpts = np.zeros((17, 3), np.float32)
    kpts[:, :2] = rng.uniform([250, 150], [750, 530], (17, 2))
    kpts[:, 2] = 2
    kpts[3, 2] = 0
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float64)
    for x, y, v in kpts:
        if v > 0:
            img = np.maximum(img, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 5.0**2)))
    path = tmp_path / f"blobs{suffix}"
    cv2.imwrite(str(path), np.repeat((img * 220 + 20)[..., None], 3, axis=2).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, 98] if suffix == ".jpg" else [])
    lo, hi = kpts[:, :2].min(0), kpts[:, :2].max(0)
    return Instance(ann_id=1, image_id=1, image_path=str(path), image_size=size,
                    bbox=np.array([*lo, *(hi - lo)], np.float32), keypoints=kpts, category_id=1, species="x",
                    family="y", area=float(np.prod(hi - lo)))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_content_follows_keypoints(tmp_path, suffix):
    """Blobs drawn at the keypoints are found at the transformed keypoints (flip, half-body, shift, scale,
    rotation and reduced decoding all on)."""
    inst = _blob_instance(tmp_path, suffix)
    t = TopDownTransform(AP10K, input_size=(192, 256), augment=aug(scale_factor=0.5, half_body_prob=0.5),
                         reduced_decode=True)
    reductions = set()
    for seed in range(12):
        out = t(inst, np.random.default_rng(seed))
        reductions.add(t._reduction(out["scale"]))
        gray = _to_uint8(out["image"]).mean(axis=2)
        for (x, y), v in zip(out["keypoints"], out["visible"]):
            if not v or not (6 <= x <= 185 and 6 <= y <= 249):
                continue
            xi, yi = int(round(x)), int(round(y))
            win = gray[yi - 4:yi + 5, xi - 4:xi + 5] - 20
            wy, wx = np.mgrid[-4:5, -4:5]
            cx, cy = (win * wx).sum() / win.sum() + xi, (win * wy).sum() / win.sum() + yi
            # neighbouring blobs can pull the centroid a little; 1 px is far below a misalignment
            assert math.hypot(cx - x, cy - y) < 1.0, (seed, x, y, cx, cy)
    if suffix == ".jpg":
        assert reductions & {2, 4}


def test_reduced_decode_mapping_on_a_smooth_image(tmp_path):
    h, w = 683, 1023  # odd width: the last reduced column covers a partial block
    ys, xs = np.mgrid[0:h, 0:w]
    img = (127 + 60 * np.sin(xs / 9.0) + 60 * np.cos(ys / 11.0)).astype(np.uint8)
    path = str(tmp_path / "smooth.jpg")
    cv2.imwrite(path, np.dstack([img, 255 - img, img // 2]), [cv2.IMWRITE_JPEG_QUALITY, 98])
    full, f1 = read_image(path, 1, (w, h))
    assert f1 == 1 and full.shape == (h, w, 3)
    for f in (2, 4):
        red, used = read_image(path, f, (w, h))
        assert used == f and red.shape[:2] == (-(-h // f), -(-w // f))
        # reduced pixel i <-> full pixel f*i + (f-1)/2 (the centre of its block), not f*i
        for off, ok in (((f - 1) / 2, True), (0.0, False)):
            sampled = cv2.warpAffine(full, np.array([[f, 0, off], [0, f, off]], np.float64), red.shape[1::-1],
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            err = np.abs(red.astype(float) - sampled)[5:-5, 5:-5].mean()
            assert (err < 1.0) if ok else (err > 2.0), (f, off, err)


@pytest.mark.parametrize("size", [(256, 256), (128, 128)])
def test_reduced_decode_same_crop(ap10k_instances, size):
    for inst in ap10k_instances.values():
        fast = TopDownTransform(AP10K, size, reduced_decode=True)
        slow = TopDownTransform(AP10K, size, reduced_decode=False)
        a, b = fast(inst), slow(inst)
        assert fast._reduction(a["scale"]) in (2, 4)
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
        ia, ib = _to_uint8(a["image"]), _to_uint8(b["image"])
        # full-resolution bilinear sampling aliases the fur/grass texture (the reduced decode is anti-aliased);
        # compared at a quarter of the input size the two crops agree closely. The exact pixel mapping is
        # tested on a smooth image in test_reduced_decode_mapping_on_a_smooth_image.
        small = (size[0] // 4, size[1] // 4)
        sa = cv2.resize(ia.astype(np.float32), small, interpolation=cv2.INTER_AREA)
        sb = cv2.resize(ib.astype(np.float32), small, interpolation=cv2.INTER_AREA)
        assert np.abs(ia - ib).mean() < 12
        assert np.abs(sa - sb).mean() < 3.0


def test_eval_transform_is_deterministic_center_scale_only(ap10k_instances):
    inst = ap10k_instances[6]
    t = TopDownTransform(AP10K)
    out = t(inst)
    np.testing.assert_allclose(out["center"], [408 + 429 / 2, 197 + 341 / 2])
    np.testing.assert_allclose(out["scale"], [429 * 1.25, 429 * 1.25])
    assert out["rotation"] == 0.0 and not out["flipped"]
    back = input_to_image_coords(out["keypoints"][None], out["center"][None], out["scale"][None], (256, 256))
    vis = inst.keypoints[:, 2] > 0
    np.testing.assert_allclose(back[0][vis], inst.keypoints[vis, :2], atol=1e-3)
    np.testing.assert_array_equal(t(inst)["image"], out["image"])


def test_normalization_options(tmp_path):
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), np.full((300, 300, 3), 128, np.uint8))
    kpts = np.zeros((17, 3), np.float32)
    inst = Instance(1, 1, str(path), (300, 300), np.array([50, 50, 200, 200], np.float32), kpts, 1, "a", "b", 1.0)
    for name in ("imagenet", "clip"):
        out = TopDownTransform(AP10K, normalization=name)(inst)
        mean, std = NORMALIZATION[name]
        np.testing.assert_allclose(out["image"][:, 128, 128], (128 / 255 - np.array(mean)) / np.array(std),
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        TopDownTransform(AP10K, normalization="coco")


def test_rgb_channel_order(tmp_path):
    path = tmp_path / "red.png"
    bgr = np.zeros((100, 100, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in BGR
    cv2.imwrite(str(path), bgr)
    inst = Instance(1, 1, str(path), (100, 100), np.array([10, 10, 80, 80], np.float32), np.zeros((17, 3),
                    np.float32), 1, "a", "b", 1.0)
    rgb = _to_uint8(TopDownTransform(AP10K)(inst)["image"])[128, 128]
    np.testing.assert_allclose(rgb, [255, 0, 0], atol=1e-3)


def test_unreadable_image_raises_data_error(tmp_path, ap10k_instances):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    inst = ap10k_instances[6]
    inst = Instance(**{**inst.__dict__, "image_path": str(bad)})
    with pytest.raises(DataError, match="bad.jpg"):
        TopDownTransform(AP10K)(inst)
    inst = Instance(**{**inst.__dict__, "image_path": str(tmp_path / "missing.png")})
    with pytest.raises(DataError, match="missing.png"):
        TopDownTransform(AP10K)(inst)


def test_image_size_changed_on_disk_raises(ap10k_instances):
    inst = ap10k_instances[6]
    inst = Instance(**{**inst.__dict__, "image_size": (1000, 683)})
    with pytest.raises(DataError, match="1024x683 but the annotation says 1000x683"):
        TopDownTransform(AP10K)(inst)


def test_photometric(ap10k_instances):
    inst = ap10k_instances[6]
    spec = {"ColorJitter": {"brightness": 0.4, "contrast": 0.4, "p": 1.0}}
    t = TopDownTransform(AP10K, augment=aug(photometric=spec, **NO_AUG))
    plain = TopDownTransform(AP10K, augment=aug(**NO_AUG))
    a, b = t(inst, np.random.default_rng(0)), t(inst, np.random.default_rng(0))
    np.testing.assert_array_equal(a["image"], b["image"])  # seeded from the sample's rng
    assert not np.allclose(a["image"], plain(inst, np.random.default_rng(0))["image"])
    assert not np.allclose(a["image"], t(inst, np.random.default_rng(1))["image"])
    import albumentations as A

    assert build_photometric(A.to_dict(A.Compose([A.ToGray(p=1.0)]))) is not None
    assert build_photometric(None) is None
    with pytest.raises(ValueError, match="not a pixel-level"):
        build_photometric({"HorizontalFlip": {}})
    with pytest.raises(ValueError, match="no transform"):
        build_photometric({"NoSuchTransform": {}})


# ------------------------------------------------------------------------------------------------- settings
def test_every_augment_setting_has_its_one_default_in_the_config():
    """conf/data/_base.yaml's augment node holds exactly the settings of TopDownAugment (no Python defaults)."""
    fields = {f.name for f in dataclasses.fields(TopDownAugment) if f.init} - {"meta", "seed"}
    assert set(augment_config()) == fields
    required = {f.name for f in dataclasses.fields(TopDownAugment)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert required == fields | {"meta"}


@pytest.mark.parametrize(("key", "value", "match"), [
    ("flip_prob", 1.5, "flip_prob"), ("rot_prob", -0.1, "rot_prob"), ("shift_mode", "epoch", "shift_mode"),
    ("half_body_center", "median", "half_body_center"), ("scale_factor", 1.0, "scale_factor"),
    ("shift_factor", -0.1, "shift_factor"), ("half_body_min_kpts", 2.5, "half_body_min_kpts"),
])
def test_bad_augment_settings_are_errors_naming_the_field(key, value, match):
    with pytest.raises(ValueError, match=f"data.augment.{match} must"):
        aug(**{key: value})


def test_from_config_names_unknown_and_missing_settings():
    node = augment_config()
    assert TopDownAugment.from_config(AP10K, node, seed=3).seed == 3
    node.pop("rot_prob")
    with pytest.raises(ValueError, match=r"data.augment: unknown settings \['rot_pro'\], missing settings "
                                         r"\['rot_prob'\]"):
        TopDownAugment.from_config(AP10K, {**node, "rot_pro": 0.5})


def test_half_body_center_mean_or_extent():
    kpts = np.zeros((17, 3))
    kpts[list(AP10K.upper_body_ids)[:4]] = [[0, 0, 2], [10, 0, 2], [12, 0, 2], [0, 30, 2]]
    ext = half_body_box(kpts, AP10K.upper_body_ids, AP10K.lower_body_ids, 1.0, np.random.default_rng(0))
    mean = half_body_box(kpts, AP10K.upper_body_ids, AP10K.lower_body_ids, 1.0, np.random.default_rng(0),
                         center="mean")
    np.testing.assert_allclose(ext[0], [6.0, 15.0])
    np.testing.assert_allclose(mean[0], [5.5, 7.5])
    np.testing.assert_allclose(ext[1], mean[1])  # same extent, same size


# ------------------------------------------------------------------------------------------------- centre shift
def _shifts(augment, inst, seeds):
    """Centre offsets (N, 2) of the samples drawn with ``seeds`` (only the shift on: see SHIFT_ONLY)."""
    center, scale = bbox_xywh_to_center_scale(inst.bbox, 1.0)
    return np.array([augment(inst, center, scale, 1.0, np.random.default_rng(s))[0].center - center
                     for s in seeds])


def test_shift_mode_sample_draws_a_new_truncated_normal_shift_per_sample():
    augment = aug(shift_mode="sample", **SHIFT_ONLY)
    inst = _box_instance(bbox=(10.0, 20.0, 80.0, 60.0))  # padded, aspect-fixed box: 100 x 100
    d = _shifts(augment, inst, range(3000))
    shifted = np.any(d != 0, axis=1)
    assert 0.27 < shifted.mean() < 0.33
    bound = 0.16 * 100.0
    r = d[shifted] / bound
    assert np.abs(r).max() <= 1.0 + 1e-12
    # clip(N(0, 1), -1, 1): P(|x| = 1) = P(|N| > 1) = 0.317 per axis
    assert 0.28 < np.mean(np.isclose(np.abs(r), 1.0)) < 0.36
    # not a property of the instance: the same instance gets other shifts from other samples
    inner = np.all(np.abs(r) < 1.0, axis=1)
    assert inner.sum() > 300 and len(np.unique(r[inner], axis=0)) == inner.sum()


def test_shift_mode_dataset_is_one_uniform_shift_per_instance_fixed_by_the_seed():
    augment = aug(seed=7, shift_mode="dataset", **{**SHIFT_ONLY, "shift_factor": 0.2})
    wh = np.array([80.0, 60.0])  # the unpadded box; its padded, aspect-fixed box is 100 x 100
    per_instance = []
    for ann_id in range(1, 1001):
        inst = _box_instance(ann_id=ann_id, bbox=(10.0, 20.0, *wh))
        d = _shifts(augment, inst, range(4))  # four samples (epochs, workers) of the same instance
        np.testing.assert_array_equal(d, np.broadcast_to(d[0], d.shape))
        np.testing.assert_allclose(d[0], augment.dataset_shift(ann_id, inst.bbox), atol=1e-9)
        per_instance.append(d[0])
    d = np.array(per_instance)
    shifted = np.any(d != 0, axis=1)
    assert 0.26 < shifted.mean() < 0.34
    r = d[shifted] / (0.2 * wh)  # U(-1, 1) on each axis, relative to the UNPADDED box
    assert np.abs(r).max() < 1.0 and np.abs(r).max() > 0.97
    assert np.std(r) == pytest.approx(1 / math.sqrt(3), abs=0.05)
    # reproducible from the seed, and another seed draws other shifts
    again = aug(seed=7, shift_mode="dataset", **{**SHIFT_ONLY, "shift_factor": 0.2})
    other = aug(seed=8, shift_mode="dataset", **{**SHIFT_ONLY, "shift_factor": 0.2})
    box = np.array([10.0, 20.0, *wh])
    assert all(np.array_equal(augment.dataset_shift(i, box), again.dataset_shift(i, box)) for i in range(1, 200))
    assert not all(np.array_equal(augment.dataset_shift(i, box), other.dataset_shift(i, box))
                   for i in range(1, 200))


def test_shift_mode_dataset_moves_with_the_flip_and_yields_to_half_body():
    augment = aug(seed=0, shift_mode="dataset", shift_prob=1.0, flip_prob=1.0, half_body_prob=0.0,
                  scale_factor=0.0, rot_prob=0.0)
    inst = _box_instance(ann_id=3, bbox=(10.0, 20.0, 80.0, 60.0), image_size=(200, 150))
    center, scale = bbox_xywh_to_center_scale(inst.bbox, 1.0)
    offset = augment.dataset_shift(3, inst.bbox)
    assert np.all(offset != 0)
    params, _ = augment(inst, center, scale, 1.0, np.random.default_rng(0))
    assert params.flipped
    np.testing.assert_allclose(params.center, [199 - (center[0] + offset[0]), center[1] + offset[1]])
    # a half-body box replaces the (shifted) instance box
    kpts = np.zeros((17, 3))
    kpts[:, :2] = np.random.default_rng(1).uniform(20, 80, (17, 2))
    kpts[:, 2] = 2
    half = aug(seed=0, shift_mode="dataset", shift_prob=1.0, flip_prob=0.0, half_body_prob=1.0, scale_factor=0.0,
               rot_prob=0.0)
    inst = _box_instance(ann_id=3, bbox=(10.0, 20.0, 80.0, 60.0), kpts=kpts)
    params, _ = half(inst, center, scale, 1.0, np.random.default_rng(0))
    assert params.half_body
    # the generator draws the flip first, then the half-body test, then the half's choice
    rng = np.random.default_rng(0)
    rng.random(), rng.random()
    box = half_body_box(kpts, AP10K.upper_body_ids, AP10K.lower_body_ids, 1.0, rng)
    np.testing.assert_allclose(params.center, box[0])


def test_shift_mode_dataset_is_the_same_in_every_worker_and_epoch(ap10k_instances):
    """Through TopDownDataset and a 2-worker DataLoader, two epochs: each instance's centre is its fixed shift."""
    base = ap10k_instances[6]
    insts = [dataclasses.replace(base, ann_id=i) for i in range(1, 13)]
    augment = aug(seed=3, shift_mode="dataset", **{**SHIFT_ONLY, "shift_prob": 0.5, "shift_factor": 0.2})
    ds = TopDownDataset(insts, TopDownTransform(AP10K, (64, 64), augment=augment), MSRAHeatmap((64, 64), (16, 16)),
                        (4, 4), seed=3)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, persistent_workers=True)
    center0, _ = bbox_xywh_to_center_scale(base.bbox, 1.0)
    expected = {i.ann_id: center0 + augment.dataset_shift(i.ann_id, i.bbox) for i in insts}
    assert sum(not np.allclose(e, center0) for e in expected.values()) >= 3  # some are shifted
    for _ in range(2):
        seen = 0
        for batch in loader:
            for ann_id, center in zip(batch["ann_id"].tolist(), batch["center"].numpy()):
                np.testing.assert_allclose(center, expected[ann_id], atol=1e-3)
                seen += 1
        assert seen == len(insts)


def test_the_data_config_reaches_the_transforms(make_cfg):
    """data.augment, data.reduced_decode and data.drop_last, composed by Hydra, are what the datamodule uses."""
    from clamp_pl.cli.build import build_datamodule, build_spec

    cfg = make_cfg("data.augment.shift_mode=dataset", "data.augment.shift_factor=0.2",
                   "data.augment.half_body_center=mean", "data.reduced_decode=true", "data.drop_last=false",
                   "seed=5")
    dm = build_datamodule(cfg)
    dm.use_spec(build_spec(cfg, dm.ensure_meta(), dm.name))
    dm.setup("fit")
    augment = dm.datasets["train"].transform.augment
    expected = {**augment_config(), "shift_mode": "dataset", "shift_factor": 0.2, "half_body_center": "mean"}
    assert {k: getattr(augment, k) for k in expected} == expected and augment.seed == 5
    assert dm.datasets["val"].transform.augment is None and dm.datasets["test"].transform.augment is None
    assert all(dm.datasets[s].transform.reduced_decode for s in ("train", "val", "test"))
    assert not dm.train_dataloader().drop_last  # CLAMP's loader keeps the last partial batch
    cfg = make_cfg()
    dm = build_datamodule(cfg)
    dm.use_spec(build_spec(cfg, dm.ensure_meta(), dm.name))
    dm.setup("fit")
    assert not any(dm.datasets[s].transform.reduced_decode for s in ("train", "val", "test"))  # off by default
    assert dm.datasets["train"].transform.augment.shift_mode == "sample"
    assert dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last
