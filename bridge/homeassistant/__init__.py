"""Home Assistant: discovery payloads built from data tables (`payloads.py`), the two
discovery layouts and the migration between them (`discovery.py`), byte templates that make
a fleet's discovery cheap (`templates.py`), Home Assistant's `online` on its status topic
turned into an event (`status.py`), and the add-on's start-up glue (`addon.py`).

Owns: unique ids (`flespi_<device_id>_<entity>`, never changed), what Home Assistant shows.
May import: `bridge.core`, `bridge.config`, `bridge.normalize`, the shared leaves. Pure
functions and tables: no I/O but the add-on's start-up (the status listener only routes a
topic of the local link, `bridge.core.transport.LocalLink`).
"""
