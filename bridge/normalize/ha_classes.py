# ruff: noqa: E501  (generated data: one device class per line)
"""What current Home Assistant accepts for MQTT sensors, as data: device classes, the units
each sensor device class allows, and the state classes each allows.

Generated from Home Assistant 2025.4.4 (the release the tests run,
`homeassistant.components.sensor.const.DEVICE_CLASS_UNITS` and `DEVICE_CLASS_STATE_CLASSES`,
`BinarySensorDeviceClass`), so the catalogue and configuration overrides can be checked
without Home Assistant installed. A sensor device class missing from `SENSOR_UNITS` takes any
unit; one missing from `SENSOR_STATE_CLASSES` any state class.
"""

from __future__ import annotations

SENSOR_UNITS: dict[str, frozenset[str | None]] = {
    'apparent_power': frozenset({'VA'}),
    'aqi': frozenset({None}),
    'area': frozenset({'ac', 'cm²', 'ft²', 'ha', 'in²', 'km²', 'mi²', 'mm²', 'm²', 'yd²'}),
    'atmospheric_pressure': frozenset({'Pa', 'bar', 'cbar', 'hPa', 'inHg', 'kPa', 'mbar', 'mmHg', 'psi'}),
    'battery': frozenset({'%'}),
    'blood_glucose_concentration': frozenset({'mg/dL', 'mmol/L'}),
    'carbon_monoxide': frozenset({'ppm'}),
    'carbon_dioxide': frozenset({'ppm'}),
    'conductivity': frozenset({'S/cm', 'mS/cm', 'µS/cm'}),
    'current': frozenset({'A', 'mA'}),
    'data_rate': frozenset({'B/s', 'GB/s', 'Gbit/s', 'GiB/s', 'KiB/s', 'MB/s', 'Mbit/s', 'MiB/s', 'bit/s', 'kB/s', 'kbit/s'}),
    'data_size': frozenset({'B', 'EB', 'EiB', 'GB', 'Gbit', 'GiB', 'KiB', 'MB', 'Mbit', 'MiB', 'PB', 'PiB', 'TB', 'TiB', 'YB', 'YiB', 'ZB', 'ZiB', 'bit', 'kB', 'kbit'}),
    'distance': frozenset({'cm', 'ft', 'in', 'km', 'm', 'mi', 'mm', 'nmi', 'yd'}),
    'duration': frozenset({'d', 'h', 'min', 'ms', 's', 'μs'}),
    'energy': frozenset({'GJ', 'GWh', 'Gcal', 'J', 'MJ', 'MWh', 'Mcal', 'TWh', 'Wh', 'cal', 'kJ', 'kWh', 'kcal', 'mWh'}),
    'energy_distance': frozenset({'kWh/100km', 'km/kWh', 'mi/kWh'}),
    'energy_storage': frozenset({'GJ', 'GWh', 'Gcal', 'J', 'MJ', 'MWh', 'Mcal', 'TWh', 'Wh', 'cal', 'kJ', 'kWh', 'kcal', 'mWh'}),
    'frequency': frozenset({'GHz', 'Hz', 'MHz', 'kHz'}),
    'gas': frozenset({'CCF', 'ft³', 'm³'}),
    'humidity': frozenset({'%'}),
    'illuminance': frozenset({'lx'}),
    'irradiance': frozenset({'BTU/(h⋅ft²)', 'W/m²'}),
    'moisture': frozenset({'%'}),
    'nitrogen_dioxide': frozenset({'µg/m³'}),
    'nitrogen_monoxide': frozenset({'µg/m³'}),
    'nitrous_oxide': frozenset({'µg/m³'}),
    'ozone': frozenset({'µg/m³'}),
    'ph': frozenset({None}),
    'pm1': frozenset({'µg/m³'}),
    'pm10': frozenset({'µg/m³'}),
    'pm25': frozenset({'µg/m³'}),
    'power_factor': frozenset({'%', None}),
    'power': frozenset({'GW', 'MW', 'TW', 'W', 'kW', 'mW'}),
    'precipitation': frozenset({'cm', 'in', 'mm'}),
    'precipitation_intensity': frozenset({'in/d', 'in/h', 'mm/d', 'mm/h'}),
    'pressure': frozenset({'Pa', 'bar', 'cbar', 'hPa', 'inHg', 'kPa', 'mbar', 'mmHg', 'psi'}),
    'reactive_power': frozenset({'var'}),
    'signal_strength': frozenset({'dB', 'dBm'}),
    'sound_pressure': frozenset({'dB', 'dBA'}),
    'speed': frozenset({'Beaufort', 'ft/s', 'in/d', 'in/h', 'in/s', 'km/h', 'kn', 'm/s', 'mm/d', 'mm/h', 'mm/s', 'mph'}),
    'sulphur_dioxide': frozenset({'µg/m³'}),
    'temperature': frozenset({'K', '°C', '°F'}),
    'volatile_organic_compounds': frozenset({'µg/m³'}),
    'volatile_organic_compounds_parts': frozenset({'ppb', 'ppm'}),
    'voltage': frozenset({'MV', 'V', 'kV', 'mV', 'µV'}),
    'volume': frozenset({'CCF', 'L', 'fl. oz.', 'ft³', 'gal', 'mL', 'm³'}),
    'volume_storage': frozenset({'CCF', 'L', 'fl. oz.', 'ft³', 'gal', 'mL', 'm³'}),
    'volume_flow_rate': frozenset({'L/min', 'ft³/min', 'gal/min', 'mL/s', 'm³/h'}),
    'water': frozenset({'CCF', 'L', 'ft³', 'gal', 'm³'}),
    'weight': frozenset({'g', 'kg', 'lb', 'mg', 'oz', 'st', 'µg'}),
    'wind_direction': frozenset({'°'}),
    'wind_speed': frozenset({'Beaufort', 'ft/s', 'in/s', 'km/h', 'kn', 'm/s', 'mm/s', 'mph'}),
}
SENSOR_STATE_CLASSES: dict[str, frozenset[str]] = {
    'date': frozenset(),
    'enum': frozenset(),
    'timestamp': frozenset(),
    'apparent_power': frozenset({'measurement'}),
    'aqi': frozenset({'measurement'}),
    'area': frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'}),
    'atmospheric_pressure': frozenset({'measurement'}),
    'battery': frozenset({'measurement'}),
    'blood_glucose_concentration': frozenset({'measurement'}),
    'carbon_monoxide': frozenset({'measurement'}),
    'carbon_dioxide': frozenset({'measurement'}),
    'conductivity': frozenset({'measurement'}),
    'current': frozenset({'measurement'}),
    'data_rate': frozenset({'measurement'}),
    'data_size': frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'}),
    'distance': frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'}),
    'duration': frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'}),
    'energy': frozenset({'total', 'total_increasing'}),
    'energy_distance': frozenset({'measurement'}),
    'energy_storage': frozenset({'measurement'}),
    'frequency': frozenset({'measurement'}),
    'gas': frozenset({'total', 'total_increasing'}),
    'humidity': frozenset({'measurement'}),
    'illuminance': frozenset({'measurement'}),
    'irradiance': frozenset({'measurement'}),
    'moisture': frozenset({'measurement'}),
    'monetary': frozenset({'total'}),
    'nitrogen_dioxide': frozenset({'measurement'}),
    'nitrogen_monoxide': frozenset({'measurement'}),
    'nitrous_oxide': frozenset({'measurement'}),
    'ozone': frozenset({'measurement'}),
    'ph': frozenset({'measurement'}),
    'pm1': frozenset({'measurement'}),
    'pm10': frozenset({'measurement'}),
    'pm25': frozenset({'measurement'}),
    'power_factor': frozenset({'measurement'}),
    'power': frozenset({'measurement'}),
    'precipitation': frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'}),
    'precipitation_intensity': frozenset({'measurement'}),
    'pressure': frozenset({'measurement'}),
    'reactive_power': frozenset({'measurement'}),
    'signal_strength': frozenset({'measurement'}),
    'sound_pressure': frozenset({'measurement'}),
    'speed': frozenset({'measurement'}),
    'sulphur_dioxide': frozenset({'measurement'}),
    'temperature': frozenset({'measurement'}),
    'volatile_organic_compounds': frozenset({'measurement'}),
    'volatile_organic_compounds_parts': frozenset({'measurement'}),
    'voltage': frozenset({'measurement'}),
    'volume': frozenset({'total', 'total_increasing'}),
    'volume_storage': frozenset({'measurement'}),
    'volume_flow_rate': frozenset({'measurement'}),
    'water': frozenset({'total', 'total_increasing'}),
    'weight': frozenset({'measurement', 'total', 'total_increasing'}),
    'wind_direction': frozenset({'measurement_angle'}),
    'wind_speed': frozenset({'measurement'}),
}
SENSOR_DEVICE_CLASSES = frozenset({'date', 'enum', 'timestamp', 'apparent_power', 'aqi', 'area', 'atmospheric_pressure', 'battery', 'blood_glucose_concentration', 'carbon_monoxide', 'carbon_dioxide', 'conductivity', 'current', 'data_rate', 'data_size', 'distance', 'duration', 'energy', 'energy_distance', 'energy_storage', 'frequency', 'gas', 'humidity', 'illuminance', 'irradiance', 'moisture', 'monetary', 'nitrogen_dioxide', 'nitrogen_monoxide', 'nitrous_oxide', 'ozone', 'ph', 'pm1', 'pm10', 'pm25', 'power_factor', 'power', 'precipitation', 'precipitation_intensity', 'pressure', 'reactive_power', 'signal_strength', 'sound_pressure', 'speed', 'sulphur_dioxide', 'temperature', 'volatile_organic_compounds', 'volatile_organic_compounds_parts', 'voltage', 'volume', 'volume_storage', 'volume_flow_rate', 'water', 'weight', 'wind_direction', 'wind_speed'})
BINARY_SENSOR_DEVICE_CLASSES = frozenset({'battery', 'battery_charging', 'carbon_monoxide', 'cold', 'connectivity', 'door', 'garage_door', 'gas', 'heat', 'light', 'lock', 'moisture', 'motion', 'moving', 'occupancy', 'opening', 'plug', 'power', 'presence', 'problem', 'running', 'safety', 'smoke', 'sound', 'tamper', 'update', 'vibration', 'window'})
EVENT_DEVICE_CLASSES = frozenset({'button', 'doorbell', 'motion'})
STATE_CLASSES = frozenset({'measurement', 'measurement_angle', 'total', 'total_increasing'})


def problems(component: str, device_class: str | None, unit: str | None,
             state_class: str | None, numeric: bool) -> list[str]:
    """Why Home Assistant would refuse (or log errors for) an entity with these options;
    empty when it accepts them. `numeric`: the state is a number (not a boolean or text)."""
    out: list[str] = []
    if component == "event":
        if device_class is not None and device_class not in EVENT_DEVICE_CLASSES:
            out.append(f"device_class {device_class!r} is not an event device class")
        if unit is not None or state_class is not None:
            out.append("an event takes no unit and no state_class")
        return out
    if component == "binary_sensor":
        if device_class is not None and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
            out.append(f"device_class {device_class!r} is not a binary_sensor device class")
        if unit is not None or state_class is not None:
            out.append("a binary_sensor takes no unit and no state_class")
        return out
    if device_class is not None and device_class not in SENSOR_DEVICE_CLASSES:
        out.append(f"device_class {device_class!r} is not a sensor device class")
        return out
    if state_class is not None and state_class not in STATE_CLASSES:
        out.append(f"state_class {state_class!r} is not one of {sorted(STATE_CLASSES)}")
    if not numeric and (unit is not None or state_class is not None):
        out.append("a text value takes no unit and no state_class")
    if device_class is not None and device_class in SENSOR_UNITS:
        allowed = SENSOR_UNITS[device_class]
        if unit not in allowed:
            shown = sorted(u for u in allowed if u is not None) or ["none"]
            out.append(f"unit {unit!r} does not fit device_class {device_class!r} "
                       f"(allowed: {', '.join(shown)})")
    if (device_class is not None and state_class is not None
            and state_class in STATE_CLASSES
            and device_class in SENSOR_STATE_CLASSES
            and state_class not in SENSOR_STATE_CLASSES[device_class]):
        out.append(f"state_class {state_class!r} does not fit device_class {device_class!r} "
                   f"(allowed: {', '.join(sorted(SENSOR_STATE_CLASSES[device_class])) or 'none'})")
    return out
