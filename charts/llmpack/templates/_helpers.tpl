{{/* Names, labels and the few decisions more than one template needs. */}}

{{- define "llmpack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-llmpack, or just the release name when it already contains the chart name. */}}
{{- define "llmpack.fullname" -}}
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

{{- define "llmpack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmpack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmpack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llmpack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llmpack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llmpack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmpack.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion; a digest is joined with @. */}}
{{- define "llmpack.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" .image.repository $tag }}
{{- else if hasPrefix "@" $tag }}
{{- printf "%s%s" .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Lease the replicas elect their leader on, in the release namespace. */}}
{{- define "llmpack.leaseName" -}}
{{- default (include "llmpack.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* "true" when the operator watches every namespace (no watchNamespaces). */}}
{{- define "llmpack.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}
