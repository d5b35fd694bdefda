"""Data preparation (`strop prepare`): an ordered pipeline of cleaning steps over chat, text,
preference and KTO records, streaming and parallel, with a quarantine and a report.

Python API::

    from strop.data.prepare import load_prepare_config, run_prepare, STEPS
    cfg, steps = load_prepare_config("examples/prepare/config.yaml")
    result = run_prepare(cfg, steps)          # files + report dict
    result.report["steps"][0]["removed"]

    from strop.data.prepare import clean_records  # in memory, on Record objects
"""

from strop.data.prepare.api import clean_records
from strop.data.prepare.config import PrepareConfig, load_prepare_config
from strop.data.prepare.run import PrepareResult, run_prepare
from strop.data.prepare.steps import STEPS

__all__ = [
    "STEPS",
    "PrepareConfig",
    "PrepareResult",
    "clean_records",
    "load_prepare_config",
    "run_prepare",
]
