"""The prepare steps by name: the one registry the config, the CLI and the Python API use."""

from __future__ import annotations

from strop.data.prepare.base import Step
from strop.data.prepare.convert import Convert
from strop.data.prepare.decontam import Decontaminate
from strop.data.prepare.dedup import ExactDedup
from strop.data.prepare.filters import Filter
from strop.data.prepare.near_dedup import NearDedup
from strop.data.prepare.normalise import Normalise
from strop.data.prepare.pii import Pii
from strop.data.prepare.quality import Quality

STEPS: dict[str, type[Step]] = {
    "normalise": Normalise,
    "filter": Filter,
    "dedup_exact": ExactDedup,
    "dedup_near": NearDedup,
    "pii": Pii,
    "decontaminate": Decontaminate,
    "quality": Quality,
    "convert": Convert,
}
