"""NestedTensor batching, collate, inverse_sigmoid, metric logging, distributed collectives (2-process gloo)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from util import distributed as udist
from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, generalized_box_iou, generalized_box_iou_pairwise
from util.metric_logger import MetricLogger, SmoothedValue
from util.misc import collate_fn, inverse_sigmoid, nested_tensor_from_tensor_list

from tests.helpers import free_port


def test_nested_tensor_pads_bottom_right_and_masks_padding():
    a, b = torch.ones(3, 4, 5), 2 * torch.ones(3, 6, 2)
    nt = nested_tensor_from_tensor_list([a, b])
    assert nt.tensors.shape == (2, 3, 6, 5) and nt.mask.shape == (2, 6, 5)
    assert torch.equal(nt.tensors[0, :, :4, :5], a) and nt.tensors[0, :, 4:].abs().sum() == 0
    assert not nt.mask[0, :4, :5].any() and nt.mask[0, 4:].all() and nt.mask[0, :, 5:].all()
    assert not nt.mask[1, :6, :2].any() and nt.mask[1, :, 2:].all()
    assert nt.image_sizes() == [(4, 5), (6, 2)]


def test_collate_returns_batch_and_targets_tuple():
    samples, targets = collate_fn([(torch.zeros(3, 2, 2), {"id": 1}), (torch.zeros(3, 3, 1), {"id": 2})])
    assert samples.tensors.shape == (2, 3, 3, 2) and targets == ({"id": 1}, {"id": 2})


def test_nested_tensor_rejects_bad_input():
    with pytest.raises(ValueError):
        nested_tensor_from_tensor_list([])
    with pytest.raises(ValueError, match="C, H, W"):
        nested_tensor_from_tensor_list([torch.zeros(2, 2)])


def test_inverse_sigmoid_uses_eps_1e3():
    x = torch.tensor([0.0, 0.5, 1.0, 0.25])
    out = inverse_sigmoid(x)
    assert out[1] == 0 and torch.isclose(out[0], torch.log(torch.tensor(1e-3)))
    assert torch.isclose(out[3], torch.log(torch.tensor(0.25 / 0.75)))
    assert torch.allclose(torch.sigmoid(inverse_sigmoid(torch.tensor([0.3, 0.7]))), torch.tensor([0.3, 0.7]))


def test_box_conversions_and_giou():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    giou = generalized_box_iou(xyxy, xyxy)
    # disjoint unit boxes 1 apart: iou 0, hull 3, union 2 -> -1/3
    assert torch.allclose(giou, torch.tensor([[1.0, -1 / 3], [-1 / 3, 1.0]]))
    assert torch.allclose(generalized_box_iou_pairwise(xyxy, xyxy.flip(0)), torch.tensor([-1 / 3, -1 / 3]))


def test_smoothed_value_and_metric_logger(capsys):
    v = SmoothedValue(window_size=2)  # median is the lower middle value, as torch.median
    for x in (1.0, 2.0, 6.0):
        v.update(x)
    assert v.median == 2.0 and v.avg == 4.0 and v.global_avg == 3.0 and v.max == 6.0 and v.value == 6.0
    logger = MetricLogger()
    lines = []
    seen = [item for item in logger.log_every(range(5), 2, "hdr", log=lines.append) if not logger.update(loss=item)]
    assert seen == list(range(5)) and logger.loss.global_avg == 2.0
    progress = [line for line in lines if "eta" in line]
    assert len(progress) == 3 and "[4/5]" in progress[-1] and "loss" in progress[-1]
    assert "Total time" in lines[-1]


def _worker(rank: int, world: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        reduced = udist.reduce_dict({"a": torch.tensor(float(rank + 1)), "b": torch.tensor(2.0)})
        gathered = udist.all_gather({"rank": rank})
        meter = SmoothedValue()
        meter.update(rank + 1.0)
        meter.synchronize_between_processes()
        results[rank] = (float(reduced["a"]), float(reduced["b"]), gathered, meter.count, meter.total)
    finally:
        torch.distributed.destroy_process_group()


def test_collectives_across_two_gloo_processes():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, free_port(), results), nprocs=2, join=True)
    for rank in range(2):
        a, b, gathered, count, total = results[rank]
        assert (a, b) == (1.5, 2.0)
        assert gathered == [{"rank": 0}, {"rank": 1}]
        assert (count, total) == (2, 3.0)


def test_single_process_collectives_are_identity():
    assert udist.all_gather(5) == [5]
    assert udist.reduce_dict({"x": torch.tensor(3.0)})["x"] == 3.0
    assert udist.get_world_size() == 1 and udist.is_main_process()
