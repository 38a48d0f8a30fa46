"""maskd's offline tools (training, conversion, evaluation, benchmarks); not needed on the device.

A package so the tools and the tests import each other by one name (``tools.<module>``).
Each tool runs as ``python tools/<tool>.py`` or ``python -m tools.<tool>`` from a checkout
whose venv has maskd installed (``pip install -e '.[train]'``; tests/run.sh does it).
"""
