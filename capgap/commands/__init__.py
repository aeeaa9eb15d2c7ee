"""What a user types besides `run.py`: the `capgap` command (cli: fit, predict, store, plan,
bench, …) and the scripts behind its subcommands and `python -m capgap.commands.NAME`
(bench, bench_distill, plan, soak, ablate). Commands sit on top: nothing imports them."""
