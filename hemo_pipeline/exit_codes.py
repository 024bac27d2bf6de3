"""The exit codes of every `hemo` command, and which of them an orchestrator retries.

Exit codes mean something to orchestrators (the Airflow DAG, Kubeflow and DVC callers retry only
what a retry can fix). The one table (README, "Exit codes"; each row has a test in
tests/security/test_exit_codes.py):

====  =======================  ==============================================================  ==========
code  name                     when                                                            retried?
====  =======================  ==============================================================  ==========
0     ok                       the step did its work
1     ``ValidationFailed``     the data did not pass validation (per-check lines printed)       no
2     ``UserError``            bad input a person must fix: a missing/unreadable/malformed     no
                               file, a wrong argument or setting, a refused model, a server
                               that rejects the request or its credentials, a malformed URL
3     ``TransientError``       not the input: a server that does not answer or fails (5xx),    yes
                               an I/O error that may pass (EIO, timeouts), an alias moved
                               under us. Retrying later may succeed
70    internal error           a bug (EX_SOFTWARE): the traceback is printed; report it        no
130   interrupted              SIGINT / Ctrl-C                                                 no
====  =======================  ==============================================================  ==========

Argument errors found by argparse also exit 2. The message of 1, 2 and 3 is one line, starting
``error:``, that names the file/row/URL/version and says what to do; it never holds a secret.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VALIDATION = 1
EXIT_USER = 2
EXIT_TRANSIENT = 3
EXIT_INTERNAL = 70
"""A bug (sysexits EX_SOFTWARE): never mistaken for "data failed validation" (1)."""
EXIT_INTERRUPTED = 130
NO_RETRY_EXIT_CODES = frozenset({EXIT_VALIDATION, EXIT_USER, EXIT_INTERNAL})
"""Exit codes a retry cannot fix: orchestrators fail the task at once."""
