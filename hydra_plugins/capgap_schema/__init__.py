"""Registers capgap's config schema (capgap.runtime.schema) in Hydra's ConfigStore. Hydra
imports every module of the hydra_plugins namespace when it starts, before it composes, so
`python run.py`, a multirun, the Compose API and `capgap plan` all find `capgap_schema` the
same way (as hydra-submitit registers its launcher configs)."""

from capgap.runtime.schema import register

register()
