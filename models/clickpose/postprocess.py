"""Model outputs -> per-image detections in image pixels (COCO-style evaluation input)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy

from util import keypoint_codec as kp


def nms_keep(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-class box NMS, in their given (score) order. boxes: (n, 4) xyxy."""
    from torchvision.ops import batched_nms

    return batched_nms(boxes.float(), scores.float(), labels, iou_threshold).sort().values


class PostProcess(nn.Module):
    """Top ``num_select`` (query, class) pairs by sigmoid score, as the reference.

    Both classes compete in the top-k (so a query can appear twice and label-0 entries occur; COCO
    evaluation with catIds=[1] ignores the latter). Returns per image {'scores' (n,), 'labels' (n,),
    'boxes' (n, 4) xyxy pixels, 'keypoints' (n, 3K) COCO triplets [x, y, s, ...] with s = the visibility slot}.
    ``nms_iou_threshold`` > 0 then drops, per image and class, each box overlapping a better-scored one by more
    than that IoU (the reference declares this option but raises NotImplementedError; -1 = off, its default).
    :meth:`select` gives the same choice as query indices (what the Predictor decodes its people with).
    """

    def __init__(self, num_select: int = 100, nms_iou_threshold: float = -1, num_keypoints: int = 17):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.num_select, self.nms_iou_threshold = num_select, nms_iou_threshold

    @torch.no_grad()
    def select(self, outputs: dict[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """The chosen (query, class) pairs per image, best first: {'scores', 'labels', 'queries' (n,) indices
        into the outputs' queries, 'boxes' (n, 4) xyxy pixels}. target_sizes: (B, 2) (h, w) of the originals."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes) or target_sizes.shape[1] != 2:
            raise ValueError(f"target_sizes must be (B, 2) (h, w) for the batch of {len(logits)}, "
                             f"got {tuple(target_sizes.shape)}")
        batch, num_queries, num_classes = logits.shape
        if self.num_select > num_queries * num_classes:
            raise ValueError(f"num_select={self.num_select} exceeds the {num_queries * num_classes} (query, class) "
                             "pairs of these outputs; lower num_select (the interactive evaluation caps it at "
                             "num_group_refine * num_classes)")
        scores, flat_index = torch.topk(logits.sigmoid().view(batch, -1), self.num_select, dim=1)
        queries = torch.div(flat_index, num_classes, rounding_mode="floor")
        labels = flat_index % num_classes
        img_h, img_w = target_sizes.unbind(1)
        box_scale = torch.stack((img_w, img_h, img_w, img_h), 1)[:, None, :]
        picked_boxes = torch.gather(box_cxcywh_to_xyxy(boxes), 1, queries[..., None].expand(-1, -1, 4)) * box_scale
        chosen = [{"scores": s, "labels": l, "queries": q, "boxes": b}
                  for s, l, q, b in zip(scores, labels, queries, picked_boxes)]
        if self.nms_iou_threshold > 0:
            for image in chosen:
                keep = nms_keep(image["boxes"], image["scores"], image["labels"], self.nms_iou_threshold)
                image.update({key: value[keep] for key, value in image.items()})
        return chosen

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """target_sizes: (B, 2) (h, w) of the original images."""
        k = self.num_keypoints
        keypoints = outputs["pred_keypoints"]
        results = []
        for i, image in enumerate(self.select(outputs, target_sizes)):
            picked = keypoints[i][image["queries"]][None]  # (1, n, 3K)
            triplets = kp.to_coco_triplets(picked, target_sizes[i:i + 1], k)[0]
            results.append({"scores": image["scores"], "labels": image["labels"], "boxes": image["boxes"],
                            "keypoints": triplets})
        return results
