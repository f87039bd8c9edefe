"""The app: what a user starts. The CLI (`flespi-bridge ...`), the wiring of one running
bridge (`bridge.py`: builds the parts, starts them in order, stops them in reverse), the
supervisor of its essential tasks, logging set-up and the demo.

Owns: process life (signals, exit codes), the order parts start and stop in.
May import: everything in `bridge`. Nothing imports it.
"""
