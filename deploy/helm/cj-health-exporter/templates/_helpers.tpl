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

{{/* The probe credentials Secret (basic auth): the user's, or the one the chart makes from
probes.credentials.value (evaluation). Empty: no credentials are mounted. */}}
{{- define "cj-health-exporter.probeCredentialsSecret" -}}
{{- if .Values.probes.credentials.existingSecret }}
{{- .Values.probes.credentials.existingSecret }}
{{- else if .Values.probes.credentials.value }}
{{- printf "%s-probe" (include "cj-health-exporter.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the probe's files are mounted; the settings file names them (healthcheck.*). */}}
{{- define "cj-health-exporter.probeCredentialsFile" -}}
/etc/cj-health-exporter/probe/credentials
{{- end }}
{{- define "cj-health-exporter.probeCertDir" -}}
/etc/cj-health-exporter/probe-tls
{{- end }}

{{/* A probe handler: [root, ready]. `exec` (the default) runs `cj-health-exporter healthcheck`
(`--ready` for readiness) in the container: it reads the settings file `serve` reads, so it knows
the port, the web config (TLS: it trusts exactly the served certificate) and the probe's
credentials (healthcheck.credentials_file / cert_file / key_file), and it gives up one second
before the kubelet would, so that the probe's one line says why. `http` is the kubelet's own
GET (no credentials: only for a port without basic auth or required client certificates);
`tcp` only proves the listener accepts connections. */}}
{{- define "cj-health-exporter.probeHandler" -}}
{{- $root := index . 0 }}
{{- $ready := index . 1 }}
{{- $probe := ternary $root.Values.probes.readiness $root.Values.probes.liveness $ready }}
{{- $type := $root.Values.probes.type }}
{{- if eq $type "http" }}
httpGet:
  path: {{ ternary "/-/ready" "/healthz" $ready }}
  port: metrics
  scheme: {{ ternary "HTTPS" "HTTP" (eq (include "cj-health-exporter.tls" $root) "true") }}
{{- else if eq $type "tcp" }}
tcpSocket:
  port: metrics
{{- else }}
exec:
  command:
    - cj-health-exporter
    - healthcheck
    {{- if $ready }}
    - --ready
    {{- end }}
    - --config
    - /etc/cj-health-exporter/config/config.yml
    - --healthcheck.timeout
    - {{ printf "%ds" (sub (int $probe.timeoutSeconds) 1) | quote }}
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
{{- $check := dict }}
{{- if include "cj-health-exporter.probeCredentialsSecret" . }}
{{- $_ := set $check "credentials_file" (include "cj-health-exporter.probeCredentialsFile" .) }}
{{- end }}
{{- if .Values.probes.clientCertSecret }}
{{- $_ := set $check "cert_file" (printf "%s/tls.crt" (include "cj-health-exporter.probeCertDir" .)) }}
{{- $_ := set $check "key_file" (printf "%s/tls.key" (include "cj-health-exporter.probeCertDir" .)) }}
{{- end }}
{{- if $check }}
{{- $_ := set $settings "healthcheck" $check }}
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
