from strop.config.load import load_config
from strop.config.schema import Config

__all__ = ["Config", "load_config"]
