{{/* The chart's name, or nameOverride. */}}
{{- define "mio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already names the chart. */}}
{{- define "mio.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "mio.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "mio.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods; never change between upgrades. */}}
{{- define "mio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart installs. */}}
{{- define "mio.labels" -}}
{{ include "mio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "mio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mio.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The admission webhook's names. A release called mail-incident-operator gets the
operator's defaults (those of deploy/); any other passes its own as flags. */}}
{{- define "mio.webhookService" -}}
{{- printf "%s-webhook" (include "mio.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mio.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "mio.fullname" .) }}
{{- end }}

{{- define "mio.webhookConfiguration" -}}
{{- include "mio.fullname" . }}
{{- end }}

{{/* The serving Certificate's name (webhook.certificates=certManager). */}}
{{- define "mio.webhookCertificate" -}}
{{- printf "%s-webhook" (include "mio.fullname" .) }}
{{- end }}

{{/* cert-manager's objects: are they the chart's (webhook.certificates=certManager), and
does it make its own CA (no webhook.certManager.issuerRef)? */}}
{{- define "mio.certManager" -}}
{{- if eq .Values.webhook.certificates "certManager" }}true{{ end }}
{{- end }}

{{- define "mio.certManagerOwnCA" -}}
{{- if and (include "mio.certManager" .) (not .Values.webhook.certManager.issuerRef.name) }}true{{ end }}
{{- end }}
