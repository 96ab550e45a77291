"""The ``teeproxy`` commands (:mod:`proxy.cli.main`) and the demo backend."""
