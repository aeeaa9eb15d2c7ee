"""Hydra sweeper plugin `hydra/sweeper=capgap_adaptive`: a capacity-gap study that measures
teachers only near each student's optimum (capgap.law.adaptive). `hydra_plugins` itself is
a namespace package shared with other plugins, so it has no __init__.py."""
