"""`flespi-bridge telemetry`: a device's current telemetry over REST, normalized by the
parameter table the live path uses (`bridge.normalize.parameters`), as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from bridge.config import settings as config
from bridge.normalize import catalog, parameters, rules
from bridge.normalize.catalog import Parameter
from bridge.toolbox import common
from bridge.toolbox.client import FlespiClient
from bridge.toolbox.timeparse import iso


def add_parser(sub: Any, with_config: Any) -> None:
    p = sub.add_parser("telemetry", help="a device's current telemetry, normalized")
    with_config(p)
    p.add_argument("device", type=int, help="flespi device id")
    p.add_argument("params", nargs="*", metavar="PARAM",
                   help="flespi parameters (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_telemetry)


def normalized(telemetry: dict[str, Any], params: parameters.Parameters) -> dict[str, Any]:
    """{"attributes": {name: value}, "timestamps": {name: ts}, "units": {name: unit},
    "unmapped": {param: value}}, each sorted by name:
    the attributes as the live path makes them (the same table: the catalogue, the
    configuration's overrides and ignores, and with `flespi.parameters = "all"` the
    rule-made attributes); parameters that make none are listed raw, ignored ones left out."""
    attributes: dict[str, Any] = {}
    stamps: dict[str, float] = {}
    units: dict[str, str] = {}
    unmapped: dict[str, Any] = {}
    for name in sorted(telemetry):
        entry = telemetry[name]
        if not isinstance(entry, dict) or "value" not in entry:
            continue
        ts, value = entry.get("ts"), entry["value"]
        if (name.startswith("position.") and params.get(name) is None
                and params.get("position") is not None):
            continue  # flespi's dotted copies of the `position` object's fields
        param = params.resolve(name, value)
        if not isinstance(param, Parameter):
            if param != rules.IGNORED:
                unmapped[name] = value
            continue
        try:
            values = catalog.normalize(param, value)
        except catalog.ValueRejected:
            unmapped[name] = value
            continue
        attributes.update(values)
        for attribute in (param.attribute, *param.fields.values()):
            if attribute is not None and attribute.unit and attribute.name in values:
                units[attribute.name] = attribute.unit
        if isinstance(ts, int | float):
            stamps.update(dict.fromkeys(values, float(ts)))
    return {"attributes": dict(sorted(attributes.items())), "timestamps": stamps,
            "units": units, "unmapped": unmapped}


def render(device_id: int, doc: dict[str, Any]) -> str:
    rows = [("attribute", "value", "unit", "updated")]
    for name, value in doc["attributes"].items():
        ts = doc["timestamps"].get(name)
        rows.append((name, orjson.dumps(value).decode(), doc["units"].get(name, ""),
                     iso(ts) if ts else ""))
    for name, value in doc["unmapped"].items():
        rows.append((name, orjson.dumps(value).decode(), "", "(not in the catalogue)"))
    for name in doc.get("missing", []):
        rows.append((name, "-", "", "(not reported by this device)"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"device {device_id}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines) + "\n"


def cmd_telemetry(args: argparse.Namespace) -> int:
    async def main(settings: config.Settings, rest: FlespiClient) -> int:
        selector = ",".join(args.params) or "all"
        result = await rest.get(f"gw/devices/{args.device}/telemetry/{selector}")
        entry = next((r for r in result if isinstance(r, dict) and r.get("id") == args.device),
                     None) if isinstance(result, list) else None
        if entry is None:
            return common.fail(settings, f"flespi returned no telemetry for {args.device}")
        telemetry = entry.get("telemetry") or {}
        doc = normalized(telemetry, settings.flespi.parameter_table())
        # a parameter asked for by name that the device does not report: said, not omitted
        doc["missing"] = [p for p in args.params if p not in telemetry]
        if args.json:
            print(orjson.dumps({"device_id": args.device, **doc},
                               option=orjson.OPT_INDENT_2).decode())
        else:
            print(render(args.device, doc), end="")
        return 0

    return common.run(args, main)
