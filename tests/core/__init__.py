"""Tests of sparsec's core: registry, pipeline text, pass manager, instruments, IR."""
