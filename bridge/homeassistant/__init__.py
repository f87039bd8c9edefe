"""Home Assistant: discovery payloads built from data tables (`payloads.py`), the two
discovery layouts and the migration between them (`discovery.py`), byte templates that make
a fleet's discovery cheap (`templates.py`), and the add-on's start-up glue (`addon.py`).

Owns: unique ids (`flespi_<device_id>_<entity>`, never changed), what Home Assistant shows.
May import: `bridge.core`, `bridge.config`, `bridge.normalize`, the shared leaves. Pure
functions and tables: no I/O but the add-on's start-up.
"""
