"""longctx: extend an LLM's context window and measure how far it really reaches.

The package holds every piece of logic; the scripts in ``stages/`` only read params,
call into it and write outputs.
"""

__version__ = "0.1.0"
