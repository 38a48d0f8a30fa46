"""The sections of tools/bench.py, one module each, and what they share.

common (paths, timing), inputs (face image, frames), face, macs, frame, e2e, estimates,
report (table and plots). tools/bench.py is the command line that runs and reports them.
"""
