"""Normalization: flespi parameters to the bridge's attributes. The catalogue
(`catalog.py`, data), naming rules for parameters outside it (`rules.py`), configured
overrides (`overrides.py`), the live parameter table built from the three
(`parameters.py`), flat device messages mapped through it (`messages.py`), and the Home
Assistant classes an attribute may carry (`ha_classes.py`).

Owns: attribute names, units, value bounds.
May import: the shared leaves only. Pure: no I/O, no transport, no configuration loading.
"""
