"""The app: what a user starts. The CLI (`flespi-bridge ...`), the wiring of one running
bridge (`bridge.py`: builds the parts and lists them; `bridge.core.lifecycle` starts them in
order and stops them in reverse), the supervisor of its essential tasks (`supervisor.py`:
started once its parts have, cancelled once they have stopped), logging set-up and the demo.

Owns: process life (signals, exit codes), the order parts start and stop in.
May import: everything in `bridge`. Nothing imports it.
"""
