"""Independent PyTorch reference for the segmenter's heads and checkpoints (MMSegmentation 0.x semantics).

Run by SegmentorPyTorchTests with Debian's python3-torch. The heads are written here from MMSeg's structure
(mmseg/models/decode_heads/{decode_head,uper_head,psp_head,fcn_head}.py with mmcv's ConvModule): the same module
registration order gives the same state_dict keys. Usage:

    mmseg_heads_reference.py CONFIG.json CHECKPOINT.pth WORKDIR

WORKDIR holds f0.bin..f3.bin (backbone features), shapes.json, decode.bin and aux.bin (the C# heads' logits). The script
loads the C# checkpoint with torch.load, checks its layout and key order, loads the heads strictly, compares logits,
then writes mmseg.pth (an mmcv-style checkpoint with meta, state_dict and an AdamW optimizer state, heads perturbed) and
decode2.bin/aux2.bin (the perturbed heads' logits). Prints one JSON line of results.
"""
import json
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class BaseHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.in_index = cfg["in_index"] if isinstance(cfg["in_index"], list) else [cfg["in_index"]]
        self.align_corners = cfg.get("align_corners", False)
        self.conv_seg = nn.Conv2d(cfg["channels"], cfg["num_classes"], 1)
        self.dropout = nn.Dropout2d(cfg.get("dropout_ratio", 0.1))

    def cls_seg(self, x):
        return self.conv_seg(self.dropout(x))

    def resize(self, x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class UPerHead(BaseHead):
    def __init__(self, cfg):
        super().__init__(cfg)
        cin, c = cfg["in_channels"], cfg["channels"]
        self.psp_modules = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin[-1], c, 1)) for s in cfg["pool_scales"]])
        self.bottleneck = ConvModule(cin[-1] + len(cfg["pool_scales"]) * c, c, 3)
        self.lateral_convs = nn.ModuleList([ConvModule(ci, c, 1) for ci in cin[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(c, c, 3) for _ in cin[:-1]])
        self.fpn_bottleneck = ConvModule(len(cin) * c, c, 3)

    def forward(self, inputs):
        x = [inputs[i] for i in self.in_index]
        top = x[-1]
        psp = [top] + [self.resize(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(x[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat(psp, 1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)]
        outs.append(laterals[-1])
        for i in range(len(outs) - 1, 0, -1):
            outs[i] = self.resize(outs[i], outs[0].shape[2:])
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class FCNHead(BaseHead):
    def __init__(self, cfg):
        super().__init__(cfg)
        cin = cfg["in_channels"] if isinstance(cfg["in_channels"], int) else cfg["in_channels"][0]
        k = cfg.get("kernel_size", 3)
        self.convs = nn.Sequential(*[ConvModule(cin if i == 0 else cfg["channels"], cfg["channels"], k) for i in range(cfg["num_convs"])])

    def forward(self, inputs):
        return self.cls_seg(self.convs(inputs[self.in_index[0]]))


def sub_state(state, prefix):
    return OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))


def main():
    config_path, checkpoint_path, work = sys.argv[1:4]
    cfg = json.load(open(config_path))
    shapes = json.load(open(f"{work}/shapes.json"))
    feats = [torch.from_numpy(np.fromfile(f"{work}/f{i}.bin", dtype="<f4").reshape(shapes[f"f{i}"])) for i in range(4)]
    result = {}

    ck = torch.load(checkpoint_path, map_location="cpu")
    result["top_level_keys"] = sorted(ck.keys())
    result["classes"] = list(ck["meta"]["CLASSES"])
    result["classes_is_tuple"] = isinstance(ck["meta"]["CLASSES"], tuple)
    result["palette"] = [list(c) for c in ck["meta"]["PALETTE"]]
    state = ck["state_dict"]

    torch.manual_seed(0)
    heads = {"decode_head": UPerHead(cfg["decode_head"]), "auxiliary_head": FCNHead(cfg["auxiliary_head"])}
    for name, head in heads.items():
        head.eval()
        own = sub_state(state, name + ".")
        result[f"{name}_key_order_matches"] = list(own.keys()) == list(head.state_dict().keys())
        head.load_state_dict(own, strict=True)

    with torch.no_grad():
        for name, file in (("decode_head", "decode"), ("auxiliary_head", "aux")):
            ours = torch.from_numpy(np.fromfile(f"{work}/{file}.bin", dtype="<f4"))
            ref = heads[name](feats).flatten()
            result[f"{file}_max_abs_diff"] = float((ours - ref).abs().max())
            result[f"{file}_scale"] = float(ref.abs().max())

    # An mmcv-style checkpoint, as MMSeg's training writes it: meta, state_dict (OrderedDict), optimizer (AdamW state).
    g = torch.Generator().manual_seed(1)
    new_state = OrderedDict()
    for k, v in state.items():
        if v.is_floating_point() and not k.endswith(("running_var",)) and not k.startswith("backbone."):
            v = v * 1.1 + 0.01 * torch.randn(v.shape, generator=g)
        new_state[k] = v.clone()
    for name, head in heads.items():
        head.load_state_dict(sub_state(new_state, name + "."), strict=True)
    params = [p for h in heads.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)
    loss = heads["decode_head"](feats).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    # The step changed the heads' parameters; the checkpoint's state_dict is new_state, so the heads go back to it.
    for name, head in heads.items():
        head.load_state_dict(sub_state(new_state, name + "."), strict=True)
    meta = {
        "mmseg_version": "0.29.1",
        "config": "model = dict(type='EncoderDecoder', ...)",
        "CLASSES": ("a", "b", "c"),
        "PALETTE": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        "env_info": "sys.platform: linux",
        "seed": 0,
        "exp_name": "upernet.py",
        "epoch": 1,
        "iter": 2000,
        "hook_msgs": {"last_ckpt": "/work_dirs/iter_2000.pth"},
        "time": "Mon Nov 30 00:00:00 2026",
    }
    torch.save({"meta": meta, "state_dict": new_state, "optimizer": opt.state_dict()}, f"{work}/mmseg.pth")
    with torch.no_grad():
        heads["decode_head"](feats).numpy().astype("<f4").tofile(f"{work}/decode2.bin")
        heads["auxiliary_head"](feats).numpy().astype("<f4").tofile(f"{work}/aux2.bin")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
