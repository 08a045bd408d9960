"""What an entry point does with an input it cannot use: the ``--on-error`` choices of ``predict.py`` and the data
tools (``tools/``).

``"error"`` stops at the first bad input with a message naming it; ``"skip"`` leaves that input out, goes on,
and lists it at the end. Kept free of torch, so that the data tools can import it.
"""

ON_ERROR_CHOICES = ("error", "skip")
