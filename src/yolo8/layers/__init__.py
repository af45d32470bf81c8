"""Layer kinds, one small module each, and the table from cfg section name to builder."""
from __future__ import annotations

from typing import Callable

from ..darknet.cfg import Section
from . import (avgpool, convolutional, dropout, maxpool, region, reorg, route, shortcut, upsample,
               yolo)
from . import gaussian_yolo, local_avgpool, reorg3d, sam, scale_channels
from . import connected, cost, crop, softmax
from .avgpool import AvgPool
from .base import NETWORK_INPUT, BuildContext, Layer, Shape
from .convolutional import Convolutional
from .dropout import Dropout
from .maxpool import MaxPool
from .region import Region
from .reorg import Reorg
from .route import Route
from .shortcut import Shortcut
from .upsample import Upsample
from .yolo import Yolo
from .gaussian_yolo import GaussianYolo
from .local_avgpool import LocalAvgPool
from .reorg3d import Reorg3d
from .sam import Sam
from .scale_channels import ScaleChannels
from .connected import Connected
from .cost import Cost
from .crop import Crop
from .softmax import Softmax

Builder = Callable[[Section, BuildContext], Layer]

BUILDERS: dict[str, Builder] = {
    "convolutional": convolutional.build,
    "conv": convolutional.build,
    "maxpool": maxpool.build,
    "max": maxpool.build,
    "avgpool": avgpool.build,
    "avg": avgpool.build,
    "dropout": dropout.build,
    "route": route.build,
    "shortcut": shortcut.build,
    "upsample": upsample.build,
    "reorg": reorg.build,
    "yolo": yolo.build,
    "region": region.build,
    "gaussian_yolo": gaussian_yolo.build,
    "scale_channels": scale_channels.build,
    "sam": sam.build,
    "reorg3d": reorg3d.build,
    "local_avgpool": local_avgpool.build,
    "local_avg": local_avgpool.build,
    "connected": connected.build,
    "conn": connected.build,
    "softmax": softmax.build,
    "soft": softmax.build,
    "cost": cost.build,
    "crop": crop.build,
}

HEAD_KINDS = (Yolo, Region, GaussianYolo)

__all__ = ["BUILDERS", "HEAD_KINDS", "NETWORK_INPUT", "AvgPool", "BuildContext", "Convolutional",
           "Dropout", "Layer", "MaxPool", "Region", "Reorg", "Route", "Shape", "Shortcut",
           "Upsample", "Yolo", "Connected", "Cost", "Crop", "Softmax", "GaussianYolo",
           "LocalAvgPool", "Reorg3d", "Sam", "ScaleChannels"]
