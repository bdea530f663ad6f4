"""Reference numbers for SegmentationMetricsTests: MMSegmentation 0.x's eval_metrics (intersect_and_union with
torch.histc, float64 totals, total_area_to_metrics, numpy nanmean), re-typed from mmseg/core/evaluation/metrics.py's
definitions, on the same pseudo-random maps the C# test generates (a 64-bit LCG). Run: /usr/bin/python3 this.py
(torch 1.13, numpy); the C# test embeds its output."""
import numpy as np
import torch

MASK = (1 << 64) - 1


class Lcg:
    def __init__(self, seed):
        self.x = seed & MASK

    def next(self, m):
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) & MASK
        return (self.x >> 33) % m


def maps(rng, h, w):
    label = np.zeros((h, w), np.int64)
    pred = np.zeros((h, w), np.int64)
    for i in range(h * w):
        r = rng.next(100)
        lab = 255 if r < 10 else 9 if r < 12 else rng.next(5)
        r = rng.next(100)
        p = (lab if lab < 7 else 0) if r < 60 else 6 if r < 70 else rng.next(5)
        label.flat[i] = lab
        pred.flat[i] = p
    return pred, label


def intersect_and_union(pred, label, n, ignore):
    pred, label = torch.from_numpy(pred), torch.from_numpy(label)
    mask = label != ignore
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    ai = torch.histc(inter.float(), bins=n, min=0, max=n - 1)
    ap = torch.histc(pred.float(), bins=n, min=0, max=n - 1)
    al = torch.histc(label.float(), bins=n, min=0, max=n - 1)
    return ai, ap + al - ai, ap, al


rng = Lcg(20240517)
n = 7
tot = [torch.zeros(n, dtype=torch.float64) for _ in range(4)]
for h, w in [(17, 23), (8, 31), (29, 5)]:
    p, l = maps(rng, h, w)
    for t, a in zip(tot, intersect_and_union(p, l, n, 255)):
        t += a
ai, au, ap, al = tot
iou = (ai / au).numpy()
acc = (ai / al).numpy()
print("intersect", [int(v) for v in ai])
print("union", [int(v) for v in au])
print("pred", [int(v) for v in ap])
print("label", [int(v) for v in al])
print("aAcc", repr(float(ai.sum() / al.sum())))
print("mIoU", repr(float(np.nanmean(iou))))
print("mAcc", repr(float(np.nanmean(acc))))
print("IoU", [repr(float(v)) for v in iou])
print("Acc", [repr(float(v)) for v in acc])
