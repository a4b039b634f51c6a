"""A PyTorch reference for the converter and DeepLab tests: torchvision's bottleneck
ResNet and DeepLabV3 rebuilt from plain torch modules (torchvision is not installed),
with the same module names, so their state dicts have torchvision's keys.

Import only after pytest.importorskip('torch').
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):

  def __init__(self, inplanes, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
  """replace_stride_with_dilation: one flag per stage after the first."""

  def __init__(self, layers, width, replace_stride_with_dilation, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes, dilation = width, 1
    for i, blocks in enumerate(layers):
      planes, stride, previous = width * 2 ** i, (1 if i == 0 else 2), dilation
      if i > 0 and replace_stride_with_dilation[i - 1]:
        dilation, stride = dilation * stride, 1
      downsample = None
      if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * 4))
      modules = [Bottleneck(inplanes, planes, stride, previous, downsample)]
      inplanes = planes * 4
      modules += [Bottleneck(inplanes, planes, 1, dilation, None) for _ in range(1, blocks)]
      setattr(self, f'layer{i + 1}', nn.Sequential(*modules))
    self.num_layers = len(layers)
    self.fc = nn.Linear(inplanes, num_classes)

  def features(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_layers):
      x = getattr(self, f'layer{i + 1}')(x)
    return x


class ASPPPooling(nn.Sequential):

  def forward(self, x):
    size = x.shape[-2:]
    for module in self:
      x = module(x)
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class ASPP(nn.Module):

  def __init__(self, in_channels, rates, channels, dropout):
    super().__init__()
    convs = [nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False),
                           nn.BatchNorm2d(channels), nn.ReLU())]
    for rate in rates:
      convs.append(nn.Sequential(
          nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate, bias=False),
          nn.BatchNorm2d(channels), nn.ReLU()))
    convs.append(ASPPPooling(nn.AdaptiveAvgPool2d(1),
                             nn.Conv2d(in_channels, channels, 1, bias=False),
                             nn.BatchNorm2d(channels), nn.ReLU()))
    self.convs = nn.ModuleList(convs)
    self.project = nn.Sequential(
        nn.Conv2d(len(convs) * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
        nn.ReLU(), nn.Dropout(dropout))

  def forward(self, x):
    return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class Backbone(nn.Module):
  """torchvision's IntermediateLayerGetter keeps the ResNet's modules up to layer4."""

  def __init__(self, resnet):
    super().__init__()
    for name in ['conv1', 'bn1', 'maxpool'] + [f'layer{i + 1}' for i in range(resnet.num_layers)]:
      setattr(self, name, getattr(resnet, name))
    self.num_layers = resnet.num_layers

  forward = ResNet.features


class DeepLabV3(nn.Module):

  def __init__(self, layers, width, num_classes, rates, channels, dropout=0.5):
    super().__init__()
    dilate = [False] + [True] * (len(layers) - 2)   # output stride 8
    self.backbone = Backbone(ResNet(layers, width, dilate))
    in_channels = width * 2 ** (len(layers) - 1) * 4
    self.classifier = nn.Sequential(
        ASPP(in_channels, rates, channels, dropout),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        nn.ReLU(), nn.Conv2d(channels, num_classes, 1))

  def forward(self, x):
    y = self.classifier(self.backbone(x))
    return F.interpolate(y, size=x.shape[-2:], mode='bilinear', align_corners=False)


def randomize_batch_norms(module, seed: int) -> None:
  """Non-trivial BatchNorm scales, shifts and running statistics."""
  generator = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(n, generator=generator))
        m.bias.copy_(0.1 * torch.randn(n, generator=generator))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
        m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def nchw(x_nhwc: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 1)
