{{/* Names and labels. */}}
{{- define "flespi-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flespi-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "flespi-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flespi-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flespi-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The headless Service's own label: the ServiceMonitor selects it, not the other one. */}}
{{- define "flespi-bridge.headlessLabel" -}}
flespi-bridge/service: headless
{{- end }}

{{- define "flespi-bridge.labels" -}}
helm.sh/chart: {{ include "flespi-bridge.chart" . }}
{{ include "flespi-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flespi-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flespi-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flespi-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the pod finds its configuration, secrets and TLS files. */}}
{{- define "flespi-bridge.configDir" -}}/etc/flespi-bridge{{- end }}
{{- define "flespi-bridge.secretsDir" -}}/run/secrets/flespi-bridge{{- end }}
{{- define "flespi-bridge.tlsDir" -}}/etc/flespi-bridge/tls{{- end }}

{{/* The Secret the chart creates: only when a secret value is given in the values. */}}
{{- define "flespi-bridge.secretName" -}}
{{- include "flespi-bridge.fullname" . }}
{{- end }}

{{- define "flespi-bridge.createSecret" -}}
{{- if or (and .Values.flespi.token (not .Values.flespi.existingSecret)) (and .Values.local.password (not .Values.local.existingSecret)) (and .Values.stream.authorization (not .Values.stream.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{/*
Checks of values that the JSON schema cannot express: `helm install` fails with the message.
*/}}
{{- define "flespi-bridge.validate" -}}
{{- $f := .Values.flespi }}
{{- $l := .Values.local }}
{{- if and $f.token $f.existingSecret }}
{{- fail "set either flespi.token or flespi.existingSecret, not both" }}
{{- end }}
{{- if not (or $f.token $f.existingSecret) }}
{{- fail "the flespi token is required: set flespi.token (e.g. --set flespi.token=...) or flespi.existingSecret" }}
{{- end }}
{{- if and $l.password $l.existingSecret }}
{{- fail "set either local.password or local.existingSecret, not both" }}
{{- end }}
{{- $tls := $l.tlsSecret }}
{{- if $tls.name }}
{{- if not $l.tls }}
{{- fail "local.tlsSecret.name is set but local.tls is false" }}
{{- end }}
{{- if and $tls.caKey $l.ca_file }}
{{- fail "set either local.tlsSecret.caKey or local.ca_file, not both" }}
{{- end }}
{{- if and $tls.certKey $l.cert_file }}
{{- fail "set either local.tlsSecret.certKey or local.cert_file, not both" }}
{{- end }}
{{- if and $tls.keyKey $l.key_file }}
{{- fail "set either local.tlsSecret.keyKey or local.key_file, not both" }}
{{- end }}
{{- if not (or $tls.caKey $tls.certKey) }}
{{- fail "local.tlsSecret.name is set but nothing to mount: set local.tlsSecret.caKey and/or certKey and keyKey" }}
{{- end }}
{{- if ne (empty $tls.certKey) (empty $tls.keyKey) }}
{{- fail "local.tlsSecret.certKey and local.tlsSecret.keyKey must be set together" }}
{{- end }}
{{- end }}
{{- if ne (kindIs "invalid" $l.cert_file) (kindIs "invalid" $l.key_file) }}
{{- fail "local.cert_file and local.key_file must be set together" }}
{{- end }}
{{- $s := .Values.stream }}
{{- if and $s.authorization $s.existingSecret }}
{{- fail "set either stream.authorization or stream.existingSecret, not both" }}
{{- end }}
{{- if and $s.enabled (not (or $s.authorization $s.existingSecret)) }}
{{- fail "stream.enabled needs stream.authorization or stream.existingSecret" }}
{{- end }}
{{- if ne (kindIs "invalid" $s.cert_file) (kindIs "invalid" $s.key_file) }}
{{- fail "stream.cert_file and stream.key_file must be set together" }}
{{- end }}
{{- if and $s.enabled (gt (int .Values.replicas) 1) }}
{{- fail "stream.enabled needs replicas: 1: flespi pushes the whole fleet to one URL, and the Service would hand each batch to any replica, most of whose devices it does not own" }}
{{- end }}
{{- if gt (len (include "flespi-bridge.fullname" .)) 52 }}
{{- fail (printf "the StatefulSet name %q is longer than 52 characters (its pods' revision label would not fit in 63): set fullnameOverride or a shorter release name" (include "flespi-bridge.fullname" .)) }}
{{- end }}
{{- if gt (float64 .Values.reconnect.min_delay) (float64 .Values.reconnect.max_delay) }}
{{- fail "reconnect.max_delay must be >= reconnect.min_delay" }}
{{- end }}
{{- end }}

{{/*
The bridge's configuration as a dict of sections, without the chart's own keys and without
nulls (a missing key means the bridge's default).
*/}}
{{- define "flespi-bridge.configSections" -}}
{{- $chartKeys := dict
      "flespi" (list "token" "existingSecret" "existingSecretKey")
      "local" (list "password" "existingSecret" "existingSecretKey" "tlsSecret")
      "stream" (list "authorization" "existingSecret" "existingSecretKey") }}
{{- $local := deepCopy .Values.local }}
{{- $tls := .Values.local.tlsSecret }}
{{- if $tls.name }}
{{- $dir := include "flespi-bridge.tlsDir" . }}
{{- if $tls.caKey }}{{ $_ := set $local "ca_file" (printf "%s/ca.crt" $dir) }}{{ end }}
{{- if $tls.certKey }}{{ $_ := set $local "cert_file" (printf "%s/tls.crt" $dir) }}{{ end }}
{{- if $tls.keyKey }}{{ $_ := set $local "key_file" (printf "%s/tls.key" $dir) }}{{ end }}
{{- end }}
{{- $values := dict
      "flespi" .Values.flespi "local" $local "homeassistant" .Values.homeassistant
      "commands" .Values.commands "reconnect" .Values.reconnect "metrics" .Values.metrics
      "shutdown" .Values.shutdown "log" .Values.log "stream" .Values.stream }}
{{- $sections := dict }}
{{- range $section, $options := $values }}
{{- $kept := dict }}
{{- range $key, $value := $options }}
{{- if and (not (has $key (get $chartKeys $section | default list))) (not (kindIs "invalid" $value)) }}
{{- $_ := set $kept $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $sections $section $kept }}
{{- end }}
{{- toJson $sections }}
{{- end }}

{{/* A TOML key: bare when it can be, quoted otherwise. */}}
{{- define "flespi-bridge.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A TOML value. Strings are written as JSON strings (a subset of TOML basic strings: every
control character escaped); YAML numbers arrive as float64, so whole numbers are written as
integers (TOML integers are accepted where the bridge expects a float, not the other way).
Maps (commands.profiles) become inline tables; null entries in them are left out.
*/}}
{{- define "flespi-bridge.tomlValue" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}{{ toJson . }}
{{- else if eq $kind "bool" }}{{ . }}
{{- else if has $kind (list "float64" "float32") }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if has $kind (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") }}{{ . }}
{{- else if eq $kind "slice" }}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "flespi-bridge.tomlValue" $item }}{{ end }}]
{{- else if eq $kind "map" }}
{{- $set := list }}
{{- range $key := keys . | sortAlpha }}{{ if not (kindIs "invalid" (get $ $key)) }}{{ $set = append $set $key }}{{ end }}{{ end -}}
{ {{- range $i, $key := $set }}{{ if $i }},{{ end }} {{ include "flespi-bridge.tomlKey" $key }} = {{ include "flespi-bridge.tomlValue" (get $ $key) }}{{ end }} }
{{- else }}{{ fail (printf "cannot write a %s value into the TOML configuration" $kind) }}
{{- end }}
{{- end }}

{{/* The whole TOML configuration file. */}}
{{- define "flespi-bridge.configToml" -}}
# flespi-bridge configuration rendered by the Helm chart from its values.
# Secrets are not here: they are files in {{ include "flespi-bridge.secretsDir" . }}.
{{- $sections := include "flespi-bridge.configSections" . | fromJson }}
{{- range $section := list "flespi" "local" "homeassistant" "commands" "reconnect" "metrics" "stream" "shutdown" "log" }}
{{- $options := get $sections $section }}
{{- if $options }}

[{{ $section }}]
{{- range $key := keys $options | sortAlpha }}
{{ include "flespi-bridge.tomlKey" $key }} = {{ include "flespi-bridge.tomlValue" (get $options $key) }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
