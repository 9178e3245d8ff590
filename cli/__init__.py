"""The ``sparsec`` command line (click + rich)."""
