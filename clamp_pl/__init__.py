"""CLAMP: prompt-based contrastive learning for animal pose, on Lightning + Hydra."""
import logging
import warnings

__version__ = "0.1.0"

# Lightning 2.6's own pytree helper still builds torch's LeafSpec, which torch 2.14 deprecates: every run printed
# this twice, about Lightning's code, with nothing for a user to act on. Only that message from that module.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                        r"pytorch_lightning\.utilities\._pytree")


class _NoAdvertisement(logging.Filter):
    """Lightning's "Tip: try installing litlogger / litmodels" lines (its cloud products), printed every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdvertisement())
