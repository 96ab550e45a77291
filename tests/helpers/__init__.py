"""Helpers shared by the tests: builders, fake peers, process and client plumbing.

Test modules and conftest.py files import from here; nothing here is a test, and no test
module or conftest.py is ever imported as a library (tests/unit/test_test_layout.py).
Fixtures stay in the conftest.py files.
"""
