"""Backbones and upsampling heads; any backbone combines with any head.

A model reads one slice at the input size ``r`` and returns class logits at every
head scale, coarse to fine, the last one at the output size ``R`` (deep supervision).

Backbones (by name): ``elunet`` (the paper's ELU-Net with UNet3+-style full-scale
skips), ``unet`` (a plain small U-Net), ``dsunet`` (a U-Net of depthwise-separable
blocks). Heads: ``interp`` (bilinear, no parameters), ``jhead`` (the learned ×2
chain on the class channels plus a fusion stage), ``full`` (the backbone runs at R).
"""

import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from LowResSegLib.images.geometry import bilinear_matrix  # the inference path's matrix (cached there)

BACKBONES = ("elunet", "unet", "dsunet")
HEADS = ("interp", "jhead", "full")


def conv3(cin, cout):
    # padding=1, not "same": "same" has broken some torch ONNX exports.
    return nn.Conv2d(cin, cout, 3, padding=1)


class DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            conv3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            conv3(cout, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class SeparableDoubleConv(nn.Sequential):
    """Two depthwise-3x3 + pointwise-1x1 blocks: ~8x fewer MACs than DoubleConv."""

    def __init__(self, cin, cout):
        layers = []
        for a, b in ((cin, cout), (cout, cout)):
            layers += [
                nn.Conv2d(a, a, 3, padding=1, groups=a, bias=False),
                nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class ScaleUp(nn.Sequential):
    """log2(factor) ConvTranspose ×2 stages, then a 3x3 conv to ``cout`` (factor 1: conv only)."""

    def __init__(self, cin, cout, factor):
        stages = int(round(math.log2(factor))) if factor > 1 else 0
        super().__init__(*[nn.ConvTranspose2d(cin, cin, 2, 2) for _ in range(stages)], conv3(cin, cout))


class ELUNet(nn.Module):
    """ELU-Net: 4 pooling stages, decoders fed from every coarser encoder level.

    Unlike the reference code, no up-sampling module is shared between two skips.
    """

    min_divisor = 16

    def __init__(self, classes=1, width=8):
        super().__init__()
        n = width
        self.inc = DoubleConv(1, n)
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b))
            for a, b in ((n, 2 * n), (2 * n, 4 * n), (4 * n, 8 * n), (8 * n, 16 * n))
        )
        # decoder 4 (r/8): enc4, enc3
        self.d4_from = nn.ModuleList([ScaleUp(16 * n, 8 * n, 2), ScaleUp(8 * n, 8 * n, 1)])
        self.dec4 = DoubleConv(16 * n, 8 * n)
        # decoder 3 (r/4): dec4, enc3, enc2
        self.d3_from = nn.ModuleList([ScaleUp(8 * n, 4 * n, 2), ScaleUp(8 * n, 4 * n, 2), ScaleUp(4 * n, 4 * n, 1)])
        self.dec3 = DoubleConv(12 * n, 4 * n)
        # decoder 2 (r/2): dec3, enc3, enc2, enc1
        self.d2_from = nn.ModuleList([
            ScaleUp(4 * n, 2 * n, 2), ScaleUp(8 * n, 2 * n, 4), ScaleUp(4 * n, 2 * n, 2), ScaleUp(2 * n, 2 * n, 1)])
        self.dec2 = DoubleConv(8 * n, 2 * n)
        # decoder 1 (r): dec2, enc3, enc2, enc1, inc
        self.d1_from = nn.ModuleList([
            ScaleUp(2 * n, n, 2), ScaleUp(8 * n, n, 8), ScaleUp(4 * n, n, 4), ScaleUp(2 * n, n, 2), ScaleUp(n, n, 1)])
        self.dec1 = DoubleConv(5 * n, n)
        self.out = nn.Conv2d(n, classes, 1)

    def forward(self, x):
        x0 = self.inc(x)
        e1 = self.down[0](x0)
        e2 = self.down[1](e1)
        e3 = self.down[2](e2)
        e4 = self.down[3](e3)
        d4 = self.dec4(torch.cat([m(t) for m, t in zip(self.d4_from, (e4, e3))], 1))
        d3 = self.dec3(torch.cat([m(t) for m, t in zip(self.d3_from, (d4, e3, e2))], 1))
        d2 = self.dec2(torch.cat([m(t) for m, t in zip(self.d2_from, (d3, e3, e2, e1))], 1))
        d1 = self.dec1(torch.cat([m(t) for m, t in zip(self.d1_from, (d2, e3, e2, e1, x0))], 1))
        return self.out(d1)


class UNet(nn.Module):
    """A plain 3-level U-Net (widths n..8n) with transposed-conv up-sampling."""

    min_divisor = 8
    block = DoubleConv

    def __init__(self, classes=1, width=8):
        super().__init__()
        n, block = width, self.block
        self.inc = block(1, n)
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), block(a, b)) for a, b in ((n, 2 * n), (2 * n, 4 * n), (4 * n, 8 * n))
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, 2) for c in (8 * n, 4 * n, 2 * n))
        self.dec = nn.ModuleList(block(c, c // 2) for c in (8 * n, 4 * n, 2 * n))
        self.out = nn.Conv2d(n, classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec):
            y = dec(torch.cat([up(y), skips.pop()], 1))
        return self.out(y)


class DSUNet(UNet):
    """The U-Net with depthwise-separable blocks: the MobileNet-style light family."""

    block = SeparableDoubleConv


def build_backbone(name, classes=1, width=8):
    table = {"elunet": ELUNet, "unet": UNet, "dsunet": DSUNet}
    if name not in table:
        raise ValueError("unknown backbone %r; choose one of %s" % (name, ", ".join(BACKBONES)))
    return table[name](classes=classes, width=width)


def _bilinear(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _bilinear_for_training(x, size):
    """:func:`_bilinear` of a square map as two products with the inference path's bilinear matrix: the same numbers (float rounding), and
    forward plus backward about 4x cheaper on a CPU than ``upsample_bilinear2d`` (issue 28). Export keeps
    :func:`_bilinear` (an ONNX Resize)."""
    a = torch.from_numpy(bilinear_matrix(x.shape[-1], size)).to(x.device, x.dtype)
    return a @ x @ a.t()


class InterpHead(nn.Module):
    """Bilinear up-sampling of the logits: the parameter-free baseline."""

    def __init__(self, classes, input_size, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, logits) -> List[torch.Tensor]:
        up = _bilinear_for_training if self.training else _bilinear
        return [logits, up(logits, self.output_size)]


def _subpixel_selection():
    """S[a, b, p, q, x, y, i, j] = 1 where output phase (a, b), 3x3 tap (p, q) of the conv after the
    ConvT meets ConvT tap (x, y) of the low-resolution pixel at offset (i - 1, j - 1)."""
    s = torch.zeros(2, 2, 3, 3, 2, 2, 3, 3)
    for a in range(2):
        for b in range(2):
            for p in range(3):
                for q in range(3):
                    di, x = divmod(a + p - 1, 2)
                    dj, y = divmod(b + q - 1, 2)
                    s[a, b, p, q, x, y, di + 1, dj + 1] = 1.0
    return s


_SELECTION = _subpixel_selection()


def subpixel_weights(up_weight, up_bias, conv_weight, conv_bias, low_size):
    """ConvT(k2, s2) -> Conv3x3 (zero padding) as one Conv3x3 at the low resolution with 4x the
    channels, and the constant map that the two biases add (exact at the borders too).

    Differentiable, so training runs the cheap form too; export freezes the same numbers.
    Returns (kernel [4*cout, cin, 3, 3], constant [cout, 2n, 2n]).
    """
    cout, cin = conv_weight.shape[0], up_weight.shape[0]
    sel = _SELECTION.to(dtype=conv_weight.dtype, device=conv_weight.device)
    k = torch.einsum("ompq,cmxy,abpqxyij->oabcij", conv_weight, up_weight, sel).reshape(4 * cout, cin, 3, 3)
    # the ConvT bias is constant over the 2n x 2n grid: through a 3x3 conv with zero padding, a pixel
    # sees one of three cases per axis (first row, inside, last row), so a 3x3 map gives every value
    mid = up_weight.shape[1]
    small = F.conv2d(up_bias.view(1, mid, 1, 1).expand(1, mid, 3, 3), conv_weight, conv_bias, padding=1)[0]
    n2 = 2 * low_size
    idx = torch.ones(n2, dtype=torch.long, device=conv_weight.device)
    idx[0], idx[-1] = 0, 2
    const = small[:, idx][:, :, idx]
    return k, const


def subpixel_stage(x, k, const):
    return F.pixel_shuffle(F.conv2d(x, k, padding=1), 2) + const


class JHead(nn.Module):
    """Learned up-sampling on the C class channels (J-Net), < 200 parameters for C = 1.

    chain:  ×2 stages ConvT(C,C,2,2) -> Conv3x3(C,C) from r up to R/2, each supervised;
    fusion: cat[bilinear(logits -> R/2), chain] -> ConvT(2C,2C,2,2) -> Conv3x3(2C,C),
            added to bilinear(logits -> R).
    The residual bilinear path (with the fusion conv zero-initialised) makes the head
    start exactly as ``interp`` and learn only a correction, so it cannot train worse
    than the baseline it replaces. Unlike the reference code it has no dead branch and
    no weights shared between stages; its skip is parameter-free.

    ``subpixel`` (the default) computes each stage in the exact sub-pixel form
    (:func:`subpixel_weights`): the same function and gradients, with the convolution at a quarter
    of the pixels, which took ~60 % of a training step's model time before (issue 28). The
    parameters are those of the plain form, so checkpoints and export do not change.
    """

    subpixel = True

    def __init__(self, classes, input_size, output_size):
        super().__init__()
        c = classes
        ratio = output_size // input_size
        if ratio < 2 or ratio * input_size != output_size or ratio & (ratio - 1):
            raise ValueError(
                "jhead needs output_size = input_size x 2^k (k >= 1), got %d -> %d" % (input_size, output_size))
        self.output_size = output_size
        self.skip_is_identity = ratio == 2
        self.chain = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2), conv3(c, c)) for _ in range(int(math.log2(ratio)) - 1)
        )
        self.fuse = nn.Sequential(nn.ConvTranspose2d(2 * c, 2 * c, 2, 2), conv3(2 * c, c))
        nn.init.zeros_(self.fuse[1].weight)
        nn.init.zeros_(self.fuse[1].bias)

    def forward(self, logits) -> List[torch.Tensor]:
        outs = [logits]
        x = logits
        for stage in self.chain:
            x = self._stage(stage, x)
            outs.append(x)
        half = self.output_size // 2
        up = _bilinear_for_training if self.training and self.subpixel else _bilinear
        skip = logits if self.skip_is_identity else up(logits, half)
        outs.append(self._stage(self.fuse, torch.cat([skip, x], 1)) + up(logits, self.output_size))
        return outs

    def _stage(self, stage: nn.Sequential, x):
        if not self.subpixel:
            return stage(x)
        up, conv = stage[0], stage[1]
        k, const = subpixel_weights(up.weight, up.bias, conv.weight, conv.bias, x.shape[-1])
        return subpixel_stage(x, k, const)


class SubpixelStage(nn.Module):
    """ConvT(k2, s2) -> Conv3x3, rewritten exactly as Conv3x3 at the low resolution + pixel shuffle.

    Same numbers (the stage is linear), but the convolution runs on 4× fewer pixels with
    4× the channels, which onnxruntime's CPU kernels (and TensorRT) handle far better than
    a 1-2-channel convolution at 256²: this is what keeps the learned head nearly free.
    The biases become a constant map, computed once, that is exact at the borders too.
    """

    def __init__(self, up: nn.ConvTranspose2d, conv: nn.Conv2d, low_size: int):
        super().__init__()
        with torch.no_grad():
            k, const = subpixel_weights(up.weight, up.bias, conv.weight, conv.bias, low_size)
        self.conv = nn.Conv2d(k.shape[1], k.shape[0], 3, padding=1, bias=False)
        self.conv.weight.data.copy_(k)
        self.register_buffer("const", const.detach().clone())

    def forward(self, x):
        return F.pixel_shuffle(self.conv(x), 2) + self.const


class FastJHead(nn.Module):
    """The same function as a trained :class:`JHead`, in the export-friendly sub-pixel form."""

    def __init__(self, head: "JHead", input_size: int):
        super().__init__()
        self.output_size, self.skip_is_identity = head.output_size, head.skip_is_identity
        sizes = [input_size * 2 ** i for i in range(len(head.chain) + 1)]
        self.chain = nn.ModuleList(SubpixelStage(st[0], st[1], n) for st, n in zip(head.chain, sizes))
        self.fuse = SubpixelStage(head.fuse[0], head.fuse[1], head.output_size // 2)

    def forward(self, logits) -> List[torch.Tensor]:
        x = logits
        for stage in self.chain:
            x = stage(x)
        skip = logits if self.skip_is_identity else _bilinear(logits, self.output_size // 2)
        return [self.fuse(torch.cat([skip, x], 1)) + _bilinear(logits, self.output_size)]


class FullHead(nn.Module):
    """No head: the backbone already runs at the output size."""

    def __init__(self, classes, input_size, output_size):
        super().__init__()
        if input_size != output_size:
            raise ValueError("the 'full' head needs input_size == output_size, got %d and %d"
                             % (input_size, output_size))

    def forward(self, logits) -> List[torch.Tensor]:
        return [logits]


def build_head(name, classes, input_size, output_size):
    table = {"interp": InterpHead, "jhead": JHead, "full": FullHead}
    if name not in table:
        raise ValueError("unknown head %r; choose one of %s" % (name, ", ".join(HEADS)))
    return table[name](classes, input_size, output_size)


class SegModel(nn.Module):
    """backbone at r + head to R; ``forward`` returns logits per head scale, coarse to fine."""

    def __init__(self, backbone="elunet", head="jhead", input_size=32, output_size=256, classes=1, width=8):
        super().__init__()
        if head == "full":
            input_size = output_size
        self.config = dict(backbone=backbone, head=head, input_size=int(input_size),
                           output_size=int(output_size), classes=int(classes), width=int(width))
        self.backbone = build_backbone(backbone, classes, width)
        if input_size % self.backbone.min_divisor:
            raise ValueError("backbone %s needs an input size divisible by %d, got %d"
                             % (backbone, self.backbone.min_divisor, input_size))
        self.head = build_head(head, classes, input_size, output_size)

    @property
    def name(self):
        c = self.config
        if c["head"] == "full":
            return "%s-full-%d" % (c["backbone"], c["output_size"])
        return "%s-%s-%dto%d" % (c["backbone"], c["head"], c["input_size"], c["output_size"])

    def forward(self, x) -> List[torch.Tensor]:
        return self.head(self.backbone(x))

    def scales(self) -> List[int]:
        with torch.no_grad():
            was = self.training
            self.eval()
            r = self.config["input_size"]
            sizes = [o.shape[-1] for o in self(torch.zeros(1, 1, r, r, device=_device_of(self)))]
            self.train(was)
        return sizes


class ExportWrapper(nn.Module):
    """What goes into ONNX: the outputs of ``modelstore.graph_outputs``, in that order.

    Only TensorRT 8.2 types (no UINT8): ``labels`` BOOL (INT32 for several classes),
    ``probabilities`` FP32 and ``probabilities_8bit`` FP16 on a 1/255 grid, which is what
    the engines read and what crosses the network (it compresses ~30x with gzip).
    """

    def __init__(self, model: SegModel):
        super().__init__()
        self.backbone = model.backbone
        head = model.head
        self.head = FastJHead(head, model.config["input_size"]) if isinstance(head, JHead) else head
        self.binary = model.config["classes"] == 1

    def forward(self, image):
        logits = self.head(self.backbone(image))[-1]
        prob = torch.sigmoid(logits)
        if self.binary:
            labels = logits[:, 0] > 0
        else:
            best, idx = prob.max(dim=1)
            labels = torch.where(best > 0.5, idx + 1, torch.zeros_like(idx)).to(torch.int32)
        prob_8bit = (torch.round(prob * 255.0) / 255.0).to(torch.float16)
        return labels, prob, prob_8bit


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _device_of(module: nn.Module) -> torch.device:
    """Where the module's weights are (a probe input must be there too: CPU or GPU)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_macs(module: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of Conv / ConvTranspose layers for one slice.

    ConvTranspose is counted per *input* pixel (H_in·W_in·C_in·C_out·k²/groups), the
    convention of ptflops and fvcore; thop over-counts it by the stride². A :class:`JHead` is
    counted in its plain form (the paper's layers), whichever form it computes in.
    """
    total = [0]

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * k

    def convt_hook(m, inp, out):
        x = inp[0]
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += x.shape[2] * x.shape[3] * m.in_channels * (m.out_channels // m.groups) * k

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(convt_hook))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
    was = module.training
    heads = [m for m in module.modules() if isinstance(m, JHead)]
    module.eval()
    try:
        for head in heads:
            head.subpixel = False
        with torch.no_grad():
            module(torch.zeros(1, 1, input_size, input_size, device=_device_of(module)))
    finally:
        for h in hooks:
            h.remove()
        for head in heads:
            del head.subpixel  # back to the class default
        module.train(was)
    return total[0]


def model_stats(model: SegModel) -> dict:
    """Parameter and MAC counts split into backbone and head (for the model card)."""
    c = model.config
    r = c["input_size"]
    head_macs = 0
    if c["head"] != "full":
        backbone_macs = count_macs(model.backbone, r)
        head_macs = count_macs(model, r) - backbone_macs
    else:
        backbone_macs = count_macs(model.backbone, r)
    return {
        "params": {"backbone": count_params(model.backbone), "head": count_params(model.head)},
        "macs": {"backbone": int(backbone_macs), "head": int(head_macs)},
    }
