"""Configuration: the TOML file, environment variables and secret files, validated into
`settings.Settings`. One module per concern: `sections.py` (one model per `[section]`),
`profiles.py` (the `[commands]` section's command profiles), `files.py` (why a file option
cannot serve), `tls.py` (TLS contexts from those files), `settings.py` (sources, precedence,
loading and the error report).

Owns: every option's name, default and check (documented in `config.example.toml`).
May import: `bridge.normalize` (overrides are checked against the catalogue), the shared
leaves. Nothing that runs.
"""
