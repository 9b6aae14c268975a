import numpy as np
import pytest
import torch
from conftest import augment_config
from torch.utils.data import DataLoader

from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.data.dataset import TopDownDataset
from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.transforms import TopDownAugment, TopDownTransform
from clamp_pl.formats.coco import load_coco_instances

AP10K = get_meta("ap10k")


@pytest.fixture(scope="module")
def instances(test_data):
    insts, _, _ = load_coco_instances(test_data / "ap10k" / "test_ap10k.json", test_data / "ap10k", AP10K,
                                      train=True)
    return insts


def _dataset(instances, train, seed=0):
    augment = TopDownAugment(meta=AP10K, **augment_config()) if train else None
    return TopDownDataset(instances, TopDownTransform(AP10K, augment=augment), MSRAHeatmap(), (16, 16), seed=seed)


def test_item_shapes_and_targets(instances):
    ds = _dataset(instances, train=False)
    assert len(ds) == 2
    item = ds[1]
    expected = {
        "image": ((3, 256, 256), torch.float32), "heatmaps": ((17, 64, 64), torch.float32),
        "keypoint_weights": ((17,), torch.float32), "peak_index": ((17,), torch.int64),
        "peak_weights": ((17,), torch.float32), "keypoints": ((17, 2), torch.float32),
        "visible": ((17,), torch.float32), "ann_id": ((), torch.int64), "image_id": ((), torch.int64),
        "category_id": ((), torch.int64), "center": ((2,), torch.float32), "scale": ((2,), torch.float32),
        "bbox": ((4,), torch.float32), "area": ((), torch.float32), "rotation": ((), torch.float32),
        "flipped": ((), torch.bool),
    }
    assert set(item) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
    assert int(item["ann_id"]) == 6 and int(item["image_id"]) == 4 and int(item["category_id"]) == 1
    vis = item["visible"].numpy() > 0
    assert vis.sum() == 16 and not vis[1]
    np.testing.assert_array_equal(item["keypoint_weights"].numpy(), vis.astype(np.float32))
    # the heatmap peak sits at the rounded transformed keypoint; the peak cell at the rounded 16 px cell
    kpts = item["keypoints"].numpy()
    for k in np.flatnonzero(vis):
        hm = item["heatmaps"][k].numpy()
        row, col = np.unravel_index(hm.argmax(), hm.shape)
        assert (col, row) == tuple(np.floor(kpts[k] / 4 + 0.5).astype(int))
        assert hm[row, col] == 1.0
        prow, pcol = divmod(int(item["peak_index"][k]), 16)
        assert (pcol, prow) == tuple(np.floor(kpts[k] / 16 + 0.5).astype(int))
    assert item["heatmaps"][1].max() == 0
    np.testing.assert_array_equal(item["peak_weights"].numpy(), vis.astype(np.float32))


def test_eval_items_are_deterministic_and_do_not_touch_the_torch_rng(instances):
    ds = _dataset(instances, train=False)
    state = torch.random.get_rng_state()
    a, b = ds[0], ds[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a["image"], b["image"])


def test_train_items_reproducible_in_process(instances):
    ds = _dataset(instances, train=True)
    torch.manual_seed(1)
    a = [ds[i % 2] for i in range(6)]
    torch.manual_seed(1)
    b = [ds[i % 2] for i in range(6)]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["keypoints"], y["keypoints"])
    # successive draws of the same index differ (new augmentation every time)
    assert not torch.equal(a[0]["keypoints"], a[2]["keypoints"])


def _loader(ds, workers, persistent=False):
    return DataLoader(ds, batch_size=1, num_workers=workers, shuffle=False, persistent_workers=persistent,
                      multiprocessing_context="fork" if workers else None)


def _epoch(loader):
    return torch.cat([b["keypoints"] for b in loader])


def test_train_items_reproducible_with_workers(instances):
    ds = _dataset(instances * 2, train=True)
    torch.manual_seed(5)
    first = _epoch(_loader(ds, 2))
    torch.manual_seed(5)
    assert torch.equal(_epoch(_loader(ds, 2)), first)
    torch.manual_seed(6)
    assert not torch.equal(_epoch(_loader(ds, 2)), first)
    # the four items draw different augmentations although they are two instances twice
    assert not torch.equal(first[0], first[2])


def test_persistent_workers_get_new_augmentation_every_epoch(instances):
    torch.manual_seed(0)
    loader = _loader(_dataset(instances, train=True), 1, persistent=True)
    assert not torch.equal(_epoch(loader), _epoch(loader))


def test_codec_and_transform_sizes_must_agree(instances):
    with pytest.raises(ValueError, match="input_size"):
        TopDownDataset(instances, TopDownTransform(AP10K, (192, 256)), MSRAHeatmap(), (12, 16))
