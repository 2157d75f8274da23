{{/* Chart name, at most 63 characters. */}}
{{- define "mira-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects, at most 63 characters. */}}
{{- define "mira-operator.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "mira-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "mira-operator.labels" -}}
helm.sh/chart: {{ include "mira-operator.chart" . }}
{{ include "mira-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's Pods. */}}
{{- define "mira-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mira-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "mira-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mira-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image. */}}
{{- define "mira-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The scorer-runner image (CPU build, or the `-cuda` build). */}}
{{- define "mira-operator.scorerRunnerImage" -}}
{{- $tag := default .Chart.AppVersion .Values.scorerRunner.image.tag }}
{{- printf "%s:%s%s" .Values.scorerRunner.image.repository $tag (ternary "-cuda" "" .Values.scorerRunner.image.cuda) }}
{{- end }}

{{/* The other scorer-runner build, for NOTES. */}}
{{- define "mira-operator.scorerRunnerImageOther" -}}
{{- $tag := default .Chart.AppVersion .Values.scorerRunner.image.tag }}
{{- printf "%s:%s%s" .Values.scorerRunner.image.repository $tag (ternary "" "-cuda" .Values.scorerRunner.image.cuda) }}
{{- end }}
