"""The plumbing every job runs on, and nothing of the science: ranks and process groups
(distributed, sharding), the Lightning Trainer as capgap builds it (training), resumable and
atomic writes (resume, atomic), caches (cache, confdir), token budgets (budget, sizes), what
the terminal shows (terminal, progress) and the one error type (errors).

It imports nothing else of capgap: the science packages and the tasks import it
(tests/test_layering.py holds that)."""
