"""Commands around the main entry points: ``python -m clamp_pl.tools.<name>`` for browse, inspect_data,
import_official, aggregate and demo."""
