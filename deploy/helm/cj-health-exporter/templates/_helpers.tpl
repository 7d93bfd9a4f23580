{{/* The chart name, also the Prometheus `job` label of the exporter's series (see jobLabel in
servicemonitor.yaml / podmonitor.yaml) and the `job` of the PrometheusRule's selectors. */}}
{{- define "cj-health-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of every object of the release. */}}
{{- define "cj-health-exporter.fullname" -}}
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

{{- define "cj-health-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cj-health-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cj-health-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cj-health-exporter.labels" -}}
helm.sh/chart: {{ include "cj-health-exporter.chart" . }}
{{ include "cj-health-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cj-health-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the ServiceMonitor, PodMonitor and PrometheusRule: the common ones, the
`release` label kube-prometheus-stack's Prometheus selects on, and the object's own. */}}
{{- define "cj-health-exporter.monitoringLabels" -}}
{{- $root := index . 0 }}
{{- $own := index . 1 }}
{{ include "cj-health-exporter.labels" $root }}
{{- with $root.Values.kubePrometheusStack.release }}
release: {{ . | quote }}
{{- end }}
{{- with $own }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cj-health-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cj-health-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cj-health-exporter.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret holding the read DSN (created by the chart, or the user's). */}}
{{- define "cj-health-exporter.dsnSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-dsn" (include "cj-health-exporter.fullname" .)) }}
{{- end }}

{{- define "cj-health-exporter.writeDsnSecret" -}}
{{- .Values.remediation.writeDsn.existingSecret | default (printf "%s-write-dsn" (include "cj-health-exporter.fullname" .)) }}
{{- end }}

{{- define "cj-health-exporter.webConfigSecret" -}}
{{- .Values.webConfig.existingSecret | default (printf "%s-web-config" (include "cj-health-exporter.fullname" .)) }}
{{- end }}

{{- define "cj-health-exporter.webConfigEnabled" -}}
{{- if or .Values.webConfig.existingSecret .Values.webConfig.config }}true{{ end }}
{{- end }}

{{/* TLS on the metrics port: declared (webConfig.tls), or read from an inline web config. */}}
{{- define "cj-health-exporter.tls" -}}
{{- if or .Values.webConfig.tls (hasKey (.Values.webConfig.config | default dict) "tls_server_config") }}true{{ end }}
{{- end }}

{{/* Every request needs credentials: basic auth, or a client certificate the kubelet cannot
present. Declared (webConfig.authenticated), or read from an inline web config. */}}
{{- define "cj-health-exporter.authenticated" -}}
{{- $config := .Values.webConfig.config | default dict }}
{{- $clientAuth := dig "tls_server_config" "client_auth_type" "" $config }}
{{- if or .Values.webConfig.authenticated (hasKey $config "basic_auth_users") (hasPrefix "Require" $clientAuth) }}true{{ end }}
{{- end }}

{{/* The probe type: `auto` is an HTTP GET of /healthz while the port needs no credentials, and
a TCP connect when it does (the kubelet can send neither a Secret's password nor a client
certificate). */}}
{{- define "cj-health-exporter.probeType" -}}
{{- if ne .Values.probes.type "auto" }}
{{- .Values.probes.type }}
{{- else if include "cj-health-exporter.authenticated" . }}
{{- "tcp" }}
{{- else }}
{{- "http" }}
{{- end }}
{{- end }}

{{- define "cj-health-exporter.probeHandler" -}}
{{- $type := include "cj-health-exporter.probeType" . }}
{{- if eq $type "http" }}
httpGet:
  path: /healthz
  port: metrics
  scheme: {{ ternary "HTTPS" "HTTP" (eq (include "cj-health-exporter.tls" .) "true") }}
{{- else if eq $type "tcp" }}
tcpSocket:
  port: metrics
{{- else }}
exec:
  command:
    - cj-health-exporter
    - healthcheck
    {{- if include "cj-health-exporter.webConfigEnabled" . }}
    - --web.config.file
    - /etc/cj-health-exporter/web/web-config.yml
    {{- end }}
    - --web.listen-address
    - {{ printf "127.0.0.1:%d" (int .Values.containerPort) | quote }}
{{- end }}
{{- end }}

{{/* The job label Prometheus gives the exporter's series, and with it every selector of the
rule pack: the value of the `app.kubernetes.io/name` label, which the ServiceMonitor and the
PodMonitor name as their jobLabel. */}}
{{- define "cj-health-exporter.job" -}}
{{- include "cj-health-exporter.name" . }}
{{- end }}

{{/* The exporter's settings file. */}}
{{- define "cj-health-exporter.config" -}}
{{- $settings := deepCopy .Values.config }}
{{- $_ := set $settings "listen_address" (printf ":%d" (int .Values.containerPort)) }}
{{- if include "cj-health-exporter.webConfigEnabled" . }}
{{- $_ := set $settings "web_config_file" "/etc/cj-health-exporter/web/web-config.yml" }}
{{- end }}
{{- if .Values.remediation.enabled }}
{{- $r := omit .Values.remediation "writeDsn" }}
{{- $_ := set $r "write_dsn_file" "/etc/cj-health-exporter/write-dsn/dsn" }}
{{- $_ := set $settings "remediation" $r }}
{{- end }}
{{- toYaml $settings }}
{{- end }}

{{/* Scrape settings shared by the ServiceMonitor endpoint and the PodMonitor endpoint. */}}
{{- define "cj-health-exporter.scrapeEndpoint" -}}
{{- $root := index . 0 }}
{{- $m := index . 1 }}
scheme: {{ $m.scheme | default (ternary "https" "http" (eq (include "cj-health-exporter.tls" $root) "true")) }}
interval: {{ $m.interval }}
scrapeTimeout: {{ $m.scrapeTimeout }}
{{- with $m.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
