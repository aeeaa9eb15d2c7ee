"""The one error type for bad user input.

Raised with a single line that names the offending config key or file; run.py and the
`capgap` CLI print it and exit non-zero instead of showing a traceback.
"""


class CapgapError(Exception):
    """Bad input from the user: unknown name, impossible value, missing or corrupt file."""

    exit_code = 2
