{{/* Chart name. */}}
{{- define "chatd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "chatd.fullname" -}}
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

{{- define "chatd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chatd.labels" -}}
helm.sh/chart: {{ include "chatd.chart" . }}
{{ include "chatd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the Secret holding JWT_SECRET. */}}
{{- define "chatd.jwtSecretName" -}}
{{- if .Values.jwt.secret }}
{{- include "chatd.fullname" . }}
{{- else }}
{{- required "jwt.secret or jwt.existingSecret must be set" .Values.jwt.existingSecret }}
{{- end }}
{{- end }}

{{/*
Memory request in MiB: base + expectedConnections x bytesPerConnection
(BENCHMARKS.md item 2), rounded up.
*/}}
{{- define "chatd.memoryRequestMi" -}}
{{- $conn := int64 .Values.resources.expectedConnections }}
{{- $per := int64 .Values.resources.bytesPerConnection }}
{{- $connMi := div (add (mul $conn $per) 1048575) 1048576 }}
{{- add (int64 .Values.resources.baseMemoryMi) $connMi }}
{{- end }}

{{- define "chatd.memoryLimitMi" -}}
{{- $req := int64 (include "chatd.memoryRequestMi" .) }}
{{- div (mul $req (int64 .Values.resources.memoryLimitPercent)) 100 }}
{{- end }}
